#!/usr/bin/env node
// MCP 2026-07-28 (stateless) conformance target server, written by hand on
// node built-ins only (no SDK), so every wire detail is under our control.
//
//   node server-2026.mjs --http --port 0 --host 127.0.0.1   # prints "listening <url>"
//   node server-2026.mjs --stdio                           # newline-delimited JSON-RPC
//
// Implements what @modelcontextprotocol/conformance@0.2.0-alpha.12 asks of a
// server at --spec-version 2026-07-28: per-request _meta envelope, server/discover,
// Mcp-Method / Mcp-Name / Mcp-Param-* header validation, MRTR (InputRequiredResult),
// subscriptions/listen, cache hints, per-request log level.
import http from 'node:http';
import crypto from 'node:crypto';
import readline from 'node:readline';

const VERSION = '2026-07-28';
const SUPPORTED = [VERSION];
const SERVER_INFO = { name: 'outpost-conformance-2026', version: '1.0.0' };
const K = {
  pv: 'io.modelcontextprotocol/protocolVersion',
  caps: 'io.modelcontextprotocol/clientCapabilities',
  info: 'io.modelcontextprotocol/clientInfo',
  log: 'io.modelcontextprotocol/logLevel',
  sub: 'io.modelcontextprotocol/subscriptionId',
  serverInfo: 'io.modelcontextprotocol/serverInfo',
};
const CAPABILITIES = {
  tools: { listChanged: true },
  prompts: { listChanged: true },
  resources: { subscribe: true, listChanged: true },
  completions: {},
  logging: {},
};
const STATE_KEY = crypto.randomBytes(32);
const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==';
const WAV = 'UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=';
const LEVELS = ['debug', 'info', 'notice', 'warning', 'error', 'critical', 'alert', 'emergency'];

class RpcError extends Error {
  constructor(code, message, data, status) {
    super(message);
    this.code = code;
    this.data = data;
    this.status = status; // HTTP status; undefined = in-band (200, except -32021 -> 400)
  }
}
const invalidParams = (msg, data) => new RpcError(-32602, msg, data);
const missingCap = (caps) =>
  new RpcError(-32021, 'Missing required client capability', { requiredCapabilities: caps }, 400);

// ---------- MRTR helpers ----------
function signState(obj) {
  const body = Buffer.from(JSON.stringify(obj)).toString('base64url');
  const mac = crypto.createHmac('sha256', STATE_KEY).update(body).digest('base64url');
  return `${body}.${mac}`;
}
function verifyState(s, tool) {
  if (typeof s !== 'string') throw invalidParams('requestState must be a string');
  const [body, mac, extra] = s.split('.');
  const want = crypto.createHmac('sha256', STATE_KEY).update(body ?? '').digest('base64url');
  if (extra !== undefined || !mac || mac.length !== want.length ||
      !crypto.timingSafeEqual(Buffer.from(mac), Buffer.from(want)))
    throw invalidParams('requestState failed integrity verification');
  const obj = JSON.parse(Buffer.from(body, 'base64url').toString());
  if (obj.t !== tool) throw invalidParams('requestState belongs to another request');
  return obj;
}
const elicit = (message, props, required) => ({
  method: 'elicitation/create',
  params: { mode: 'form', message, requestedSchema: { type: 'object', properties: props, required } },
});
const sample = (text, maxTokens = 100) => ({
  method: 'sampling/createMessage',
  params: { messages: [{ role: 'user', content: { type: 'text', text } }], maxTokens },
});
const ROOTS = { method: 'roots/list', params: {} };
const inputRequired = (inputRequests, state) => ({
  resultType: 'input_required',
  inputRequests,
  ...(state ? { requestState: signState(state) } : {}),
});
// Returns the usable responses (validated), or throws on malformed input.
function responsesOf(params) {
  if (!('inputResponses' in params)) return {};
  const r = params.inputResponses;
  if (r === null || typeof r !== 'object' || Array.isArray(r))
    throw invalidParams('inputResponses must be an object');
  return r;
}
function take(responses, key, kind) {
  if (!(key in responses)) return undefined;
  const v = responses[key];
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw invalidParams(`inputResponses.${key} must be an object`, { key });
  if (kind === 'elicit' && typeof v.action !== 'string')
    throw invalidParams(`inputResponses.${key} is not an ElicitResult`, { key });
  if (kind === 'roots' && !Array.isArray(v.roots))
    throw invalidParams(`inputResponses.${key} is not a ListRootsResult`, { key });
  return v;
}
const text = (t) => ({ content: [{ type: 'text', text: t }] });

