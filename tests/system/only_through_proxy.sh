#!/usr/bin/env bash
# Outpost works where the only way out is an authenticating HTTP proxy, and fails clearly
# where the proxy says no. In a network namespace: the relay on 127.0.0.1:443, squid on
# 127.0.0.1:3128 with basic auth (basic_ncsa_auth, an htpasswd file made here) allowing
# CONNECT to port 443 only, and iptables rules under which only squid's user may reach
# 127.0.0.1:443 while everyone else may reach only the proxy ports. Two broken proxies stand
# beside squid: one that accepts and never answers (3129), one that reads the request and
# hangs up (3130). Checked:
#   setup   squid lets an authenticated client through to the relay, answers 407 to a wrong
#           password and 403 to CONNECT to port 8443; without the proxy, 443 is unreachable.
#   (b)     an agent without proxy settings cannot connect: connect timeout, retries, the
#           firewall counts the drops, squid sees nothing.
#   (a)     `proxy` + `proxy_password = "${env:...}"`: the tunnel comes up through squid, a
#           client's tool call returns the echo, the agent's only socket is to the proxy, and
#           squid's access log shows the agent's CONNECT localhost:443.
#   (a-env) HTTPS_PROXY with credentials in the URL, no `proxy` key: the same.
#   (f)     `no_proxy = ["localhost"]`: the agent goes direct, and so is blocked.
#   (c)     a wrong password: an error that says 407, retries, still running.
#   (d)     squid's ACL denies CONNECT to 8443: an error that says 403, retries.
#   (e)     a proxy that says nothing: a timeout error within tunnel.connect_timeout (3 s),
#           then a retry; a proxy that hangs up: an error naming the proxy, then a retry.
#
# The agent's proxy keys (`proxy`, `proxy_password`, `no_proxy`, and HTTPS_PROXY/NO_PROXY when
# `proxy` is unset) are what issue 5 specifies; an agent without them fails at (a), with a
# message saying so. Needs root. Run by scripts/system-tests.sh.
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

proxy_user=proxy # squid's cache_effective_user on Debian
password="proxy-pass-$$-$RANDOM"

# squid on 127.0.0.1:3128 in the namespace, workers running as $proxy_user.
start_squid() {
  local dir="$work/squid"
  mkdir -p "$dir"
  chown "$proxy_user:" "$dir"
  {
    printf 'agent:%s\n' "$(openssl passwd -apr1 "$password")"
    printf 'client:%s\n' "$(openssl passwd -apr1 "$password")"
  } >"$dir/htpasswd"
  chmod 644 "$dir/htpasswd"
  cat >"$dir/squid.conf" <<CONF
http_port 127.0.0.1:3128
cache_effective_user $proxy_user
pid_filename $dir/squid.pid
cache_log $dir/cache.log
access_log stdio:$dir/access.log squid
coredump_dir $dir
cache deny all
cache_mem 8 MB
pinger_enable off
shutdown_lifetime 1 seconds
visible_hostname outpost-test-proxy
# Nothing leaves the namespace: names come from /etc/hosts, no resolver answers here.
dns_nameservers 127.0.0.1

auth_param basic program /usr/lib/squid/basic_ncsa_auth $dir/htpasswd
auth_param basic children 2 startup=1
auth_param basic realm outpost-test
acl SSL_ports port 443
acl CONNECT method CONNECT
acl authenticated proxy_auth REQUIRED
http_access deny !CONNECT
http_access deny CONNECT !SSL_ports
http_access allow authenticated
http_access deny all
CONF
  ip netns exec "$netns" squid -N -f "$dir/squid.conf" >"$work/squid.log" 2>&1 &
  pids+=($!)
  wait_for "$dir/cache.log" "Accepting HTTP Socket connections" 15 $! >/dev/null
}

# The two broken proxies of case (e): 3129 accepts and never answers, 3130 reads the request
# and closes the connection.
start_broken_proxies() {
  ip netns exec "$netns" python3 -c '
import socket, sys, threading
def serve(port, hang_up):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen(16)
    held = []
    while True:
        c, _ = s.accept()
        if hang_up:
            c.recv(4096)
            c.close()
        else:
            held.append(c)
threading.Thread(target=serve, args=(3130, True), daemon=True).start()
print("listening", flush=True)
serve(3129, False)
' >"$work/broken-proxies.log" 2>&1 &
  pids+=($!)
  wait_for "$work/broken-proxies.log" "listening" 10 $! >/dev/null
}

# Only squid's user reaches the relay; everyone reaches the proxy ports; DNS; nothing else.
install_firewall() {
  fw -P OUTPUT DROP
  fw -A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  fw -A OUTPUT -p tcp -d 127.0.0.1 --dport 443 -m owner --uid-owner "$proxy_user" -j ACCEPT
  fw -A OUTPUT -p tcp -d 127.0.0.1 --dport 3128:3130 -j ACCEPT
  fw -A OUTPUT -p udp --dport 53 -j ACCEPT
  fw -A OUTPUT -p tcp --dport 53 -j ACCEPT
  fw -A OUTPUT -j DROP
  fw6 -P OUTPUT DROP
  fw6 -A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  fw6 -A OUTPUT -p tcp -j REJECT --reject-with tcp-reset
  fw6 -A OUTPUT -j DROP
}

