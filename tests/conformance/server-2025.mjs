#!/usr/bin/env node
// Outpost conformance target for the stateful MCP protocol era (2025-06-18 / 2025-11-25).
//
// Implements every tool, resource, resource template and prompt that the server scenarios of
// @modelcontextprotocol/conformance 0.1.16 call, with the TypeScript SDK's low-level Server so
// that tool input schemas go out exactly as written (JSON Schema 2020-12 keywords included).
//
//   node server-2025.mjs --stdio
//   node server-2025.mjs --http [--port N] [--host 127.0.0.1]
//
// HTTP mode serves Streamable HTTP at /mcp with stateful sessions (Mcp-Session-Id), the GET
// stream, DELETE, and resumability (an in-memory event store, priming events, Last-Event-ID).
// When it is ready it prints one line `listening on http://HOST:PORT/mcp` to stdout (port 0
// picks a free port; the line carries the real one). Logs go to stderr.
import http from "node:http";
import { randomUUID } from "node:crypto";
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import {
  CallToolRequestSchema,
  CompleteRequestSchema,
  CreateMessageResultSchema,
  ElicitResultSchema,
  ErrorCode,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  McpError,
  ReadResourceRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
  isInitializeRequest,
} from "@modelcontextprotocol/sdk/types.js";

// ---------------------------------------------------------------------------------------------
// Fixtures

// A 1x1 PNG.
const PNG_1X1 =
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";

// A short silent PCM WAV (8 kHz, mono, 16 bit, 8 samples), built rather than pasted.
function silentWav() {
  const samples = 8;
  const data = Buffer.alloc(samples * 2);
  const h = Buffer.alloc(44);
  h.write("RIFF", 0);
  h.writeUInt32LE(36 + data.length, 4);
  h.write("WAVE", 8);
  h.write("fmt ", 12);
  h.writeUInt32LE(16, 16); // fmt chunk size
  h.writeUInt16LE(1, 20); // PCM
  h.writeUInt16LE(1, 22); // channels
  h.writeUInt32LE(8000, 24); // sample rate
  h.writeUInt32LE(8000 * 2, 28); // byte rate
  h.writeUInt16LE(2, 32); // block align
  h.writeUInt16LE(16, 34); // bits per sample
  h.write("data", 36);
  h.writeUInt32LE(data.length, 40);
  return Buffer.concat([h, data]).toString("base64");
}
const WAV_SILENCE = silentWav();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const text = (t) => ({ type: "text", text: t });
const noArgs = { type: "object", properties: {} };

const TOOLS = [
  { name: "test_simple_text", description: "Returns a simple text result", inputSchema: noArgs },
  { name: "test_image_content", description: "Returns an image (1x1 PNG)", inputSchema: noArgs },
  { name: "test_audio_content", description: "Returns audio (short WAV)", inputSchema: noArgs },
  { name: "test_embedded_resource", description: "Returns an embedded text resource", inputSchema: noArgs },
  {
    name: "test_multiple_content_types",
    description: "Returns text, image and an embedded resource together",
    inputSchema: noArgs,
  },
  {
    name: "test_tool_with_logging",
    description: "Sends three info log notifications while it runs",
    inputSchema: noArgs,
  },
  {
    name: "test_tool_with_progress",
    description: "Reports progress 0, 50 and 100 of 100 when given a progress token",
    inputSchema: noArgs,
  },
  { name: "test_error_handling", description: "Always returns a tool error (isError: true)", inputSchema: noArgs },
  {
    name: "test_sampling",
    description: "Asks the client for an LLM completion (sampling/createMessage)",
    inputSchema: {
      type: "object",
      properties: { prompt: { type: "string", description: "The prompt to send to the LLM" } },
      required: ["prompt"],
    },
  },
  {
    name: "test_elicitation",
    description: "Asks the client for user input (elicitation/create)",
    inputSchema: {
      type: "object",
      properties: { message: { type: "string", description: "The message to show the user" } },
      required: ["message"],
    },
  },
  {
    name: "test_elicitation_sep1034_defaults",
    description: "Elicitation whose schema carries defaults for every primitive type (SEP-1034)",
    inputSchema: noArgs,
  },
  {
    name: "test_elicitation_sep1330_enums",
    description: "Elicitation with the five enum schema variants (SEP-1330)",
    inputSchema: noArgs,
  },
  {
    name: "json_schema_2020_12_tool",
    description: "Tool with JSON Schema 2020-12 features",
    inputSchema: {
      $schema: "https://json-schema.org/draft/2020-12/schema",
      type: "object",
      $defs: {
        address: {
          type: "object",
          properties: { street: { type: "string" }, city: { type: "string" } },
        },
      },
      properties: { name: { type: "string" }, address: { $ref: "#/$defs/address" } },
      additionalProperties: false,
    },
  },
  {
    name: "test_reconnection",
    description: "Closes its SSE response stream mid-call, then answers after the client resumes (SEP-1699)",
    inputSchema: noArgs,
  },
];