// ---------- tools ----------
const noArgs = { type: 'object', properties: {} };
const TOOLS = [
  { name: 'test_simple_text', description: 'Returns simple text content', inputSchema: noArgs,
    run: () => text('This is a simple text response for testing.') },
  { name: 'test_image_content', description: 'Returns image content', inputSchema: noArgs,
    run: () => ({ content: [{ type: 'image', data: PNG, mimeType: 'image/png' }] }) },
  { name: 'test_audio_content', description: 'Returns audio content', inputSchema: noArgs,
    run: () => ({ content: [{ type: 'audio', data: WAV, mimeType: 'audio/wav' }] }) },
  { name: 'test_embedded_resource', description: 'Returns an embedded resource', inputSchema: noArgs,
    run: () => ({ content: [{ type: 'resource', resource: { uri: 'test://embedded-resource', mimeType: 'text/plain', text: 'This is an embedded resource content.' } }] }) },
  { name: 'test_multiple_content_types', description: 'Returns text, image and resource content', inputSchema: noArgs,
    run: () => ({ content: [
      { type: 'text', text: 'Multiple content types test:' },
      { type: 'image', data: PNG, mimeType: 'image/png' },
      { type: 'resource', resource: { uri: 'test://mixed-content-resource', mimeType: 'application/json', text: '{"test":"data","value":123}' } },
    ] }) },
  { name: 'test_error_handling', description: 'Always fails with isError', inputSchema: noArgs,
    run: () => ({ isError: true, content: [{ type: 'text', text: 'This tool intentionally returns an error for testing' }] }) },
  { name: 'test_tool_with_progress', description: 'Reports progress 0/50/100 when a progressToken is given', inputSchema: noArgs,
    run: async (_a, ctx) => {
      for (const p of [0, 50, 100]) {
        ctx.progress(p, 100, `Completed step ${p} of 100`);
        if (p < 100) await sleep(50);
      }
      return text(`progress done (token ${JSON.stringify(ctx.progressToken ?? null)})`);
    } },
  { name: 'test_tool_with_logging', description: 'Emits log messages (only if _meta logLevel is set)', inputSchema: noArgs,
    run: async (_a, ctx) => {
      for (const m of ['Tool execution started', 'Tool processing data', 'Tool execution completed']) {
        ctx.log('info', m);
        await sleep(20);
      }
      return text('Tool with logging executed successfully');
    } },
  { name: 'test_logging_tool', description: 'Emits log messages (only if _meta logLevel is set)', inputSchema: noArgs,
    run: async (_a, ctx) => {
      ctx.log('info', 'logging tool info');
      ctx.log('error', 'logging tool error');
      return text('logged');
    } },
  { name: 'test_missing_capability', description: 'Requires the client sampling capability', inputSchema: noArgs,
    run: (_a, ctx, p) => {
      if (!ctx.caps.sampling) throw missingCap({ sampling: {} });
      const r = take(responsesOf(p), 'q', 'sample');
      if (!r) return inputRequired({ q: sample('Say hi') });
      return text(`sampled: ${r.content?.text ?? ''}`);
    } },
  { name: 'test_streaming_elicitation', description: 'Answers on an SSE stream with an InputRequiredResult', inputSchema: noArgs,
    run: async (_a, ctx, p) => {
      if (!ctx.caps.elicitation) throw missingCap({ elicitation: {} });
      ctx.forceStream();
      await sleep(20);
      const r = take(responsesOf(p), 'confirm', 'elicit');
      if (!r) return inputRequired({ confirm: elicit('Continue?', { ok: { type: 'boolean' } }, ['ok']) });
      return text(`action=${r.action}`);
    } },
  { name: 'test_trigger_tool_change', description: 'Announces a tools list change on listen streams', inputSchema: noArgs,
    run: () => { broadcast('toolsListChanged', 'notifications/tools/list_changed'); return text('tools list changed'); } },
  { name: 'test_trigger_prompt_change', description: 'Announces a prompts list change on listen streams', inputSchema: noArgs,
    run: () => { broadcast('promptsListChanged', 'notifications/prompts/list_changed'); return text('prompts list changed'); } },
  { name: 'test_trigger_resource_change', description: 'Announces a resources list change and an update of test://watched-resource', inputSchema: noArgs,
    run: () => {
      broadcast('resourcesListChanged', 'notifications/resources/list_changed');
      resourceUpdated('test://watched-resource');
      return text('resources changed');
    } },
  { name: 'test_input_required_result_elicitation', description: 'MRTR: elicits the user name', inputSchema: noArgs,
    run: (_a, ctx, p) => {
      const r = take(responsesOf(p), 'user_name', 'elicit');
      if (!r) return inputRequired({ user_name: elicit('What is your name?', { name: { type: 'string' } }, ['name']) });
      return text(`Hello, ${r.content?.name ?? 'anonymous'}!`);
    } },
  { name: 'test_input_required_result_sampling', description: 'MRTR: one sampling request', inputSchema: noArgs,
    run: (_a, ctx, p) => {
      const r = take(responsesOf(p), 'capital_question', 'sample');
      if (!r) return inputRequired({ capital_question: sample('What is the capital of France?') });
      return text(`Sampling said: ${r.content?.text ?? ''}`);
    } },
  { name: 'test_input_required_result_list_roots', description: 'MRTR: asks for roots', inputSchema: noArgs,
    run: (_a, ctx, p) => {
      const r = take(responsesOf(p), 'client_roots', 'roots');
      if (!r) return inputRequired({ client_roots: ROOTS });
      return text(`Roots: ${r.roots.map((x) => x.uri).join(', ')}`);
    } },
  { name: 'test_input_required_result_request_state', description: 'MRTR with signed requestState', inputSchema: noArgs,
    run: (_a, ctx, p) => {
      const t = 'test_input_required_result_request_state';
      const resp = responsesOf(p);
      const r = take(resp, 'confirm', 'elicit');
      if (!r || p.requestState === undefined)
        return inputRequired({ confirm: elicit('Please confirm', { ok: { type: 'boolean' } }, ['ok']) }, { t, round: 1 });
      verifyState(p.requestState, t);
      return text(`state-ok: confirmed=${r.content?.ok}`);
    } },
  { name: 'test_input_required_result_tampered_state', description: 'MRTR; rejects tampered requestState', inputSchema: noArgs,
    run: (_a, ctx, p) => {
      const t = 'test_input_required_result_tampered_state';
      if (p.requestState === undefined)
        return inputRequired({ confirm: elicit('Please confirm', { ok: { type: 'boolean' } }, ['ok']) }, { t, round: 1 });
      verifyState(p.requestState, t);
      const r = take(responsesOf(p), 'confirm', 'elicit');
      if (!r) return inputRequired({ confirm: elicit('Please confirm', { ok: { type: 'boolean' } }, ['ok']) }, { t, round: 1 });
      return text('state-ok');
    } },
  { name: 'test_input_required_result_multiple_inputs', description: 'MRTR: elicitation + sampling + roots at once', inputSchema: noArgs,
    run: (_a, ctx, p) => {
      const t = 'test_input_required_result_multiple_inputs';
      const resp = responsesOf(p);
      const reqs = {
        user_name: elicit('What is your name?', { name: { type: 'string' } }, ['name']),
        greeting: sample('Generate a greeting', 50),
        client_roots: ROOTS,
      };
      if (p.requestState !== undefined) verifyState(p.requestState, t);
      const got = { user_name: take(resp, 'user_name', 'elicit'), greeting: take(resp, 'greeting', 'sample'), client_roots: take(resp, 'client_roots', 'roots') };
      const missing = Object.fromEntries(Object.entries(reqs).filter(([k]) => !got[k]));
      if (Object.keys(missing).length) return inputRequired(missing, { t, round: 1 });
      return text(`${got.greeting.content?.text ?? ''} ${got.user_name.content?.name ?? ''} (${got.client_roots.roots.length} roots)`);
    } },
  { name: 'test_input_required_result_multi_round', description: 'MRTR over three rounds', inputSchema: noArgs,
    run: (_a, ctx, p) => {
      const t = 'test_input_required_result_multi_round';
      const resp = responsesOf(p);
      const st = p.requestState === undefined ? { t, round: 0 } : verifyState(p.requestState, t);
      if (st.round === 0 || !st.round) {
        return inputRequired({ step1: elicit('Step 1: What is your name?', { name: { type: 'string' } }, ['name']) }, { t, round: 1 });
      }
      if (st.round === 1) {
        const r = take(resp, 'step1', 'elicit');
        if (!r) return inputRequired({ step1: elicit('Step 1: What is your name?', { name: { type: 'string' } }, ['name']) }, { t, round: 1 });
        return inputRequired({ step2: elicit('Step 2: What is your favorite color?', { color: { type: 'string' } }, ['color']) }, { t, round: 2, name: r.content?.name });
      }
      const r = take(resp, 'step2', 'elicit');
      if (!r) return inputRequired({ step2: elicit('Step 2: What is your favorite color?', { color: { type: 'string' } }, ['color']) }, st);
      return text(`${st.name} likes ${r.content?.color}`);
    } },
  { name: 'test_input_required_result_capabilities', description: 'MRTR: asks only for what the client declared', inputSchema: noArgs,
    run: (_a, ctx, p) => {
      const resp = responsesOf(p);
      const want = {};
      if (ctx.caps.elicitation) want.user_name = elicit('What is your name?', { name: { type: 'string' } }, ['name']);
      if (ctx.caps.sampling) want.greeting = sample('Generate a greeting', 50);
      if (ctx.caps.roots) want.client_roots = ROOTS;
      if (!Object.keys(want).length) throw missingCap({ sampling: {} });
      const missing = Object.fromEntries(Object.entries(want).filter(([k]) => !take(resp, k, k === 'user_name' ? 'elicit' : k === 'client_roots' ? 'roots' : 'sample')));
      if (Object.keys(missing).length) return inputRequired(missing);
      return text('all inputs received');
    } },
  // 2025-era names, served through MRTR in this era
  { name: 'test_sampling', description: 'Sampling via MRTR', inputSchema: { type: 'object', properties: { prompt: { type: 'string' } } },
    run: (a, ctx, p) => {
      if (!ctx.caps.sampling) throw missingCap({ sampling: {} });
      const r = take(responsesOf(p), 'llm', 'sample');
      if (!r) return inputRequired({ llm: sample(String(a.prompt ?? 'Hello')) });
      return text(`LLM response: ${r.content?.text ?? ''}`);
    } },
  { name: 'test_elicitation', description: 'Elicitation via MRTR', inputSchema: { type: 'object', properties: { message: { type: 'string' } } },
    run: (a, ctx, p) => {
      if (!ctx.caps.elicitation) throw missingCap({ elicitation: {} });
      const r = take(responsesOf(p), 'user', 'elicit');
      if (!r) return inputRequired({ user: elicit(String(a.message ?? 'Your response?'), { response: { type: 'string' } }, ['response']) });
      return text(`User response: action=${r.action}, content=${JSON.stringify(r.content ?? {})}`);
    } },
  { name: 'test_header_param', description: 'Mirrors argument "region" into the Mcp-Param-Region header (x-mcp-header)',
    inputSchema: { type: 'object', properties: { region: { type: 'string', 'x-mcp-header': 'Region' } }, required: ['region'] },
    run: (a) => text(`region=${a.region}`) },
  { name: 'json_schema_2020_12_tool', description: 'Tool with JSON Schema 2020-12 features',
    inputSchema: {
      $schema: 'https://json-schema.org/draft/2020-12/schema',
      type: 'object',
      $defs: { address: { $anchor: 'addressDef', type: 'object', properties: { street: { type: 'string' }, city: { type: 'string' } } } },
      properties: {
        name: { type: 'string' },
        address: { $ref: '#/$defs/address' },
        contactMethod: { type: 'string', enum: ['phone', 'email'] },
        phone: { type: 'string' },
        email: { type: 'string' },
      },
      allOf: [{ anyOf: [{ required: ['phone'] }, { required: ['email'] }] }],
      if: { properties: { contactMethod: { const: 'phone' } }, required: ['contactMethod'] },
      then: { required: ['phone'] },
      else: { required: ['email'] },
      additionalProperties: false,
    },
    run: (a) => text(`ok: ${JSON.stringify(a)}`) },
];
const toolByName = new Map(TOOLS.map((t) => [t.name, t]));
const listedTool = ({ run, ...t }) => t;

