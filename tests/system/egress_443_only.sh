#!/usr/bin/env bash
# Outpost works behind a firewall that lets out only TCP to the relay on port 443 (and DNS),
# and needs no inbound port: in a network namespace with such an iptables OUTPUT policy, the
# relay listens on 127.0.0.1:443, the agent connects to it and a client's tool call returns
# server-everything's echo through the tunnel. Then the firewall is shown to be real: the same
# agent configuration pointed at a relay on port 8443 of the same namespace times out (the
# firewall drops it; that relay answered before the firewall was installed), and `ss` shows
# the agent listening on no port at all.
#
# Needs root. Run by scripts/system-tests.sh.
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Egress policy: replies to allowed connections, TCP to the relay at 127.0.0.1:443, and DNS;
# every other new connection is dropped silently, as a default-deny firewall does. IPv6 is
# closed too, with resets for TCP so "localhost" falls back to 127.0.0.1 without waiting.
install_firewall() {
  fw -P OUTPUT DROP
  fw -A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  fw -A OUTPUT -p tcp -d 127.0.0.1 --dport 443 -j ACCEPT
  fw -A OUTPUT -p udp --dport 53 -j ACCEPT
  fw -A OUTPUT -p tcp --dport 53 -j ACCEPT
  fw -A OUTPUT -j DROP
  fw6 -P OUTPUT DROP
  fw6 -A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  fw6 -A OUTPUT -p tcp -j REJECT --reject-with tcp-reset
  fw6 -A OUTPUT -j DROP
}

readyz() { # readyz PORT: the relay's /readyz status code from inside the namespace (000: none)
  in_ns curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$work/tls/ca.pem" "https://localhost:$1/readyz" || true
}

main() {
  make_netns
  make_relay_state
  start_relay relay443 127.0.0.1:443
  local relay443=$relay_pid
  start_relay relay8443 127.0.0.1:8443
  local relay8443=$relay_pid
  if [ "$(readyz 443)" != 200 ] || [ "$(readyz 8443)" != 200 ]; then
    fail "the relays do not answer before the firewall"
  fi
  ok "relays on 127.0.0.1:443 and 127.0.0.1:8443 both answer /readyz before the firewall is installed"

  install_firewall
  [ "$(readyz 8443)" = 000 ] || fail "port 8443 is still reachable through the firewall"
  ok "firewall installed (OUTPUT policy DROP; allowed: established, tcp 127.0.0.1:443, dns); 8443 now unreachable"

  agent_config "$work/agent.toml" "wss://localhost:443"
  start_agent agent443 "$work/agent.toml"
  local agent443=$agent_pid
  wait_for "$work/agent443.log" "tunnel established" 20 "$agent443" >/dev/null
  ok "the agent reached the relay on 443 through the firewall (tunnel established)"

  local message="through the firewall on 443 only $$" answer
  answer="$(mcp_echo "$message")"
  case "$answer" in
    *"Echo: $message"*) ok "a client's tools/call echo came back through relay and agent: ${answer:0:160}" ;;
    *) fail "unexpected answer to tools/call echo: $answer" ;;
  esac

  # The agent listens on nothing: every listening socket in the namespace is a relay's.
  local listeners owners pid
  listeners="$(in_ns ss -Hltunp)"
  owners="$(grep -o 'pid=[0-9]*' <<<"$listeners" | cut -d= -f2 | sort -u)"
  for pid in $owners; do
    [ "$pid" = "$relay443" ] || [ "$pid" = "$relay8443" ] ||
      fail "a listening socket belongs to pid $pid ($(ps -o comm= -p "$pid")), not a relay:"$'\n'"$listeners"
  done
  grep -q "pid=$agent443," <<<"$listeners" && fail "the agent listens: $listeners"
  [ "$(wc -l <<<"$listeners")" = 2 ] || fail "expected exactly the two relay listeners:"$'\n'"$listeners"
  ok "ss -ltunp: the only listeners are the two relays; the agent (pid $agent443) has no listening socket"
  local sockets
  sockets="$(in_ns ss -Htuanp | grep "pid=$agent443," || true)"
  [ -n "$sockets" ] || fail "the agent has no socket at all"
  awk '$1 != "tcp" || $2 != "ESTAB" || $6 != "127.0.0.1:443" { bad = 1 } END { exit bad }' <<<"$sockets" ||
    fail "the agent has a socket other than its tunnel to 127.0.0.1:443:"$'\n'"$sockets"
  ok "ss -tuanp: the agent's only socket is its established tunnel to 127.0.0.1:443"

  # The same configuration against the relay on 8443: the firewall drops it.
  local before after error
  before="$(dropped)"
  start_agent agent8443 "$work/agent.toml" "OUTPOST_RELAY_URL=wss://localhost:8443"
  local agent8443=$agent_pid
  error="$(wait_for "$work/agent8443.log" "cannot establish the tunnel" 10 "$agent8443")"
  grep -Eq "$timeout_3s" <<<"$error" || fail "expected a connect timeout: $error"
  wait_for "$work/agent8443.log" "reconnecting after a delay" 5 "$agent8443" >/dev/null
  grep -q "tunnel established" "$work/agent8443.log" && fail "the agent connected to 8443"
  kill -0 "$agent8443" || fail "the agent gave up instead of retrying"
  after="$(dropped)"
  [ "$after" -gt "$before" ] || fail "the firewall's DROP rule counted nothing ($before -> $after)"
  ok "the same agent config aimed at 8443 times out (\"${error#*err=}\"), keeps retrying; the DROP rule counted $((after - before)) packets"

  stop "$agent8443"
  stop "$agent443"
  [ "$stopped_rc" = 0 ] || fail "the agent exited with $stopped_rc on SIGTERM"
  ok "the agent exits 0 on SIGTERM"
}

main "$@"
