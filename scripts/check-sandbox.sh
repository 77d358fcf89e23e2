#!/usr/bin/env bash
# Runs the built binaries the way Dockerfile.relay, Dockerfile.agent and k8s/ run them, and
# shows that they work there: as uid 1000:1000 with no capabilities and no_new_privs
# (setpriv), on a read-only root filesystem with a private writable /tmp (bubblewrap), the
# relay writing only to its data directory. It sets up a relay (dev-certs, init, an agent
# key), serves it on 127.0.0.1 (ephemeral port), connects an agent serving
# @modelcontextprotocol/server-everything over stdio, makes a tool call through the relay,
# stops both with SIGTERM, and lists every file they wrote.
#
#   scripts/check-sandbox.sh [BIN_DIR]    BIN_DIR holds outpost-relay and outpost-agent
#                                         (default target/debug); builds nothing.
#   KEEP=1                                keep the work directory (under /var/tmp)
#
# The `healthcheck` subcommands and the agent's issue-5 keys are checked only when the
# binaries have them (the check says so when it skips them). Needs root: it switches to
# uid 1000 itself.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="$(cd "${1:-$root/target/debug}" && pwd)"
tools="${MCP_TOOLS_DIR:-$root/.tools}"
uid=1000
gid=1000

die() { echo "check-sandbox: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root: it drops to uid $uid itself"
for bin in outpost-relay outpost-agent; do
  [ -x "$bin_dir/$bin" ] || die "$bin_dir/$bin is missing (cargo build --bins --locked)"
done
if ! command -v bwrap >/dev/null 2>&1; then
  echo "check-sandbox: installing bubblewrap with apt-get"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
fi
for tool in bwrap setpriv curl node python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done
server="$tools/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
[ -f "$server" ] || "$root/scripts/setup-tools.sh"

# Outside /tmp, which each sandbox replaces with its own directory. Readable by uid 1000.
work="$(mktemp -d /var/tmp/outpost-sandbox.XXXXXX)"
chmod 0755 "$work"
mkdir -p "$work/bin" "$work/etc" "$work/data" "$work/relay-tmp" "$work/agent-tmp" "$work/example-tmp" "$work/log"
# A copy, so a build running meanwhile cannot swap the binaries under the test.
cp "$bin_dir/outpost-relay" "$bin_dir/outpost-agent" "$work/bin/"
relay_bin="$work/bin/outpost-relay"
agent_bin="$work/bin/outpost-agent"
# Like a volume with fsGroup, or a Secret mounted for the pod's user.
chown "$uid:$gid" "$work/etc" "$work/data" "$work/relay-tmp" "$work/agent-tmp" "$work/example-tmp"

# pids: the sandboxes (bwrap) this script started; programs: the programs inside them.
pids=()
programs=()
stop_all() {
  local pid
  for pid in "${programs[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    local alive=false
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=true; done
    $alive || break
    sleep 0.1
  done
  # bwrap takes its program down with it (--die-with-parent).
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${KEEP:-}" = 1 ]; then echo "check-sandbox: kept $work"; else rm -rf "$work"; fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

passed=0
ok() { passed=$((passed + 1)); printf 'ok    %s\n' "$*"; }
fail() {
  printf 'FAIL  %s\n' "$*"
  local log
  for log in "$work"/log/*; do
    [ -s "$log" ] || continue
    echo "---- ${log#"$work"/} (last 20 lines)"
    tail -n 20 "$log"
  done
  echo "check-sandbox: $passed passed, 1 failed"
  exit 1
}

# sandbox TMP [BWRAP_ARGS...] -- COMMAND...: runs COMMAND as uid:gid with no capabilities,
# the root filesystem read-only, TMP as its /tmp, and only the environment given here.
# BWRAP_ARGS add writable binds (--bind DIR DIR). Its pid is the sandbox's, not COMMAND's.
# The checkout (example configs) and the MCP tools stay visible read-only even when they
# live under /tmp, which the sandbox replaces with its own.
sandbox() {
  local tmp="$1"
  shift
  local args=()
  while [ "$1" != "--" ]; do args+=("$1"); shift; done
  shift
  setpriv --reuid "$uid" --regid "$gid" --clear-groups --inh-caps=-all --bounding-set=-all \
    --no-new-privs -- \
    bwrap --ro-bind / / --dev /dev --proc /proc --bind "$tmp" /tmp \
    --ro-bind "$root" "$root" --ro-bind "$tools" "$tools" --die-with-parent \
    "${args[@]}" -- \
    env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp LOG_LEVEL=info NO_COLOR=1 "$@"
}

# The pid of the program inside the sandbox started last (from bwrap's status line).
program_pid() {
  local status="$1"
  for _ in $(seq 1 50); do
    [ -s "$status" ] && break
    sleep 0.1
  done
  sed -n 's/.*"child-pid": *\([0-9]*\).*/\1/p' "$status" | head -n 1
}

# wait_for FILE TEXT PID: until FILE contains TEXT, or the process PID has ended.
wait_for() {
  for _ in $(seq 1 300); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# describe PID: its user, group, capabilities and no_new_privs, as the kernel reports them.
describe() {
  awk '/^(Uid|Gid|CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs):/ { printf "%s %s ", $1, $2 }' \
    "/proc/$1/status"
}

# --- the sandbox itself ----------------------------------------------------------------
probe="$(sandbox "$work/relay-tmp" -- sh -c \
  'id -u; id -g; touch /usr/.outpost-probe 2>&1; touch /tmp/.probe && rm /tmp/.probe && echo tmp-writable' 2>&1 || true)"
case "$probe" in
  "$uid"$'\n'"$gid"$'\n'*"Read-only file system"*tmp-writable) ok "sandbox: uid $uid gid $gid, / read-only, /tmp writable" ;;
  *) echo "$probe"; fail "sandbox: expected uid $uid, a read-only / and a writable /tmp" ;;
esac

# --- relay setup, as the image would run it --------------------------------------------
sandbox "$work/relay-tmp" --bind "$work/etc" "$work/etc" -- \
  "$relay_bin" dev-certs --out "$work/etc/tls" >"$work/log/dev-certs.log" 2>&1 \
  || fail "outpost-relay dev-certs"
ok "outpost-relay dev-certs (development CA and localhost certificate)"

store="$work/data/store"
sandbox "$work/relay-tmp" --bind "$work/data" "$work/data" -- \
  "$relay_bin" --data-dir "$store" init --org default >"$work/init.out" 2>"$work/log/init.log" \
  || fail "outpost-relay init"
client_key="$(tail -n 1 "$work/init.out")"
rm "$work/init.out"
ok "outpost-relay init (store in the data directory, owner key issued)"

sandbox "$work/relay-tmp" --bind "$work/data" "$work/data" -- \
  "$relay_bin" --data-dir "$store" keys create --agent sandbox --quiet \
  >"$work/etc/agent.key" 2>"$work/log/keys.log" || fail "outpost-relay keys create --agent"
chown "$uid:$gid" "$work/etc/agent.key"
chmod 0600 "$work/etc/agent.key"
ok "outpost-relay keys create --agent sandbox"

cat >"$work/etc/relay.toml" <<TOML
listen = "127.0.0.1:0"
data_dir = "$store"

[tls]
cert_file = "$work/etc/tls/cert.pem"
key_file = "$work/etc/tls/key.pem"
TOML

# --- relay serve --------------------------------------------------------------------------
sandbox "$work/relay-tmp" --bind "$work/data" "$work/data" --json-status-fd 3 -- \
  "$relay_bin" --config "$work/etc/relay.toml" serve \
  3>"$work/relay.status" >"$work/log/relay.out" 2>"$work/log/relay.log" &
pids+=($!)
relay_pid="$(program_pid "$work/relay.status")"
programs+=("$relay_pid")
wait_for "$work/log/relay.out" "listening on" "${pids[0]}" || fail "outpost-relay serve did not start"
addr="$(sed -n 's/.*listening on //p' "$work/log/relay.out")"
port="${addr##*:}"
ok "outpost-relay serve on $addr: $(describe "$relay_pid")"

# --- agent run ----------------------------------------------------------------------------
has_healthcheck=false
if "$agent_bin" --help 2>/dev/null | grep -qE '^ +healthcheck'; then
  has_healthcheck=true
  health_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
{
  echo "relay_url = \"wss://localhost:$port\""
  echo "key_file = \"$work/etc/agent.key\""
  echo "ca_file = \"$work/etc/tls/ca.pem\""
  if $has_healthcheck; then
    printf '\n[health]\nlisten = "127.0.0.1:%s"\n' "$health_port"
  fi
  printf '\n[servers.everything]\ntype = "stdio"\n'
  echo "command = \"$(command -v node)\""
  echo "args = [\"$server\", \"stdio\"]"
  echo 'inherit_env = ["PATH", "HOME"]'
} >"$work/etc/agent.toml"

sandbox "$work/agent-tmp" --json-status-fd 3 -- \
  "$agent_bin" --config "$work/etc/agent.toml" run \
  3>"$work/agent.status" >"$work/log/agent.out" 2>"$work/log/agent.log" &
pids+=($!)
agent_pid="$(program_pid "$work/agent.status")"
programs+=("$agent_pid")
wait_for "$work/log/agent.log" "tunnel established" "${pids[1]}" || fail "outpost-agent did not connect"
ok "outpost-agent run, tunnel established: $(describe "$agent_pid")"

# --- one tool call through the relay, as scripts/quickstart.sh makes it -----------------
url="https://localhost:$port/mcp/sandbox/everything"
mcp() { # mcp SESSION BODY: POST one message, print the SSE data lines
  curl -sS --fail --max-time 20 --cacert "$work/etc/tls/ca.pem" "$url" \
    -H "Authorization: Bearer $client_key" -H 'Content-Type: application/json' \
    -H 'Accept: application/json, text/event-stream' ${1:+-H "Mcp-Session-Id: $1"} \
    -D "$work/headers.txt" -d "$2"
}
mcp "" '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"check-sandbox","version":"1"}}}' \
  >/dev/null 2>"$work/log/curl.log" || fail "initialize through the relay"
session="$(sed -n 's/^mcp-session-id: *//ip' "$work/headers.txt" | tr -d '\r')"
mcp "$session" '{"jsonrpc":"2.0","method":"notifications/initialized"}' >/dev/null 2>>"$work/log/curl.log" \
  || fail "notifications/initialized through the relay"
answer="$(mcp "$session" '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"sandboxed"}}}' 2>>"$work/log/curl.log" | sed -n 's/^data: //p')"
curl -sS --max-time 10 --cacert "$work/etc/tls/ca.pem" -X DELETE "$url" \
  -H "Authorization: Bearer $client_key" -H "Mcp-Session-Id: $session" -o /dev/null 2>>"$work/log/curl.log" || true
case "$answer" in
  *"Echo: sandboxed"*) ok "tools/call echo through relay and agent: $answer" ;;
  *) echo "answer: $answer"; fail "tools/call echo through relay and agent" ;;