// ---------- resources / prompts ----------
const RESOURCES = [
  { uri: 'test://static-text', name: 'static-text', description: 'Static text resource', mimeType: 'text/plain',
    read: (uri) => ({ uri, mimeType: 'text/plain', text: 'This is the content of the static text resource.' }) },
  { uri: 'test://static-binary', name: 'static-binary', description: 'Static binary resource (PNG)', mimeType: 'image/png',
    read: (uri) => ({ uri, mimeType: 'image/png', blob: PNG }) },
  { uri: 'test://watched-resource', name: 'watched-resource', description: 'Resource that test_trigger_resource_change updates', mimeType: 'text/plain',
    read: (uri) => ({ uri, mimeType: 'text/plain', text: 'Watched resource content' }) },
  { uri: 'test://example-resource', name: 'example-resource', description: 'Example resource', mimeType: 'text/plain',
    read: (uri) => ({ uri, mimeType: 'text/plain', text: 'Example resource content' }) },
];
const TEMPLATE = { uriTemplate: 'test://template/{id}/data', name: 'template-data', description: 'Templated JSON resource', mimeType: 'application/json' };
function readResource(uri) {
  const r = RESOURCES.find((x) => x.uri === uri);
  if (r) return [r.read(uri)];
  const m = /^test:\/\/template\/([^/]+)\/data$/.exec(uri);
  if (m) return [{ uri, mimeType: 'application/json', text: JSON.stringify({ id: m[1], templateTest: true, data: `Data for ID: ${m[1]}` }) }];
  throw invalidParams('Resource not found', { uri });
}
const PROMPTS = [
  { name: 'test_simple_prompt', description: 'Simple prompt without arguments',
    get: () => ({ messages: [{ role: 'user', content: { type: 'text', text: 'This is a simple prompt for testing.' } }] }) },
  { name: 'test_prompt_with_arguments', description: 'Prompt with two arguments',
    arguments: [{ name: 'arg1', description: 'First argument', required: true }, { name: 'arg2', description: 'Second argument', required: true }],
    get: (a) => ({ messages: [{ role: 'user', content: { type: 'text', text: `Prompt with arguments: arg1='${a.arg1}', arg2='${a.arg2}'` } }] }) },
  { name: 'test_prompt_with_embedded_resource', description: 'Prompt with an embedded resource',
    arguments: [{ name: 'resourceUri', description: 'URI of the resource to embed', required: true }],
    get: (a) => ({ messages: [
      { role: 'user', content: { type: 'resource', resource: { uri: String(a.resourceUri ?? 'test://example-resource'), mimeType: 'text/plain', text: 'Embedded resource content for testing.' } } },
      { role: 'user', content: { type: 'text', text: 'Please process the embedded resource above.' } },
    ] }) },
  { name: 'test_prompt_with_image', description: 'Prompt with image content',
    get: () => ({ messages: [
      { role: 'user', content: { type: 'image', data: PNG, mimeType: 'image/png' } },
      { role: 'user', content: { type: 'text', text: 'Please analyze the image above.' } },
    ] }) },
  { name: 'test_input_required_result_prompt', description: 'Prompt that needs elicited context (MRTR)',
    get: (a, ctx, p) => {
      const r = take(responsesOf(p), 'user_context', 'elicit');
      if (!r) return inputRequired({ user_context: elicit('What context should the prompt use?', { context: { type: 'string' } }, ['context']) });
      return { messages: [{ role: 'user', content: { type: 'text', text: `Use this context: ${r.content?.context ?? ''}` } }] };
    } },
];

