#!/usr/bin/env node
// A `subscriptions/listen` client of the 2026 era (revision 2026-07-28) on the official
// TypeScript SDK v2, used by the Rust tests against the relay. It opens one listen stream
// with the filter in FILTER (JSON) and prints one JSON line per event on stdout, until it is
// killed or the stream ends:
//   {"acked": <honored filter>}                 the server's acknowledgement
//   {"method": "...", "params": {...}}          each change notification
//   {"error": {"code": ..., "message": ...}}    listen refused
//   {"closed": "..."}                           the stream ended
//
//   OUTPOST_URL=https://127.0.0.1:PORT/mcp OUTPOST_KEY=pk_test_... NODE_EXTRA_CA_CERTS=ca.pem
//   FILTER='{"toolsListChanged":true}' node listen.mjs
//
// The key comes from the environment only.
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";

const print = (line) => console.log(JSON.stringify(line));
const transport = new StreamableHTTPClientTransport(new URL(process.env.OUTPOST_URL), {
  requestInit: { headers: { Authorization: `Bearer ${process.env.OUTPOST_KEY}` } },
});
const client = new Client(
  { name: "outpost-test-listen", version: "1.0.0" },
  { capabilities: {}, versionNegotiation: { mode: { pin: "2026-07-28" } } },
);
for (const method of [
  "notifications/tools/list_changed",
  "notifications/prompts/list_changed",
  "notifications/resources/list_changed",
  "notifications/resources/updated",
]) {
  client.setNotificationHandler(method, (notification) =>
    print({ method, params: notification.params ?? {} }),
  );
}

try {
  await client.connect(transport);
  const subscription = await client.listen(JSON.parse(process.env.FILTER ?? "{}"), {
    timeout: 30_000,
  });
  print({ acked: subscription.honoredFilter });
  const cause = await subscription.closed;
  print({ closed: String(cause) });
} catch (err) {
  print({ error: { code: err?.code ?? null, message: String(err?.message ?? err) } });
}
process.exit(0);