esac

# --- healthcheck subcommands, when the binaries have them -------------------------------
if $has_healthcheck; then
  sandbox "$work/agent-tmp" -- "$agent_bin" --config "$work/etc/agent.toml" healthcheck \
    >"$work/log/agent-healthcheck.log" 2>&1 || fail "outpost-agent healthcheck (exit $?)"
  ok "outpost-agent healthcheck (its /readyz on 127.0.0.1:$health_port answers 200)"
else
  echo "skip  outpost-agent healthcheck: this binary has no such subcommand yet"
fi
if "$relay_bin" --help 2>/dev/null | grep -qE '^ +healthcheck'; then
  # The file says port 0; the environment names the port serve actually bound.
  sandbox "$work/relay-tmp" -- env OUTPOST_LISTEN="$addr" \
    "$relay_bin" --config "$work/etc/relay.toml" healthcheck \
    >"$work/log/relay-healthcheck.log" 2>&1 || fail "outpost-relay healthcheck (exit $?)"
  ok "outpost-relay healthcheck (/livez over its TLS listener)"
else
  echo "skip  outpost-relay healthcheck: this binary has no such subcommand yet"
fi

# --- the example configurations are accepted ----------------------------------------------
sandbox "$work/example-tmp" -- "$relay_bin" --config "$root/deploy/examples/relay.toml" \
  --data-dir /tmp/example-store init --org example >/dev/null 2>"$work/log/example-relay.log" \
  || fail "deploy/examples/relay.toml: outpost-relay init refused it"