// ---------- subscriptions/listen ----------
const listeners = new Set(); // { id, filter, send(msg) }
function broadcast(flag, method) {
  for (const l of listeners) if (l.filter[flag]) l.send({ jsonrpc: '2.0', method, params: { _meta: { [K.sub]: l.id } } });
}
function resourceUpdated(uri) {
  for (const l of listeners)
    if (Array.isArray(l.filter.resourceSubscriptions) && l.filter.resourceSubscriptions.includes(uri))
      l.send({ jsonrpc: '2.0', method: 'notifications/resources/updated', params: { uri, _meta: { [K.sub]: l.id } } });
}
function honored(f) {
  const out = {};
  for (const k of ['toolsListChanged', 'promptsListChanged', 'resourcesListChanged']) if (f[k] === true) out[k] = true;
  if (Array.isArray(f.resourceSubscriptions)) out.resourceSubscriptions = f.resourceSubscriptions.filter((u) => typeof u === 'string');
  return out;
}

// ---------- dispatch ----------
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const cache = (r, ttlMs = 0, cacheScope = 'public') => ({ ...r, ttlMs, cacheScope });
const REMOVED = new Set(['initialize', 'ping', 'logging/setLevel', 'resources/subscribe', 'resources/unsubscribe', 'notifications/initialized']);

