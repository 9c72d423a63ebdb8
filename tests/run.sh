#!/usr/bin/env bash
# Set up (once) and run the test suite: `bash tests/run.sh [unit|lab] [pytest args...]`.
# Both tiers by default; `unit` (tests/unit: no sockets, no sslyze, seconds) needs no apt packages.
# For the lab tier, installs what it needs when missing: Debian's nginx, prometheus (promtool), alertmanager (amtool),
# dnsmasq, chromium, docker-compose, systemd-analyze. Always: the Python deps (pinned by deploy/constraints.txt) in .venv.
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
echo "== ruff"; .venv/bin/ruff check scanner tests bench && .venv/bin/ruff format --check scanner tests bench
echo "== mypy"; .venv/bin/mypy scanner
echo "== pytest"; exec .venv/bin/python -m pytest "${paths[@]}" "$@"
