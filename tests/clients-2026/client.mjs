#!/usr/bin/env node
// A client of the 2026 era (revision 2026-07-28) on the official TypeScript SDK v2, used by
// the Rust tests against the relay. It answers sampling and elicitation, which in this era
// reach it as Multi Round-Trip input requests that the SDK fulfils through its handlers.
//
//   OUTPOST_URL=https://127.0.0.1:PORT/mcp OUTPOST_KEY=pk_test_... NODE_EXTRA_CA_CERTS=ca.pem
//   SCENARIO=aggregate|pinned node client.mjs   -> prints one JSON report line; exits 1 on failure
//
// The key comes from the environment only.
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";

const scenario = process.env.SCENARIO;
const transport = new StreamableHTTPClientTransport(new URL(process.env.OUTPOST_URL), {
  requestInit: { headers: { Authorization: `Bearer ${process.env.OUTPOST_KEY}` } },
});
const client = new Client(
  { name: "outpost-test-ts2", version: "1.0.0" },
  {
    capabilities: { sampling: {}, elicitation: {} },
    versionNegotiation: { mode: scenario === "pinned" ? { pin: "2026-07-28" } : "auto" },
  },
);
const asked = [];
client.setRequestHandler("sampling/createMessage", async () => {
  asked.push("sampling");
  return {
    role: "assistant",
    content: { type: "text", text: "Paris" },
    model: "outpost-test-model",
    stopReason: "endTurn",
  };
});
client.setRequestHandler("elicitation/create", async () => {
  asked.push("elicitation");
  return { action: "accept", content: { name: "Ada", username: "ada", email: "ada@example.com" } };
});

const report = {};
const text = (result) => result.content?.[0]?.text;
try {
  await client.connect(transport);
  report.protocolVersion = client.protocolVersion ?? transport.protocolVersion;
  report.server = client.getServerVersion()?.name;
  const tools = await client.listTools();
  report.tools = tools.tools.map((t) => t.name);
  if (scenario === "aggregate") {
    report.legacyEcho = text(
      await client.callTool({ name: "everything__echo", arguments: { message: "ts2" } }),
    );
    report.fortune = text(await client.callTool({ name: "fortune__fortune", arguments: {} }));
    report.mrtr = text(
      await client.callTool({ name: "modern__test_input_required_result_elicitation", arguments: {} }),
    );
  } else {
    report.sampling = text(
      await client.callTool({ name: "test_sampling", arguments: { prompt: "capital?" } }),
    );
    report.elicitation = text(
      await client.callTool({ name: "test_elicitation", arguments: { message: "who?" } }),
    );
  }
  report.asked = asked;
  await client.close();
  console.log(JSON.stringify(report));
} catch (err) {
  console.error(err?.stack ?? String(err));
  console.log(JSON.stringify(report));
  process.exit(1);
}