// Validates the _meta envelope. Throws RpcError with HTTP status (ladder errors).
function checkEnvelope(params, headerVersion /* undefined on stdio */) {
  const meta = params && typeof params === 'object' ? params._meta : undefined;
  const missing = [K.pv, K.caps].filter((k) => !meta || typeof meta !== 'object' || meta[k] === undefined);
  if (missing.length) throw new RpcError(-32602, `Invalid params: _meta is missing ${missing.join(', ')}`, { missing }, 400);
  const v = meta[K.pv];
  if (typeof v !== 'string') throw new RpcError(-32602, 'Invalid params: protocolVersion must be a string', undefined, 400);
  const caps = meta[K.caps];
  if (caps === null || typeof caps !== 'object' || Array.isArray(caps))
    throw new RpcError(-32602, 'Invalid params: clientCapabilities must be an object', undefined, 400);
  if (headerVersion !== undefined && headerVersion !== v)
    throw new RpcError(-32020, 'Header mismatch: MCP-Protocol-Version header does not match _meta protocolVersion', { header: headerVersion, body: v }, 400);
  if (!SUPPORTED.includes(v))
    throw new RpcError(-32022, 'Unsupported protocol version', { supported: SUPPORTED, requested: v }, 400);
  return meta;
}

// ctx.emit(msg) sends a notification related to this request (SSE / stdio line).
async function dispatch(msg, ctx) {
  const { method } = msg;
  const params = msg.params ?? {};
  if (REMOVED.has(method) || !HANDLERS[method]) {
    // Unknown method: envelope is still validated first only if present? Spec: -32601 + 404.
    throw new RpcError(-32601, `Method not found: ${method}`, undefined, 404);
  }
  const meta = checkEnvelope(params, ctx.headerVersion);
  ctx.caps = meta[K.caps];
  ctx.progressToken = meta.progressToken;
  const lvl = meta[K.log];
  const minLevel = typeof lvl === 'string' ? LEVELS.indexOf(lvl) : -1;
  ctx.log = (level, data) => {
    if (minLevel < 0 || LEVELS.indexOf(level) < minLevel) return;
    ctx.emit({ jsonrpc: '2.0', method: 'notifications/message', params: { level, logger: 'conformance-2026', data } });
  };
  ctx.progress = (progress, total, message) => {
    if (ctx.progressToken === undefined) return;
    ctx.emit({ jsonrpc: '2.0', method: 'notifications/progress', params: { progressToken: ctx.progressToken, progress, total, message } });
  };
  const result = await HANDLERS[method](params, ctx, msg);
  if (result === undefined) return undefined; // long-lived (listen)
  return {
    ...result,
    resultType: result.resultType ?? 'complete',
    _meta: { ...(result._meta ?? {}), [K.serverInfo]: SERVER_INFO },
  };
}

