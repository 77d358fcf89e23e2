#!/usr/bin/env node
// Calls a long tool through the Outpost relay with the official TypeScript SDK v1 and
// reports every progress notification and the result, printing each progress as it comes
// ("progress N") so the test can break the connection mid-call. The SDK is loaded from
// MCP_SDK_DIR (the `@modelcontextprotocol/sdk` package in .tools), so this file needs no
// node_modules of its own.
//
//   OUTPOST_URL OUTPOST_KEY NODE_EXTRA_CA_CERTS STEPS DURATION MCP_SDK_DIR
//   node resume_client.mjs    -> prints one JSON report line last; exits 1 on failure
import { pathToFileURL } from "node:url";
import path from "node:path";

const sdk = (file) => import(pathToFileURL(path.join(process.env.MCP_SDK_DIR, "dist/esm", file)).href);
const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");

const transport = new StreamableHTTPClientTransport(new URL(process.env.OUTPOST_URL), {
  requestInit: { headers: { Authorization: `Bearer ${process.env.OUTPOST_KEY}` } },
  reconnectionOptions: {
    initialReconnectionDelay: 500,
    maxReconnectionDelay: 2000,
    reconnectionDelayGrowFactor: 1.5,
    maxRetries: 5,
  },
});
const client = new Client({ name: "outpost-resume-ts", version: "1.0.0" }, { capabilities: {} });
const progress = [];
try {
  await client.connect(transport);
  const result = await client.callTool(
    {
      name: "trigger-long-running-operation",
      arguments: { duration: Number(process.env.DURATION), steps: Number(process.env.STEPS) },
    },
    undefined,
    {
      timeout: 25000,
      onprogress: (p) => {
        progress.push(p.progress);
        console.log(`progress ${p.progress}`);
      },
    },
  );
  console.log(
    JSON.stringify({
      protocol_version: transport.protocolVersion,
      progress,
      result: result.content[0].text,
      is_error: Boolean(result.isError),
    }),
  );
  await client.close();
  process.exit(0);
} catch (error) {
  console.error(`failed: ${error}`);
  process.exit(1);
}
