#!/usr/bin/env node
// A tiny reverse proxy that adds `Authorization: Bearer $OUTPOST_KEY` to every request, for
// running MCP conformance suites (which send no auth header) against the Outpost relay.
//
//   TARGET_URL=https://relay.example:8443  OUTPOST_KEY=pk_test_...  [TARGET_CA_FILE=ca.pem]
//   [LISTEN_PORT=N] node inject-auth.mjs  -> prints `listening on http://127.0.0.1:PORT` when ready
//
// The request path and query are appended to TARGET_URL's path (so a suite pointed at
// http://127.0.0.1:PORT/mcp/agent/server reaches TARGET_URL/mcp/agent/server). Every other
// header goes through unchanged both ways (Mcp-Session-Id, MCP-Protocol-Version, Last-Event-ID,
// Origin, ...), except hop-by-hop headers and Host, which names the target. Bodies stream in
// both directions without buffering (SSE included); there are no timeouts. Node built-ins only.
// The key comes from the environment only, never from argv.
import http from "node:http";
import https from "node:https";
import fs from "node:fs";

const targetRaw = process.env.TARGET_URL;
const key = process.env.OUTPOST_KEY;
if (!targetRaw || !key) {
  console.error("inject-auth: TARGET_URL and OUTPOST_KEY must be set in the environment");
  process.exit(2);
}
const target = new URL(targetRaw);
const secure = target.protocol === "https:";
const client = secure ? https : http;
const agent = new client.Agent({
  keepAlive: true,
  ...(secure && process.env.TARGET_CA_FILE ? { ca: fs.readFileSync(process.env.TARGET_CA_FILE) } : {}),
});
const basePath = target.pathname.replace(/\/+$/, "");

// Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded.
const HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

// Copies raw header pairs, keeping repeated headers and the original spelling.
function copyHeaders(rawHeaders, skip) {
  const out = [];
  const connTokens = new Set();
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i].toLowerCase() === "connection") {
      for (const t of rawHeaders[i + 1].split(",")) connTokens.add(t.trim().toLowerCase());
    }
  }
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i].toLowerCase();
    if (HOP.has(name) || connTokens.has(name) || skip.has(name)) continue;
    out.push(rawHeaders[i], rawHeaders[i + 1]);
  }
  return out;
}

const server = http.createServer((req, res) => {
  const headers = copyHeaders(req.rawHeaders, new Set(["host", "authorization"]));
  headers.push("Host", target.host, "Authorization", `Bearer ${key}`);
  const upstream = client.request({
    protocol: target.protocol,
    hostname: target.hostname.replace(/^\[|\]$/g, ""),
    port: target.port || (secure ? 443 : 80),
    method: req.method,
    path: basePath + req.url,
    headers,
    agent,
    servername: secure ? target.hostname : undefined,
  });
  upstream.setTimeout(0);
  upstream.on("response", (up) => {
    res.writeHead(up.statusCode, up.statusMessage, copyHeaders(up.rawHeaders, new Set()));
    res.flushHeaders();
    up.pipe(res);
    up.on("error", () => res.destroy());
  });
  upstream.on("error", (err) => {
    if (res.headersSent) return res.destroy();
    res.writeHead(502, { "Content-Type": "application/json" });
    res.end(JSON.stringify({ jsonrpc: "2.0", id: null, error: { code: -32000, message: `inject-auth: ${err.message}` } }));
  });
  // The client going away (e.g. closing an SSE stream) closes the upstream request too.
  res.on("close", () => {
    if (!res.writableFinished) upstream.destroy();
  });
  req.pipe(upstream);
});
server.requestTimeout = 0;
server.headersTimeout = 0;
server.timeout = 0;
server.keepAliveTimeout = 5000;

// LISTEN_PORT lets a harness know the origin in advance (an allow-list names it).
server.listen(Number(process.env.LISTEN_PORT ?? 0), "127.0.0.1", () => {
  const { port } = server.address();
  process.stdout.write(`listening on http://127.0.0.1:${port}\n`);
});
const stop = () => {
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
