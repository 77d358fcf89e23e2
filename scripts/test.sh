#!/usr/bin/env bash
# Runs every test: installs the real MCP servers and clients the tests use, builds the
# binaries the end-to-end tests start, then runs the whole workspace's tests.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/setup-tools.sh
cargo build --workspace --bins --locked
cargo nextest run --workspace --locked --no-fail-fast "$@"
