#!/usr/bin/env node
// Calls the tool `long` through the Outpost relay with the official TypeScript SDK v1 and
// reports how the call ended (its result's length, or its JSON-RPC error), the errors the
// transport reported meanwhile, and whether a response carried an `abandoned` event. The SDK is
// loaded from MCP_SDK_DIR, as in resume_client.mjs.
//
//   OUTPOST_URL OUTPOST_KEY NODE_EXTRA_CA_CERTS MCP_SDK_DIR
//   node long_answer_client.mjs    -> prints one JSON report line; exits 1 if the SDK fails
import { pathToFileURL } from "node:url";
import path from "node:path";

const sdk = (file) => import(pathToFileURL(path.join(process.env.MCP_SDK_DIR, "dist/esm", file)).href);
const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");
const { McpError } = await sdk("types.js");

// Watches the POSTs' SSE bodies, as the SDK reads them, for an event of type `abandoned`.
let sawAbandoned = false;
const watchers = [];
const watching = async (url, init) => {
  const response = await fetch(url, init);
  const sse = (response.headers.get("content-type") ?? "").startsWith("text/event-stream");
  if (init?.method !== "POST" || !sse || !response.body) return response;
  const [mine, theirs] = response.body.tee();
  watchers.push(
    (async () => {
      let text = "";
      for await (const chunk of mine.pipeThrough(new TextDecoderStream())) {
        text = text.slice(-32) + chunk;
        sawAbandoned ||= text.includes("\nevent: abandoned\n");
      }
    })(),
  );
  return new Response(theirs, { status: response.status, headers: response.headers });
};
const transport = new StreamableHTTPClientTransport(new URL(process.env.OUTPOST_URL), {
  requestInit: { headers: { Authorization: `Bearer ${process.env.OUTPOST_KEY}` } },
  fetch: watching,
});
const client = new Client({ name: "outpost-long-ts", version: "1.0.0" }, { capabilities: {} });
// What the transport could not make sense of (an SSE message that is not JSON-RPC, say).
const errors = [];
client.onerror = (error) => errors.push(String(error));
try {
  await client.connect(transport);
  let report;
  try {
    const result = await client.callTool({ name: "long", arguments: {} }, undefined, { timeout: 30000 });
    report = { result_len: result.content[0].text.length };
  } catch (error) {
    if (!(error instanceof McpError)) throw error;
    report = { error_code: error.code, error_message: error.message };
  }
  await Promise.allSettled(watchers);
  console.log(JSON.stringify({ ...report, errors, saw_abandoned: sawAbandoned }));
  await client.close();
  process.exit(0);
} catch (error) {
  console.error(`failed: ${error}`);
  process.exit(1);
}
