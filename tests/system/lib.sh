# Helpers for the system tests in tests/system/*.sh: sourced, never run. They start the real
# outpost-relay and outpost-agent binaries inside a network namespace the test creates, so a
# test may bind 127.0.0.1:443 and install a firewall without touching the machine's own
# network, and they stop everything they started when the test exits, pass or fail.
#
# A test sources this file, then calls: make_netns, make_relay_state, start_relay, start_agent,
# agent_config, mcp_echo, wait_for, fw/fw6 (iptables inside the namespace), ok (print what was
# checked) and fail. Set KEEP_WORK=1 to keep the work directory (logs, configs) afterwards.
#
# Needs root (namespaces, iptables), iproute2, iptables, curl, and the binaries built by
# `cargo build --workspace --bins --locked` (in $CARGO_TARGET_DIR or target/).

set -euo pipefail
shopt -s inherit_errexit

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
test_name="$(basename "$0" .sh)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
relay_bin="$target_dir/debug/outpost-relay"
agent_bin="$target_dir/debug/outpost-agent"
tools="${MCP_TOOLS_DIR:-$root/.tools}"
everything="$tools/node_modules/@modelcontextprotocol/server-everything/dist/index.js"

# Hermetic: the caller's OUTPOST_* variables would configure the binaries, and proxy
# variables would route the agent and curl. Each test sets what it means to.
while read -r name; do unset "$name"; done < <(compgen -e | grep -E '^OUTPOST_|^(https?|all|no)_proxy$|^(HTTPS?|ALL|NO)_PROXY$' || true)

for file in "$relay_bin" "$agent_bin" "$everything"; do
  [ -e "$file" ] || { echo "[$test_name] missing $file: run scripts/setup-tools.sh and cargo build --workspace --bins --locked" >&2; exit 1; }
done

work="$(mktemp -d "${TMPDIR:-/tmp}/outpost-$test_name.XXXXXX")"
chmod 755 "$work"
netns=""
pids=()

say() { echo "[$test_name] $*"; }
ok() { echo "[$test_name] ok: $*"; }
fail() {
  echo "[$test_name] FAIL: $*" >&2
  exit 1
}

