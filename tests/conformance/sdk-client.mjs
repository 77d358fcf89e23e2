#!/usr/bin/env node
// A client built on the official TypeScript SDK (v1, 2025 era), used by the Rust tests
// against the relay's aggregated endpoint /mcp. It answers sampling and elicitation
// requests, so requests that upstreams send the client are exercised through the relay.
//
//   OUTPOST_URL=https://127.0.0.1:PORT/mcp OUTPOST_KEY=pk_test_... NODE_EXTRA_CA_CERTS=ca.pem
//   node sdk-client.mjs           -> prints one JSON report line; exits 1 on failure
//
// The key comes from the environment only.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
} from "@modelcontextprotocol/sdk/types.js";

const url = new URL(process.env.OUTPOST_URL);
const transport = new StreamableHTTPClientTransport(url, {
  requestInit: { headers: { Authorization: `Bearer ${process.env.OUTPOST_KEY}` } },
});
const client = new Client(
  { name: "outpost-test-ts", version: "1.0.0" },
  { capabilities: { sampling: {}, elicitation: {} } },
);
let samplingRequests = 0;
client.setRequestHandler(CreateMessageRequestSchema, async (request) => {
  samplingRequests += 1;
  const prompt = request.params.messages[0]?.content?.text ?? "";
  return {
    role: "assistant",
    content: { type: "text", text: `sampled: ${prompt}` },
    model: "outpost-test-model",
    stopReason: "endTurn",
  };
});
client.setRequestHandler(ElicitRequestSchema, async () => ({
  action: "accept",
  content: { username: "ada", email: "ada@example.com" },
}));

const report = {};
try {
  await client.connect(transport);
  report.server = client.getServerVersion()?.name;
  const tools = await client.listTools();
  report.tools = tools.tools.map((t) => t.name);

  const sampled = await client.callTool({
    name: "conf__test_sampling",
    arguments: { prompt: "hello through two hops" },
  });
  report.sampling = sampled.content[0].text;
  report.samplingRequests = samplingRequests;

  const elicited = await client.callTool({
    name: "conf__test_elicitation",
    arguments: { message: "who are you?" },
  });
  report.elicitation = elicited.content[0].text;

  const progress = [];
  const withProgress = await client.callTool(
    { name: "conf__test_tool_with_progress", arguments: {} },
    undefined,
    { onprogress: (p) => progress.push(p.progress) },
  );
  report.progress = progress;
  report.progressResult = withProgress.content[0].text;

  // Cancellation: the SDK sends notifications/cancelled when the signal aborts.
  const controller = new AbortController();
  const slow = client.callTool(
    { name: "fortune__slow", arguments: { millis: 10000, steps: 20 } },
    undefined,
    { signal: controller.signal },
  );
  setTimeout(() => controller.abort("enough"), 600);
  try {
    await slow;
    report.cancelled = false;
  } catch (err) {
    report.cancelled = true;
  }

  const prompt = await client.getPrompt({ name: "conf__test_prompt_with_arguments", arguments: { arg1: "a", arg2: "b" } });
  report.prompt = prompt.messages[0].content.text;
  const completion = await client.complete({
    ref: { type: "ref/prompt", name: "conf__test_prompt_with_arguments" },
    argument: { name: "arg1", value: "" },
  });
  report.completion = completion.completion.values;
  await transport.terminateSession();
  await client.close();
  console.log(JSON.stringify(report));
} catch (err) {
  console.error(err?.stack ?? String(err));
  console.log(JSON.stringify(report));
  process.exit(1);
}