const RESOURCES = [
  {
    uri: "test://static-text",
    name: "static-text",
    description: "A static text resource",
    mimeType: "text/plain",
  },
  {
    uri: "test://static-binary",
    name: "static-binary",
    description: "A static binary resource (1x1 PNG)",
    mimeType: "image/png",
  },
  {
    uri: "test://watched-resource",
    name: "watched-resource",
    description: "A resource that can be subscribed to",
    mimeType: "text/plain",
  },
];

const TEMPLATES = [
  {
    uriTemplate: "test://template/{id}/data",
    name: "template-data",
    description: "Data for an id, substituted from the URI",
    mimeType: "application/json",
  },
];

const PROMPTS = [
  { name: "test_simple_prompt", description: "A prompt without arguments" },
  {
    name: "test_prompt_with_arguments",
    description: "A prompt that substitutes two arguments",
    arguments: [
      { name: "arg1", description: "First test argument", required: true },
      { name: "arg2", description: "Second test argument", required: true },
    ],
  },
  {
    name: "test_prompt_with_embedded_resource",
    description: "A prompt that embeds a resource",
    arguments: [{ name: "resourceUri", description: "URI of the resource to embed", required: true }],
  },
  { name: "test_prompt_with_image", description: "A prompt that carries an image" },
];

const COMPLETIONS = {
  arg1: ["paris", "park", "party", "test", "testing", "tested"],
  arg2: ["alpha", "beta", "gamma"],
  resourceUri: ["test://static-text", "test://static-binary", "test://watched-resource"],
  id: ["1", "2", "3", "123"],
};

// ---------------------------------------------------------------------------------------------
// One MCP server per session (an SDK Server holds one transport).