# Stops every process this test started (SIGTERM, then SIGKILL after 5 s), then anything
# still running inside the namespace, deletes the namespace and the work directory. On
# failure it prints the tail of every log first.
cleanup() {
  local rc=$? pid log
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$netns" ]; then
    # Whatever the processes above left behind (stdio servers, squid helpers) lives in the
    # namespace: it was started by this test.
    for pid in $(ip netns pids "$netns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$netns" 2>/dev/null || true
  fi
  if [ "$rc" != 0 ]; then
    for log in "$work"/*.log "$work"/*/*.log; do
      [ -s "$log" ] || continue
      echo "----- ${log#"$work"/} (last 30 lines)" >&2
      tail -n 30 "$log" | sed 's/\x1b\[[0-9;]*m//g' >&2
    done
  fi
  if [ "${KEEP_WORK:-0}" = 1 ]; then say "work directory kept: $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the namespace ------------------------------------------------------------------------

# Creates the namespace outpost-test-PID with only a loopback interface, and brings it up.
make_netns() {
  netns="outpost-test-$$"
  ip netns add "$netns"
  ip netns exec "$netns" ip link set lo up
}

# Runs a command inside the namespace.
in_ns() { ip netns exec "$netns" "$@"; }
# iptables and ip6tables inside the namespace.
fw() { ip netns exec "$netns" iptables -w "$@"; }
fw6() { ip netns exec "$netns" ip6tables -w "$@"; }

# Packets counted so far by the last rule of the namespace's IPv4 OUTPUT chain (the final
# DROP of every firewall these tests install).
dropped() { fw -L OUTPUT -v -n -x | awk 'NF { last = $1 } END { print last }'; }

# --- waiting --------------------------------------------------------------------------------

# wait_for FILE REGEX SECONDS [PID]: waits until a line of FILE matches REGEX (grep -E);
# fails early if PID has exited. Prints the matching line.
wait_for() {
  local file=$1 regex=$2 limit=$3 pid=${4:-} deadline
  deadline=$(( $(date +%s%N) + limit * 1000000000 ))
  while [ "$(date +%s%N)" -lt "$deadline" ]; do
    if grep -Eq -- "$regex" "$file" 2>/dev/null; then
      grep -E -m1 -- "$regex" "$file" | sed 's/\x1b\[[0-9;]*m//g'
      return 0
    fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      fail "process $pid exited before ${file##*/} showed /$regex/: $(tail -n 5 "$file" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g')"
    fi
    sleep 0.05
  done
  fail "no line matching /$regex/ in ${file##*/} within ${limit}s"
}

# What the agent logs when a dial hits tunnel.connect_timeout (3 s in agent_config), in the
# wording of today's agent ("connecting took longer than 3s") and of the one that names the
# step ("no progress within 3s while ...").
# shellcheck disable=SC2034 # used by the tests that source this file
timeout_3s='(connecting took longer than|no progress within) 3s'

# count FILE REGEX: how many lines match.
count() { grep -Ec -- "$2" "$1" 2>/dev/null || true; }

# Milliseconds since the epoch.
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# --- relay ----------------------------------------------------------------------------------

# Creates certificates (outpost-relay dev-certs: localhost, 127.0.0.1, ::1), the store with
# organisation `default`, a client key ($work/client.key) and an agent key for agent `edge`
# ($work/agent.key), as scripts/quickstart.sh does.
make_relay_state() {
  "$relay_bin" dev-certs --out "$work/tls" >/dev/null
  "$relay_bin" --data-dir "$work/data" init --org default >"$work/init.txt"
  (umask 077 && tail -n 1 "$work/init.txt" >"$work/client.key")
  rm "$work/init.txt"
  (umask 077 && "$relay_bin" --data-dir "$work/data" keys create --agent edge --quiet >"$work/agent.key")
  chmod 644 "$work/tls/ca.pem"
}

# start_relay NAME ADDR: a relay in the namespace on ADDR sharing $work/data (so the same
# keys work on every relay), logging to $work/NAME.log. Sets relay_pid.
start_relay() {
  local name=$1 addr=$2
  cat >"$work/$name.toml" <<TOML
listen = "$addr"
data_dir = "$work/data"

[tls]
cert_file = "$work/tls/cert.pem"
key_file = "$work/tls/key.pem"

[limits]
shutdown_grace = "2s"
TOML
  # Not in_ns: a function would run in a subshell, and $! must be the relay itself.
  ip netns exec "$netns" "$relay_bin" --config "$work/$name.toml" serve >"$work/$name.out" 2>"$work/$name.log" &
  relay_pid=$!
  pids+=("$relay_pid")
  wait_for "$work/$name.out" "listening on $addr" 10 "$relay_pid" >/dev/null
}

# --- agent ----------------------------------------------------------------------------------

# agent_config FILE RELAY_URL [TOP_LEVEL_TOML...]: an agent configuration for agent `edge`
# serving server-everything over stdio as `everything`, trusting the dev CA, with a 3 s
# connect timeout and fast retries. Extra lines go at the top level (before any table).
agent_config() {
  local file=$1 url=$2 line
  shift 2
  {
    echo "relay_url = \"$url\""
    echo "key_file = \"$work/agent.key\""
    echo "ca_file = \"$work/tls/ca.pem\""
    for line in "$@"; do echo "$line"; done
    cat <<TOML

[tunnel]
connect_timeout = "3s"
reconnect_min = "200ms"
reconnect_max = "1s"
shutdown_grace = "2s"

[servers.everything]
type = "stdio"
command = "$(command -v node)"
args = ["$everything", "stdio"]
inherit_env = ["PATH", "HOME"]
TOML
  } >"$file"
}

# start_agent NAME CONFIG [VAR=VALUE...]: an agent in the namespace with the given extra
# environment, logging to $work/NAME.log. Sets agent_pid.
start_agent() {
  local name=$1 config=$2
  shift 2
  (
    for assignment in "$@"; do export "${assignment?}"; done
    exec ip netns exec "$netns" "$agent_bin" --config "$config"
  ) 2>"$work/$name.log" &
  agent_pid=$!
  pids+=("$agent_pid")
}

# stop PID: SIGTERM, waits (10 s at most, then SIGKILL) and sets stopped_rc to the exit code.
# Not in $(...): only this shell can wait for its children.
stop() {
  local pid=$1 kept=() other
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  stopped_rc=0
  # shellcheck disable=SC2034 # read by the tests that source this file
  wait "$pid" || stopped_rc=$?
  # Reaped: its number may be reused by another process, which cleanup must not signal.
  for other in "${pids[@]}"; do [ "$other" = "$pid" ] || kept+=("$other"); done
  pids=("${kept[@]}")
}

# --- client ---------------------------------------------------------------------------------

# mcp_echo MESSAGE [CURL_ARGS...]: from inside the namespace, as an MCP client (curl, as in
# scripts/quickstart.sh): initialize a session at https://localhost:443/mcp/edge/everything,
# call the echo tool with MESSAGE, end the session; prints the tool's answer.
mcp_echo() {
  local message=$1 url="https://localhost:443/mcp/edge/everything" session answer
  shift
  local curl=(in_ns curl -sS --fail --max-time 10 --cacert "$work/tls/ca.pem" "$@"
    -H "Authorization: Bearer $(cat "$work/client.key")" -H 'Content-Type: application/json'
    -H 'Accept: application/json, text/event-stream')
  "${curl[@]}" -D "$work/headers.txt" -o /dev/null "$url" \
    -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"system-test","version":"1"}}}'
  session="$(sed -n 's/^mcp-session-id: *//ip' "$work/headers.txt" | tr -d '\r')"
  [ -n "$session" ] || fail "no Mcp-Session-Id from the relay"
  "${curl[@]}" -H "Mcp-Session-Id: $session" -o /dev/null "$url" \
    -d '{"jsonrpc":"2.0","method":"notifications/initialized"}'
  answer="$("${curl[@]}" -H "Mcp-Session-Id: $session" "$url" \
    -d "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"message\":\"$message\"}}}" |
    sed -n 's/^data: //p')"
  "${curl[@]}" -X DELETE -H "Mcp-Session-Id: $session" -o /dev/null "$url" || true
  echo "$answer"
}