const HANDLERS = {
  'server/discover': () => cache({ supportedVersions: SUPPORTED, capabilities: CAPABILITIES, instructions: 'Outpost conformance target for MCP 2026-07-28.' }),
  'tools/list': () => cache({ tools: TOOLS.map(listedTool) }),
  'tools/call': async (p, ctx) => {
    const tool = toolByName.get(p.name);
    if (!tool) throw invalidParams(`Unknown tool: ${p.name}`);
    const args = p.arguments ?? {};
    if (typeof args !== 'object' || Array.isArray(args)) throw invalidParams('arguments must be an object');
    return tool.run(args, ctx, p);
  },
  'prompts/list': () => cache({ prompts: PROMPTS.map(({ get, ...x }) => x) }),
  'prompts/get': async (p, ctx) => {
    const pr = PROMPTS.find((x) => x.name === p.name);
    if (!pr) throw invalidParams(`Unknown prompt: ${p.name}`);
    for (const a of pr.arguments ?? []) if (a.required && p.arguments?.[a.name] === undefined && pr.name !== 'test_prompt_with_embedded_resource')
      throw invalidParams(`Missing required argument: ${a.name}`);
    return pr.get(p.arguments ?? {}, ctx, p);
  },
  'resources/list': () => cache({ resources: RESOURCES.map(({ read, ...x }) => x) }),
  'resources/templates/list': () => cache({ resourceTemplates: [TEMPLATE] }),
  'resources/read': (p) => {
    if (typeof p.uri !== 'string') throw invalidParams('uri must be a string');
    return cache({ contents: readResource(p.uri) });
  },
  'completion/complete': (p) => {
    const v = String(p.argument?.value ?? '');
    const all = ['paris', 'park', 'party', 'test', 'testing', 'tested'];
    const values = all.filter((x) => x.startsWith(v.toLowerCase()));
    return { completion: { values, total: values.length, hasMore: false } };
  },
  'subscriptions/listen': (p, ctx, msg) => {
    const f = p.notifications;
    if (f === null || typeof f !== 'object' || Array.isArray(f)) throw invalidParams('notifications filter is required');
    if (!ctx.openListen) throw new RpcError(-32601, 'subscriptions/listen is not available on this transport', undefined, 404);
    const l = { id: msg.id, filter: honored(f), send: null };
    ctx.openListen(l);
    return undefined;
  },
};