access_log() { cat "$work/squid/access.log" 2>/dev/null || true; }

# via_proxy USER:PASSWORD URL: the proxy's answer to curl's CONNECT (000: none), and the
# relay's status (000: none), as "CONNECT/STATUS".
via_proxy() {
  in_ns curl -s -o /dev/null -w '%{http_connect}/%{http_code}' --max-time 3 --cacert "$work/tls/ca.pem" \
    -x http://127.0.0.1:3128 -U "$1" "$2" || true
}

check_setup() {
  [ "$(via_proxy "client:$password" https://localhost:443/readyz)" = 200/200 ] ||
    fail "a client cannot reach the relay through squid"
  ok "through squid with the right password, a client reaches the relay (CONNECT 200, /readyz 200)"
  local direct
  direct="$(in_ns curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$work/tls/ca.pem" https://localhost:443/readyz || true)"
  [ "$direct" = 000 ] || fail "the relay is reachable without the proxy ($direct)"
  ok "without the proxy, 127.0.0.1:443 is unreachable (firewall drop)"
  [ "$(via_proxy "client:wrong-$password" https://localhost:443/readyz)" = 407/000 ] ||
    fail "squid did not answer 407 to a wrong password"
  ok "squid answers a wrong password with 407"
  [ "$(via_proxy "client:$password" https://localhost:8443/readyz)" = 403/000 ] ||
    fail "squid did not answer 403 to CONNECT localhost:8443"
  ok "squid's ACL answers CONNECT to port 8443 with 403"
}

# expect_failure NAME REGEX WITHIN_MS [second]: the agent NAME logs "cannot establish the
# tunnel" within WITHIN_MS of its start with an error matching REGEX (grep -Ei), logs a retry
# and is still running; with "second", a second attempt fails too. Sets error (the message)
# and elapsed (ms from start to the first failure).
expect_failure() {
  local name=$1 regex=$2 within=$3 second=${4:-} log="$work/$1.log" line
  line="$(wait_for "$log" "cannot establish the tunnel" $(((within + 999) / 1000 + 5)) "$agent_pid")"
  elapsed=$(($(now_ms) - started))
  grep -Eiq -- "$regex" <<<"$line" || fail "$name: the error does not match /$regex/: $line"
  [ "$elapsed" -le "$within" ] || fail "$name: the error took ${elapsed} ms, more than ${within} ms"
  wait_for "$log" "reconnecting after a delay" 5 "$agent_pid" >/dev/null
  if [ -n "$second" ]; then
    for _ in $(seq 1 100); do [ "$(count "$log" "cannot establish the tunnel")" -ge 2 ] && break; sleep 0.05; done
    [ "$(count "$log" "cannot establish the tunnel")" -ge 2 ] || fail "$name: no second attempt"
  fi
  grep -q "tunnel established" "$log" && fail "$name: the agent connected"
  kill -0 "$agent_pid" 2>/dev/null || fail "$name: the agent exited instead of retrying"
  stop "$agent_pid"
  error="${line#*err=}"
  error="${error%% [a-z_]*=*}"
}

# run_agent NAME CONFIG [VAR=VALUE...]: starts an agent and notes when.
run_agent() {
  started=$(now_ms)
  start_agent "$@"
}

# shellcheck disable=SC2016 # ${env:...} is the agent's reference syntax, not the shell's
proxy_lines=('proxy = "http://agent@127.0.0.1:3128"' 'proxy_password = "${env:PROXY_PASSWORD}"')

case_b_direct_is_blocked() {
  local before after squid_lines
  agent_config "$work/direct.toml" "wss://localhost:443"
  before="$(dropped)"
  squid_lines="$(access_log | wc -l)"
  run_agent direct "$work/direct.toml"
  expect_failure direct "$timeout_3s" 4500
  after="$(dropped)"
  [ "$after" -gt "$before" ] || fail "(b): the DROP rule counted nothing"
  [ "$(access_log | wc -l)" = "$squid_lines" ] || fail "(b): squid saw the direct attempt"
  ok "(b) without proxy settings the agent cannot connect: \"$error\", retries; $((after - before)) packets dropped; squid saw nothing"
}

# An agent that predates proxy support refuses the `proxy` key as unknown: say so plainly.
require_proxy_support() {
  agent_config "$work/probe.toml" "wss://localhost:443" "${proxy_lines[@]}"
  local out
  out="$(PROXY_PASSWORD=x in_ns "$agent_bin" --config "$work/probe.toml" check 2>&1 || true)"
  if grep -q "unknown field" <<<"$out"; then
    fail "this outpost-agent does not know the proxy keys of issue 5 (proxy support not merged yet): $out"
  fi
}