ok "deploy/examples/relay.toml accepted (init into the sandbox's /tmp)"
mkdir -p "$work/secrets"
echo "ak_test_placeholder" >"$work/secrets/outpost-agent-key"
echo "db-token-placeholder" >"$work/secrets/db-token"
chown -R "$uid:$gid" "$work/secrets"
# `check` also walks the network path to the relay when it can; the example's hosts are
# placeholders, so only its configuration step applies here.
check_args=(check)
if "$agent_bin" check --help 2>/dev/null | grep -q -- '--config-only'; then
  check_args+=(--config-only)
fi
if sandbox "$work/example-tmp" --tmpfs /run --ro-bind "$work/secrets" /run/secrets -- \
  env ERP_TOKEN=placeholder PROXY_PASSWORD=placeholder \
  "$agent_bin" --config "$root/deploy/examples/agent.toml" "${check_args[@]}" \
  >"$work/log/example-agent.log" 2>&1; then
  ok "deploy/examples/agent.toml accepted (outpost-agent ${check_args[*]})"
elif grep -q "unknown field" "$work/log/example-agent.log"; then
  echo "skip  deploy/examples/agent.toml: this binary predates the issue-5 keys" \
    "($(grep -o "unknown field: found \`[a-z_]*\`" "$work/log/example-agent.log" | head -n 1))"
else
  fail "deploy/examples/agent.toml: outpost-agent ${check_args[*]} refused it"
fi

# --- graceful stop ------------------------------------------------------------------------
kill -TERM "$agent_pid"
agent_status=0
wait "${pids[1]}" || agent_status=$?
kill -TERM "$relay_pid"
relay_status=0
wait "${pids[0]}" || relay_status=$?
pids=()
programs=()
[ "$agent_status" = 0 ] || fail "outpost-agent exited $agent_status after SIGTERM"
[ "$relay_status" = 0 ] || fail "outpost-relay exited $relay_status after SIGTERM"
ok "SIGTERM: agent and relay exited 0"

# --- what they wrote ----------------------------------------------------------------------
# The root filesystem was read-only, so these are the only places a write could land.
echo "      written by uid $uid (relative to $work):"
(cd "$work" && find data relay-tmp agent-tmp etc/tls example-tmp -mindepth 1 -printf '        %M %U:%G %p\n' | sort -k3)
foreign="$(cd "$work" && find data relay-tmp agent-tmp etc/tls example-tmp -mindepth 1 \( ! -uid "$uid" -o ! -gid "$gid" \) -print)"
[ -z "$foreign" ] || fail "files not owned by $uid:$gid: $foreign"
if grep -qi "read-only file system" "$work"/log/*; then
  fail "a process tried to write outside /tmp and its data directory"
fi
ok "nothing written outside /tmp and the data directory; no write refused"

echo
echo "check-sandbox: $passed passed, 0 failed"
