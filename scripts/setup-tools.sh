#!/usr/bin/env bash
# Installs the real MCP servers and clients the quickstart and tests use, into .tools/
# (or $MCP_TOOLS_DIR): npm packages from tools/npm-packages.txt and a Python
# virtualenv from tools/requirements.txt. Idempotent: does nothing when up to date.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${MCP_TOOLS_DIR:-$root/.tools}"
mkdir -p "$tools"

# The machine image ships these; a new machine without them gets them from Debian.
apt_install() {
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup-tools: installing $* with apt-get"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}
need() {
  command -v "$1" >/dev/null 2>&1 || apt_install "$2"
  command -v "$1" >/dev/null 2>&1 || { echo "setup-tools: $1 is required but not installed" >&2; exit 1; }
}
need node nodejs
need npm npm
need python3 python3
need curl curl
need openssl openssl

stamp() { sha256sum "$1" | cut -d' ' -f1; }

npm_list="$root/tools/npm-packages.txt"
if [ "$(cat "$tools/.npm-stamp" 2>/dev/null)" != "$(stamp "$npm_list")" ]; then
  echo "setup-tools: installing npm packages into $tools"
  mapfile -t packages < <(grep -v '^\s*#' "$npm_list" | grep -v '^\s*$')
  npm install --prefix "$tools" --no-audit --no-fund --loglevel=error "${packages[@]}" >/dev/null
  stamp "$npm_list" >"$tools/.npm-stamp"
fi

requirements="$root/tools/requirements.txt"
if [ "$(cat "$tools/.pip-stamp" 2>/dev/null)" != "$(stamp "$requirements")" ] || [ ! -x "$tools/venv/bin/python" ]; then
  echo "setup-tools: installing Python packages into $tools/venv"
  python3 -m venv "$tools/venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$tools/venv"; }
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  stamp "$requirements" >"$tools/.pip-stamp"
fi

requirements2="$root/tools/requirements-mcp2.txt"
if [ "$(cat "$tools/.pip2-stamp" 2>/dev/null)" != "$(stamp "$requirements2")" ] || [ ! -x "$tools/venv-mcp2/bin/python" ]; then
  echo "setup-tools: installing the 2026-era Python SDK into $tools/venv-mcp2"
  python3 -m venv "$tools/venv-mcp2"
  "$tools/venv-mcp2/bin/pip" install --quiet --disable-pip-version-check -r "$requirements2"
  stamp "$requirements2" >"$tools/.pip2-stamp"
fi

# The official MCP conformance suites and node 22 for their CLI.
"$root/scripts/conformance.sh" setup
