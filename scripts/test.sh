#!/usr/bin/env bash
# Runs every test: installs the real MCP servers and clients the tests use, builds the
# binaries the end-to-end tests start, runs the whole workspace's tests, then the checks
# that need more than a test process: the system tests (network namespaces, iptables,
# squid; root only), the deployment artifacts' linters and validators, and the release
# binaries run the way the container images run them (uid 1000, no capabilities,
# read-only root).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# A one-off build keeps no incremental state: smaller and a little faster (CI, fresh clones).
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

scripts/setup-tools.sh
cargo build --workspace --bins --locked
status=0
cargo nextest run --workspace --locked --no-fail-fast "$@" || status=$?
scripts/system-tests.sh || status=$?
scripts/check-artifacts.sh || status=$?
if [ "$(id -u)" = 0 ]; then
  cargo build --release --locked -p outpost-relay -p outpost-agent
  scripts/check-sandbox.sh target/release || status=$?
else
  echo "test.sh: check-sandbox skipped (needs root to switch to uid 1000)"
fi
exit "$status"