// ---------- header checks (HTTP only) ----------
const NAME_FIELD = { 'tools/call': 'name', 'prompts/get': 'name', 'resources/read': 'uri' };
function hdr(req, name) {
  const v = req.headers[name.toLowerCase()];
  return v === undefined ? undefined : String(Array.isArray(v) ? v[0] : v).trim();
}
function decodeParam(v) {
  const m = /^=\?base64\?(.*)\?=$/.exec(v);
  if (!m) return v;
  const b = m[1];
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b) || b.length % 4 !== 0) return null;
  return Buffer.from(b, 'base64').toString('utf8');
}
function checkHeaders(req, msg) {
  const mm = hdr(req, 'mcp-method');
  if (mm === undefined) throw new RpcError(-32020, 'Header mismatch: missing Mcp-Method header', undefined, 400);
  if (mm !== msg.method) throw new RpcError(-32020, 'Header mismatch: Mcp-Method does not match body method', { header: mm, body: msg.method }, 400);
  const field = NAME_FIELD[msg.method];
  const bodyName = field ? msg.params?.[field] : undefined;
  if (typeof bodyName === 'string') {
    const mn = hdr(req, 'mcp-name');
    if (mn === undefined) throw new RpcError(-32020, 'Header mismatch: missing Mcp-Name header', undefined, 400);
    if (mn !== bodyName) throw new RpcError(-32020, 'Header mismatch: Mcp-Name does not match body', { header: mn, body: bodyName }, 400);
  }
  if (msg.method === 'tools/call') {
    const tool = toolByName.get(msg.params?.name);
    const props = tool?.inputSchema?.properties ?? {};
    for (const [arg, s] of Object.entries(props)) {
      const hname = s?.['x-mcp-header'];
      if (typeof hname !== 'string') continue;
      const bodyVal = msg.params?.arguments?.[arg];
      const raw = hdr(req, `mcp-param-${hname}`);
      if (bodyVal === undefined || bodyVal === null) {
        if (raw !== undefined) throw new RpcError(-32020, `Header mismatch: Mcp-Param-${hname} present but argument absent`, undefined, 400);
        continue;
      }
      if (raw === undefined) throw new RpcError(-32020, `Header mismatch: missing Mcp-Param-${hname} header`, undefined, 400);
      const dec = decodeParam(raw);
      if (dec === null) throw new RpcError(-32020, `Header mismatch: invalid Base64 in Mcp-Param-${hname}`, undefined, 400);
      if (dec !== String(bodyVal)) throw new RpcError(-32020, `Header mismatch: Mcp-Param-${hname} does not match argument ${arg}`, undefined, 400);
    }
  }
}

// ---------- HTTP transport ----------
const LOCAL_HOSTS = new Set(['localhost', '127.0.0.1', '[::1]', '::1']);
function hostOk(value, allowAny) {
  if (allowAny || value === undefined) return true;
  let h;
  try { h = new URL(value.includes('://') ? value : `http://${value}`).hostname.toLowerCase(); } catch { return false; }
  return LOCAL_HOSTS.has(h);
}
const errBody = (id, e) => ({ jsonrpc: '2.0', id: id ?? null, error: { code: e.code, message: e.message, ...(e.data !== undefined ? { data: e.data } : {}) } });

