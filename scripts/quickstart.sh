#!/usr/bin/env bash
# Brings up a working Outpost on this machine: builds the binaries, makes a development CA
# and a localhost certificate, creates the embedded SQLite store with an organisation and
# keys, starts a relay and an agent serving @modelcontextprotocol/server-everything over
# stdio, prints the client URL, a client key and ready-to-paste client configs, and makes
# one tool call through it. Then it keeps running until Ctrl-C (or exits at once with
# --once). State lives in .quickstart/ (delete it to start over).
#
#   QUICKSTART_PORT  relay port (default 8443; 0 picks a free one)
#   QUICKSTART_DIR   where state goes (default .quickstart)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
once=false
[ "${1:-}" = "--once" ] && once=true
port="${QUICKSTART_PORT:-8443}"
dir="${QUICKSTART_DIR:-$root/.quickstart}"

echo "==> installing the example MCP server and building (first run takes a few minutes)"
scripts/setup-tools.sh
cargo build --bins --locked --quiet
tools="${MCP_TOOLS_DIR:-$root/.tools}"
relay_bin="$root/target/debug/outpost-relay"
agent_bin="$root/target/debug/outpost-agent"

rm -rf "$dir"
mkdir -p "$dir"
chmod 700 "$dir"
"$relay_bin" dev-certs --out "$dir/tls" >/dev/null
"$relay_bin" --data-dir "$dir/data" init --org default >"$dir/init.txt"
client_key="$(tail -n 1 "$dir/init.txt")"
rm "$dir/init.txt"
(umask 077 && "$relay_bin" --data-dir "$dir/data" keys create --agent laptop --quiet >"$dir/agent.key")

cat >"$dir/relay.toml" <<TOML
listen = "127.0.0.1:$port"
data_dir = "$dir/data"

[tls]
cert_file = "$dir/tls/cert.pem"
key_file = "$dir/tls/key.pem"
TOML

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

"$relay_bin" --config "$dir/relay.toml" serve >"$dir/relay.out" 2>"$dir/relay.log" &
pids+=($!)
for _ in $(seq 1 100); do
  grep -q "listening on" "$dir/relay.out" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$dir/relay.log" >&2; exit 1; }
  sleep 0.1
done
addr="$(sed -n 's/.*listening on //p' "$dir/relay.out")"
port="${addr##*:}"

cat >"$dir/agent.toml" <<TOML
relay_url = "wss://localhost:$port"
key_file = "$dir/agent.key"
ca_file = "$dir/tls/ca.pem"

[servers.everything]
type = "stdio"
command = "$(command -v node)"
args = ["$tools/node_modules/@modelcontextprotocol/server-everything/dist/index.js", "stdio"]
inherit_env = ["PATH", "HOME"]
TOML

"$agent_bin" --config "$dir/agent.toml" 2>"$dir/agent.log" &
pids+=($!)
for _ in $(seq 1 200); do
  grep -q "tunnel established" "$dir/agent.log" 2>/dev/null && break
  kill -0 "${pids[1]}" 2>/dev/null || { cat "$dir/agent.log" >&2; exit 1; }
  sleep 0.1
done
grep -q "tunnel established" "$dir/agent.log" || { echo "the agent did not connect:" >&2; cat "$dir/agent.log" >&2; exit 1; }

url="https://localhost:$port/mcp/laptop/everything"
printf '%s\n' "$client_key" >"$dir/client.key"
chmod 600 "$dir/client.key"

cat <<TEXT

==> Outpost is up
  relay:        https://localhost:$port   (log: $dir/relay.log)
  agent:        laptop, serving "everything" over stdio   (log: $dir/agent.log)
  client URL:   $url
  client key:   $client_key
  trust:        the relay's certificate is signed by $dir/tls/ca.pem (a development CA)

Cursor (~/.cursor/mcp.json):
  { "mcpServers": { "outpost": { "url": "$url",
      "headers": { "Authorization": "Bearer $client_key" } } } }

VS Code (.vscode/mcp.json):
  { "servers": { "outpost": { "type": "http", "url": "$url",
      "headers": { "Authorization": "Bearer $client_key" } } } }

Claude Desktop (claude_desktop_config.json, through the mcp-remote bridge):
  { "mcpServers": { "outpost": { "command": "npx",
      "args": ["mcp-remote", "$url", "--header", "Authorization:\${OUTPOST_AUTH}"],
      "env": { "OUTPOST_AUTH": "Bearer $client_key",
               "NODE_EXTRA_CA_CERTS": "$dir/tls/ca.pem" } } } }

Node-based clients need NODE_EXTRA_CA_CERTS=$dir/tls/ca.pem to trust the development CA.

==> one tool call through the relay and the agent (curl):
TEXT

mcp() { # mcp SESSION BODY: POST one message, print the SSE data lines
  curl -sS --fail --cacert "$dir/tls/ca.pem" "$url" \
    -H "Authorization: Bearer $client_key" -H 'Content-Type: application/json' \
    -H 'Accept: application/json, text/event-stream' ${1:+-H "Mcp-Session-Id: $1"} \
    -D "$dir/headers.txt" -d "$2"
}
mcp "" '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"quickstart","version":"1"}}}' >/dev/null
session="$(sed -n 's/^mcp-session-id: *//ip' "$dir/headers.txt" | tr -d '\r')"
mcp "$session" '{"jsonrpc":"2.0","method":"notifications/initialized"}' >/dev/null
echo '  -> tools/call echo {"message":"Hello from the other side of the firewall"}'
answer="$(mcp "$session" '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"Hello from the other side of the firewall"}}}' | sed -n 's/^data: //p')"
echo "  <- $answer"
curl -sS --cacert "$dir/tls/ca.pem" -X DELETE "$url" -H "Authorization: Bearer $client_key" -H "Mcp-Session-Id: $session" -o /dev/null
case "$answer" in
  *"Echo: Hello from the other side of the firewall"*) echo "==> the call went through" ;;
  *) echo "==> unexpected answer" >&2; exit 1 ;;
esac

if $once; then exit 0; fi
echo
echo "Relay and agent keep running; press Ctrl-C to stop them."
wait