function createServer() {
  const server = new Server(
    { name: "outpost-conformance-2025", version: "1.0.0" },
    {
      capabilities: {
        tools: { listChanged: true },
        resources: { subscribe: true, listChanged: true },
        prompts: { listChanged: true },
        logging: {},
        completions: {},
      },
      instructions: "Conformance target for the Outpost test suite.",
    },
  );
  const subscriptions = new Set();

  // The SDK answers logging/setLevel itself (logging capability) and keeps the level per session.
  const log = async (extra, level, data) => {
    if (server.isMessageIgnored?.(level, extra.sessionId)) return;
    await extra.sendNotification({
      method: "notifications/message",
      params: { level, logger: "conformance", data },
    });
  };

  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));

  server.setRequestHandler(CallToolRequestSchema, async (req, extra) => {
    const args = req.params.arguments ?? {};
    switch (req.params.name) {
      case "test_simple_text":
        return { content: [text("This is a simple text response for testing.")] };
      case "test_image_content":
        return { content: [{ type: "image", data: PNG_1X1, mimeType: "image/png" }] };
      case "test_audio_content":
        return { content: [{ type: "audio", data: WAV_SILENCE, mimeType: "audio/wav" }] };
      case "test_embedded_resource":
        return {
          content: [
            {
              type: "resource",
              resource: {
                uri: "test://embedded-resource",
                mimeType: "text/plain",
                text: "This is an embedded resource content.",
              },
            },
          ],
        };
      case "test_multiple_content_types":
        return {
          content: [
            text("Multiple content types test:"),
            { type: "image", data: PNG_1X1, mimeType: "image/png" },
            {
              type: "resource",
              resource: {
                uri: "test://mixed-content-resource",
                mimeType: "application/json",
                text: JSON.stringify({ test: "data", value: 123 }),
              },
            },
          ],
        };
      case "test_tool_with_logging":
        await log(extra, "info", "Tool execution started");
        await sleep(50);
        await log(extra, "info", "Tool processing data");
        await sleep(50);
        await log(extra, "info", "Tool execution completed");
        return { content: [text("Tool with logging executed successfully")] };
      case "test_tool_with_progress": {
        const token = req.params._meta?.progressToken;
        for (const progress of [0, 50, 100]) {
          if (token !== undefined) {
            await extra.sendNotification({
              method: "notifications/progress",
              params: { progressToken: token, progress, total: 100, message: `step ${progress}` },
            });
          }
          if (progress < 100) await sleep(50);
        }
        return { content: [text("Tool with progress executed successfully")] };
      }
      case "test_error_handling":
        return {
          isError: true,
          content: [text("This tool intentionally returns an error for testing")],
        };
      case "test_sampling": {
        const prompt = String(args.prompt ?? "");
        const result = await extra.sendRequest(
          {
            method: "sampling/createMessage",
            params: { messages: [{ role: "user", content: text(prompt) }], maxTokens: 100 },
          },
          CreateMessageResultSchema,
        );
        const reply = result.content?.type === "text" ? result.content.text : JSON.stringify(result.content);
        return { content: [text(`LLM response: ${reply}`)] };
      }
      case "test_elicitation": {
        const result = await extra.sendRequest(
          {
            method: "elicitation/create",
            params: {
              message: String(args.message ?? "Please provide your information"),
              requestedSchema: {
                type: "object",
                properties: {
                  username: { type: "string", description: "User's response" },
                  email: { type: "string", description: "User's email address" },
                },
                required: ["username", "email"],
              },
            },
          },
          ElicitResultSchema,
        );
        return {
          content: [
            text(`User response: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`),
          ],
        };
      }
      case "test_elicitation_sep1034_defaults": {
        const result = await extra.sendRequest(
          {
            method: "elicitation/create",
            params: {
              message: "Please review and update the form fields with defaults",
              requestedSchema: {
                type: "object",
                properties: {
                  name: { type: "string", description: "User name", default: "John Doe" },
                  age: { type: "integer", description: "User age", default: 30 },
                  score: { type: "number", description: "User score", default: 95.5 },
                  status: {
                    type: "string",
                    description: "User status",
                    enum: ["active", "inactive", "pending"],
                    default: "active",
                  },
                  verified: { type: "boolean", description: "Verification status", default: true },
                },
                required: [],
              },
            },
          },
          ElicitResultSchema,
        );
        return {
          content: [
            text(`Elicitation completed: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`),
          ],
        };
      }
      case "test_elicitation_sep1330_enums": {
        const result = await extra.sendRequest(
          {
            method: "elicitation/create",
            params: {
              message: "Please choose from the enum fields",
              requestedSchema: {
                type: "object",
                properties: {
                  untitledSingle: {
                    type: "string",
                    description: "Untitled single-select",
                    enum: ["option1", "option2", "option3"],
                  },
                  titledSingle: {
                    type: "string",
                    description: "Titled single-select",
                    oneOf: [
                      { const: "value1", title: "First Option" },
                      { const: "value2", title: "Second Option" },
                      { const: "value3", title: "Third Option" },
                    ],
                  },
                  legacyEnum: {
                    type: "string",
                    description: "Legacy titled enum",
                    enum: ["opt1", "opt2", "opt3"],
                    enumNames: ["Option One", "Option Two", "Option Three"],
                  },
                  untitledMulti: {
                    type: "array",
                    description: "Untitled multi-select",
                    items: { type: "string", enum: ["option1", "option2", "option3"] },
                  },
                  titledMulti: {
                    type: "array",
                    description: "Titled multi-select",
                    items: {
                      anyOf: [
                        { const: "value1", title: "First Choice" },
                        { const: "value2", title: "Second Choice" },
                        { const: "value3", title: "Third Choice" },
                      ],
                    },
                  },
                },
                required: [],
              },
            },
          },
          ElicitResultSchema,
        );
        return {
          content: [
            text(`Elicitation completed: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`),
          ],
        };
      }
      case "json_schema_2020_12_tool":
        return { content: [text(`Received: ${JSON.stringify(args)}`)] };
      case "test_reconnection":
        // With an event store the transport can close this request's SSE stream; the client
        // reconnects with GET + Last-Event-ID and receives the result from the event store.
        await sleep(100);
        extra.closeSSEStream?.();
        await sleep(200);
        return { content: [text("Reconnection test completed")] };
      default:
        throw new McpError(ErrorCode.InvalidParams, `Unknown tool: ${req.params.name}`);
    }
  });

  server.setRequestHandler(ListResourcesRequestSchema, async () => ({ resources: RESOURCES }));
  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({ resourceTemplates: TEMPLATES }));

  server.setRequestHandler(ReadResourceRequestSchema, async (req) => {
    const uri = req.params.uri;
    switch (uri) {
      case "test://static-text":
        return {
          contents: [{ uri, mimeType: "text/plain", text: "This is the content of the static text resource." }],
        };
      case "test://static-binary":
        return { contents: [{ uri, mimeType: "image/png", blob: PNG_1X1 }] };
      case "test://watched-resource":
        return { contents: [{ uri, mimeType: "text/plain", text: `Watched resource content at ${new Date().toISOString()}` }] };
    }
    const m = /^test:\/\/template\/([^/]+)\/data$/.exec(uri);
    if (m) {
      const id = decodeURIComponent(m[1]);
      return {
        contents: [
          {
            uri,
            mimeType: "application/json",
            text: JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` }),
          },
        ],
      };
    }
    throw new McpError(-32002, `Resource not found: ${uri}`, { uri });
  });

  server.setRequestHandler(SubscribeRequestSchema, async (req) => {
    const uri = req.params.uri;
    subscriptions.add(uri);
    // Tell the subscriber once that the resource changed. This goes out on the standalone GET
    // stream (it is not related to a request), which exercises that stream end to end.
    setTimeout(() => {
      if (!subscriptions.has(uri)) return;
      server.sendResourceUpdated({ uri }).catch(() => {});
    }, 50);
    return {};
  });
  server.setRequestHandler(UnsubscribeRequestSchema, async (req) => {
    subscriptions.delete(req.params.uri);
    return {};
  });

  server.setRequestHandler(ListPromptsRequestSchema, async () => ({ prompts: PROMPTS }));

  server.setRequestHandler(GetPromptRequestSchema, async (req) => {
    const args = req.params.arguments ?? {};
    switch (req.params.name) {
      case "test_simple_prompt":
        return { messages: [{ role: "user", content: text("This is a simple prompt for testing.") }] };
      case "test_prompt_with_arguments": {
        for (const name of ["arg1", "arg2"]) {
          if (args[name] === undefined) throw new McpError(ErrorCode.InvalidParams, `Missing required argument: ${name}`);
        }
        return {
          messages: [
            { role: "user", content: text(`Prompt with arguments: arg1='${args.arg1}', arg2='${args.arg2}'`) },
          ],
        };
      }
      case "test_prompt_with_embedded_resource": {
        if (args.resourceUri === undefined) {
          throw new McpError(ErrorCode.InvalidParams, "Missing required argument: resourceUri");
        }
        return {
          messages: [
            {
              role: "user",
              content: {
                type: "resource",
                resource: {
                  uri: args.resourceUri,
                  mimeType: "text/plain",
                  text: "Embedded resource content for testing.",
                },
              },
            },
            { role: "user", content: text("Please process the embedded resource above.") },
          ],
        };
      }
      case "test_prompt_with_image":
        return {
          messages: [
            { role: "user", content: { type: "image", data: PNG_1X1, mimeType: "image/png" } },
            { role: "user", content: text("Please analyze the image above.") },
          ],
        };
      default:
        throw new McpError(ErrorCode.InvalidParams, `Unknown prompt: ${req.params.name}`);
    }
  });

  server.setRequestHandler(CompleteRequestSchema, async (req) => {
    const { name, value } = req.params.argument;
    const values = (COMPLETIONS[name] ?? []).filter((v) => v.startsWith(value ?? ""));
    return { completion: { values, total: values.length, hasMore: false } };
  });

  server.onerror = (err) => console.error("server error:", err?.message ?? err);
  return server;
}

// ---------------------------------------------------------------------------------------------
// In-memory event store: resumability for SSE streams (Last-Event-ID). Bounded.

class MemoryEventStore {
  constructor(limit = 10000) {
    this.limit = limit;
    this.events = new Map(); // eventId -> { streamId, message }
    this.seq = 0;
  }
  async storeEvent(streamId, message) {
    const eventId = `${streamId}_${++this.seq}`;
    this.events.set(eventId, { streamId, message });
    while (this.events.size > this.limit) this.events.delete(this.events.keys().next().value);
    return eventId;
  }
  async getStreamIdForEventId(eventId) {
    return this.events.get(eventId)?.streamId;
  }
  async replayEventsAfter(lastEventId, { send }) {
    const last = this.events.get(lastEventId);
    if (!last) return "";
    let after = false;
    for (const [eventId, { streamId, message }] of this.events) {
      if (eventId === lastEventId) {
        after = true;
        continue;
      }
      // Priming events carry an empty message and are not replayed.
      if (after && streamId === last.streamId && message && message.jsonrpc) await send(eventId, message);
    }
    return last.streamId;
  }
}

// ---------------------------------------------------------------------------------------------
// Transports

function parseArgs(argv) {
  const opts = { mode: null, port: 0, host: "127.0.0.1" };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--stdio") opts.mode = "stdio";
    else if (a === "--http") opts.mode = "http";
    else if (a === "--port") opts.port = Number(argv[++i]);
    else if (a === "--host") opts.host = argv[++i];
    else if (a === "--help" || a === "-h") opts.mode = "help";
    else throw new Error(`unknown argument: ${a}`);
  }
  return opts;
}

async function runStdio() {
  const server = createServer();
  await server.connect(new StdioServerTransport());
  console.error("outpost-conformance-2025: serving MCP on stdio");
}

const LOOPBACK = new Set(["localhost", "127.0.0.1", "[::1]", "::1"]);
const isLoopbackHost = (h) => LOOPBACK.has(h.toLowerCase());
function hostnameOf(hostHeader) {
  try {
    return new URL(`http://${hostHeader}`).hostname;
  } catch {
    return null;
  }
}

function sendJsonError(res, status, code, message) {
  if (res.headersSent) return res.end();
  res.writeHead(status, { "Content-Type": "application/json" });
  res.end(JSON.stringify({ jsonrpc: "2.0", error: { code, message }, id: null }));
}

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const c of req) {
    size += c.length;
    if (size > 8 * 1024 * 1024) throw Object.assign(new Error("body too large"), { status: 413 });
    chunks.push(c);
  }
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

async function runHttp({ port, host }) {
  const sessions = new Map(); // sessionId -> transport
  // DNS rebinding protection for a loopback listener: Host and Origin must name loopback.
  const guard = isLoopbackHost(host);

  const httpServer = http.createServer(async (req, res) => {
    try {
      const url = new URL(req.url, "http://placeholder");
      if (url.pathname !== "/mcp") return sendJsonError(res, 404, -32000, "Not found");
      if (guard) {
        const h = hostnameOf(req.headers.host ?? "");
        if (!h || !isLoopbackHost(h)) return sendJsonError(res, 403, -32000, `Invalid Host header: ${req.headers.host}`);
        const origin = req.headers.origin;
        if (origin) {
          let oh = null;
          try {
            oh = new URL(origin).hostname;
          } catch {}
          if (!oh || !isLoopbackHost(oh)) return sendJsonError(res, 403, -32000, `Invalid Origin header: ${origin}`);
        }
      }
      const sid = req.headers["mcp-session-id"];

      if (req.method === "POST") {
        let body;
        try {
          body = await readJson(req);
        } catch (e) {
          return sendJsonError(res, e.status ?? 400, -32700, `Parse error: ${e.message}`);
        }
        if (sid) {
          const t = sessions.get(sid);
          if (!t) return sendJsonError(res, 404, -32001, "Session not found");
          return await t.handleRequest(req, res, body);
        }
        if (!isInitializeRequest(body)) {
          return sendJsonError(res, 400, -32000, "Bad Request: no valid session ID provided");
        }
        const transport = new StreamableHTTPServerTransport({
          sessionIdGenerator: () => randomUUID(),
          eventStore: new MemoryEventStore(),
          retryInterval: 500,
          onsessioninitialized: (id) => sessions.set(id, transport),
        });
        transport.onclose = () => {
          if (transport.sessionId) sessions.delete(transport.sessionId);
        };
        await createServer().connect(transport);
        return await transport.handleRequest(req, res, body);
      }

      if (req.method === "GET" || req.method === "DELETE") {
        if (!sid) return sendJsonError(res, 400, -32000, "Bad Request: Mcp-Session-Id header is required");
        const t = sessions.get(sid);
        if (!t) return sendJsonError(res, 404, -32001, "Session not found");
        return await t.handleRequest(req, res);
      }

      res.setHeader("Allow", "GET, POST, DELETE");
      return sendJsonError(res, 405, -32000, "Method not allowed");
    } catch (e) {
      console.error("request error:", e);
      sendJsonError(res, 500, -32603, "Internal server error");
    }
  });
  // SSE streams are long-lived: no request or idle timeouts.
  httpServer.requestTimeout = 0;
  httpServer.headersTimeout = 0;
  httpServer.keepAliveTimeout = 5000;

  await new Promise((resolve, reject) => {
    httpServer.once("error", reject);
    httpServer.listen(port, host, resolve);
  });
  const addr = httpServer.address();
  const shownHost = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  process.stdout.write(`listening on http://${shownHost}:${addr.port}/mcp\n`);

  const shutdown = async () => {
    for (const t of sessions.values()) await t.close().catch(() => {});
    httpServer.close();
    httpServer.closeAllConnections?.();
    process.exit(0);
  };
  process.on("SIGINT", shutdown);
  process.on("SIGTERM", shutdown);
}

const opts = parseArgs(process.argv.slice(2));
if (opts.mode === "stdio") await runStdio();
else if (opts.mode === "http") await runHttp(opts);
else {
  console.error("usage: server-2025.mjs --stdio | --http [--port N] [--host 127.0.0.1]");
  process.exit(opts.mode === "help" ? 0 : 2);
}