function serveHttp({ port, host, path, allowAnyHost }) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    const sendJson = (status, obj, extra = {}) => {
      const s = JSON.stringify(obj);
      res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(s), ...extra });
      res.end(s);
    };
    if (url.pathname !== path) return sendJson(404, errBody(null, new RpcError(-32601, 'Not found')));
    // DNS rebinding protection (Host and Origin must be loopback).
    if (!hostOk(req.headers.host, allowAnyHost) || !hostOk(req.headers.origin, allowAnyHost))
      return sendJson(403, errBody(null, new RpcError(-32600, 'Forbidden: Host/Origin not allowed')));
    if (req.method !== 'POST')
      return sendJson(405, errBody(null, new RpcError(-32600, 'Method Not Allowed: this endpoint only accepts POST')), { Allow: 'POST' });
    const chunks = [];
    let size = 0;
    req.on('data', (c) => { size += c.length; if (size <= 4 << 20) chunks.push(c); });
    req.on('end', async () => {
      if (size > 4 << 20) return sendJson(413, errBody(null, new RpcError(-32600, 'Request body too large')));
      let msg;
      try { msg = JSON.parse(Buffer.concat(chunks).toString('utf8')); }
      catch { return sendJson(400, errBody(null, new RpcError(-32700, 'Parse error'))); }
      if (Array.isArray(msg) || msg === null || typeof msg !== 'object' || msg.jsonrpc !== '2.0')
        return sendJson(400, errBody(null, new RpcError(-32600, 'Invalid Request: expected one JSON-RPC message')));
      if (msg.id === undefined) { res.writeHead(202); return res.end(); } // notification or response
      if (typeof msg.method !== 'string') { res.writeHead(202); return res.end(); }
      let streaming = false;
      const writeEvent = (m) => res.write(`event: message\ndata: ${JSON.stringify(m)}\n\n`);
      const startStream = () => {
        if (streaming) return;
        streaming = true;
        res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache, no-transform', Connection: 'keep-alive' });
        res.flushHeaders();
      };
      const ctx = {
        headerVersion: hdr(req, 'mcp-protocol-version') ?? null,
        emit: (m) => { if (res.writableEnded) return; startStream(); writeEvent(m); },
        forceStream: startStream,
        openListen: (l) => {
          startStream();
          l.send = (m) => { if (!res.writableEnded) writeEvent(m); };
          listeners.add(l);
          const done = () => listeners.delete(l);
          res.on('close', done);
          l.send({ jsonrpc: '2.0', method: 'notifications/subscriptions/acknowledged', params: { notifications: l.filter, _meta: { [K.sub]: l.id } } });
        },
      };
      try {
        checkHeaders(req, msg);
        if (ctx.headerVersion === null) throw new RpcError(-32020, 'Header mismatch: missing MCP-Protocol-Version header', undefined, 400);
        const result = await dispatch(msg, ctx);
        if (result === undefined) return; // listen stream stays open
        const out = { jsonrpc: '2.0', id: msg.id, result };
        if (streaming) { writeEvent(out); res.end(); } else sendJson(200, out);
      } catch (e) {
        const err = e instanceof RpcError ? e : new RpcError(-32603, `Internal error: ${e?.message ?? e}`);
        const status = err.status ?? (err.code === -32021 ? 400 : 200);
        if (streaming) { writeEvent(errBody(msg.id, err)); res.end(); } else sendJson(status, errBody(msg.id, err));
      }
    });
  });
  server.listen(port, host, () => {
    const a = server.address();
    const h = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    process.stdout.write(`listening on http://${h}:${a.port}${path}\n`);
  });
  const stop = () => { server.close(); for (const l of listeners) listeners.delete(l); process.exit(0); };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

// ---------- stdio transport ----------
// 2026-07-28 over stdio: newline-delimited JSON-RPC, no initialize; every request
// carries the _meta envelope; notifications for a request (progress, log) are
// written to stdout before its response; subscriptions/listen notifications are
// tagged with the listen request id, and the stream is ended with
// notifications/cancelled { requestId } from the server (or the client cancels it).
function serveStdio() {
  const write = (m) => process.stdout.write(`${JSON.stringify(m)}\n`);
  const rl = readline.createInterface({ input: process.stdin });
  const open = new Map();
  rl.on('line', async (line) => {
    if (!line.trim()) return;
    let msg;
    try { msg = JSON.parse(line); } catch { return write(errBody(null, new RpcError(-32700, 'Parse error'))); }
    if (Array.isArray(msg) || msg === null || typeof msg !== 'object') return write(errBody(null, new RpcError(-32600, 'Invalid Request')));
    if (msg.id === undefined) {
      if (msg.method === 'notifications/cancelled') {
        const l = open.get(msg.params?.requestId);
        if (l) { listeners.delete(l); open.delete(l.id); }
      }
      return;
    }
    if (typeof msg.method !== 'string') return;
    const ctx = {
      headerVersion: undefined,
      emit: write,
      forceStream: () => {},
      openListen: (l) => {
        l.send = write;
        listeners.add(l);
        open.set(l.id, l);
        write({ jsonrpc: '2.0', method: 'notifications/subscriptions/acknowledged', params: { notifications: l.filter, _meta: { [K.sub]: l.id } } });
      },
    };
    try {
      const result = await dispatch(msg, ctx);
      if (result !== undefined) write({ jsonrpc: '2.0', id: msg.id, result });
    } catch (e) {
      const err = e instanceof RpcError ? e : new RpcError(-32603, `Internal error: ${e?.message ?? e}`);
      write(errBody(msg.id, err));
    }
  });
  rl.on('close', () => {
    for (const l of open.values()) listeners.delete(l);
    process.exit(0);
  });
}

// ---------- main ----------
const argv = process.argv.slice(2);
const opt = (n, d) => { const i = argv.indexOf(n); return i >= 0 ? argv[i + 1] : d; };
if (argv.includes('--stdio')) serveStdio();
else if (argv.includes('--http')) {
  serveHttp({
    port: Number(opt('--port', '0')),
    host: opt('--host', '127.0.0.1'),
    path: opt('--path', '/mcp'),
    allowAnyHost: argv.includes('--allow-any-host'),
  });
} else {
  process.stderr.write('usage: server-2026.mjs --http [--port N] [--host H] [--path /mcp] [--allow-any-host] | --stdio\n');
  process.exit(2);
}
