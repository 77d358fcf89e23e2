#!/usr/bin/env bash
# Runs the system tests, tests/system/*.sh: each starts the real relay and agent inside a
# network namespace of its own, with iptables rules (and squid) in it, and checks what a
# firewall admin relies on. They need root (network namespaces, iptables, port 443 inside
# the namespace); without root this script says loudly that it skipped them and exits 0.
#
# Installs what the tests need (Debian packages iproute2, iptables, squid, openssl, curl; the
# MCP tools through scripts/setup-tools.sh), builds the binaries, runs each test with a time
# limit, prints PASS or FAIL for each and a closing "N passed, N failed" line, and exits
# non-zero if any failed. Arguments name tests to run (e.g. egress_443_only); default: all.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [ "$(id -u)" != 0 ]; then
  cat <<'TEXT'
########################################################################################
##  system-tests: SKIPPED. They need root (network namespaces, iptables, port 443).     ##
##  Nothing in tests/system/ was run. Run scripts/system-tests.sh as root (CI does).    ##
########################################################################################
TEXT
  exit 0
fi

apt_install() {
  local policy=/usr/sbin/policy-rc.d made=false
  # squid's package starts a squid on 0.0.0.0:3128 where an init system runs; the tests
  # start their own inside a namespace. A policy-rc.d that exits 101 forbids service starts.
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made=true
  fi
  echo "system-tests: installing $* with apt-get"
  local rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >/dev/null || rc=$?
  if $made; then rm -f "$policy"; fi
  return "$rc"
}
missing=()
for need in ip:iproute2 ss:iproute2 iptables:iptables ip6tables:iptables squid:squid openssl:openssl curl:curl setpriv:util-linux; do
  command -v "${need%%:*}" >/dev/null 2>&1 || missing+=("${need#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
  apt_install "${packages[@]}"
fi
scripts/setup-tools.sh
cargo build --workspace --bins --locked --quiet

if [ "$#" -gt 0 ]; then
  tests=()
  for name in "$@"; do tests+=("tests/system/${name%.sh}.sh"); done
else
  tests=()
  for file in tests/system/*.sh; do [ "$(basename "$file")" = lib.sh ] || tests+=("$file"); done
fi

passed=0
failed=()
for test in "${tests[@]}"; do
  name="$(basename "$test" .sh)"
  echo "=== $name"
  start=$SECONDS
  # 120 s each at most; the test's own trap stops its processes and namespace on SIGTERM.
  if timeout -k 10 120 bash "$test"; then
    echo "PASS $name ($((SECONDS - start)) s)"
    passed=$((passed + 1))
  else
    echo "FAIL $name ($((SECONDS - start)) s)"
    failed+=("$name")
  fi
done
echo
[ "${#failed[@]}" = 0 ] || echo "system-tests: failed: ${failed[*]}"
echo "system-tests: $passed passed, ${#failed[@]} failed"
[ "${#failed[@]}" = 0 ]