case_a_through_squid() {
  agent_config "$work/proxied.toml" "wss://localhost:443" "${proxy_lines[@]}"
  run_agent proxied "$work/proxied.toml" "PROXY_PASSWORD=$password"
  local agent=$agent_pid
  wait_for "$work/proxied.log" "tunnel established" 15 "$agent" >/dev/null
  ok "(a) with proxy and proxy_password from \${env:PROXY_PASSWORD} the tunnel comes up"
  local message="only through the proxy $$" answer sockets
  answer="$(mcp_echo "$message" -x http://127.0.0.1:3128 -U "client:$password")"
  [[ "$answer" == *"Echo: $message"* ]] || fail "(a): unexpected answer: $answer"
  ok "(a) a client's tools/call echo came back through squid, relay and agent"
  sockets="$(in_ns ss -Htuanp | grep "pid=$agent," || true)"
  awk '$1 != "tcp" || $2 != "ESTAB" || $6 != "127.0.0.1:3128" { bad = 1 } END { exit bad }' <<<"$sockets" ||
    fail "(a): the agent has a socket other than to the proxy:"$'\n'"$sockets"
  ok "(a) the agent's only socket is to the proxy, 127.0.0.1:3128"
  grep -q "$password" "$work/proxied.log" && fail "(a): the proxy password is in the agent's log"
  stop "$agent"
  [ "$stopped_rc" = 0 ] || fail "(a): the agent exited with $stopped_rc"
  # squid logs a tunnel when it closes.
  wait_for "$work/squid/access.log" "TCP_TUNNEL/200 .* CONNECT localhost:443 agent " 5 >/dev/null
  ok "(a) squid's access log: $(grep -E 'CONNECT localhost:443 agent ' "$work/squid/access.log" | grep TCP_TUNNEL | tail -n 1 | awk '{print $4, $6, $7, $8, $9}'); the password is not in the agent's log"
}

case_a_env() {
  agent_config "$work/env.toml" "wss://localhost:443"
  run_agent env "$work/env.toml" "HTTPS_PROXY=http://agent:$password@127.0.0.1:3128"
  wait_for "$work/env.log" "tunnel established" 15 "$agent_pid" >/dev/null
  grep -q "$password" "$work/env.log" && fail "(a-env): the proxy password is in the agent's log"
  stop "$agent_pid"
  ok "(a-env) HTTPS_PROXY=http://agent:***@127.0.0.1:3128 without a proxy key: the tunnel comes up"
}

case_f_no_proxy() {
  local squid_lines
  agent_config "$work/noproxy.toml" "wss://localhost:443" "${proxy_lines[@]}" 'no_proxy = ["localhost"]'
  squid_lines="$(grep -c ' agent ' "$work/squid/access.log" || true)"
  run_agent noproxy "$work/noproxy.toml" "PROXY_PASSWORD=$password"
  expect_failure noproxy "$timeout_3s" 4500
  [ "$(grep -c ' agent ' "$work/squid/access.log" || true)" = "$squid_lines" ] || fail "(f): the agent used the proxy"
  ok "(f) no_proxy = [\"localhost\"]: the agent dials directly, and the firewall stops it: \"$error\""
}

case_c_wrong_password() {
  agent_config "$work/wrongpw.toml" "wss://localhost:443" "${proxy_lines[@]}"
  run_agent wrongpw "$work/wrongpw.toml" "PROXY_PASSWORD=wrong-$password"
  expect_failure wrongpw "407" 4500 second
  ok "(c) wrong proxy password: \"$error\", retried, still running"
}

case_d_denied() {
  agent_config "$work/denied.toml" "wss://localhost:8443" "${proxy_lines[@]}"
  run_agent denied "$work/denied.toml" "PROXY_PASSWORD=$password"
  expect_failure denied "403" 4500 second
  ok "(d) squid's ACL denies CONNECT localhost:8443: \"$error\", retried"
}

case_e_silent_proxy() {
  agent_config "$work/silent.toml" "wss://localhost:443" 'proxy = "http://127.0.0.1:3129"'
  run_agent silent "$work/silent.toml"
  expect_failure silent "$timeout_3s|timed? ?out|timeout" 4500
  ok "(e) a proxy that accepts and says nothing: \"$error\" after $((elapsed)) ms (connect_timeout 3s), retried"
}

case_e_hang_up_proxy() {
  agent_config "$work/hangup.toml" "wss://localhost:443" 'proxy = "http://127.0.0.1:3130"'
  run_agent hangup "$work/hangup.toml"
  expect_failure hangup "proxy|127\.0\.0\.1:3130" 4500 second
  ok "(e) a proxy that hangs up: \"$error\", retried"
}

main() {
  make_netns
  make_relay_state
  start_relay relay 127.0.0.1:443
  start_squid
  start_broken_proxies
  install_firewall
  ok "namespace: relay on 127.0.0.1:443, squid on 127.0.0.1:3128 (basic auth, CONNECT to 443 only), firewall: only uid $proxy_user reaches :443"
  check_setup
  case_b_direct_is_blocked
  require_proxy_support
  case_a_through_squid
  case_a_env
  case_f_no_proxy
  case_c_wrong_password
  case_d_denied
  case_e_silent_proxy
  case_e_hang_up_proxy
}

main "$@"
