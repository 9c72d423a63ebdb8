#!/usr/bin/env bash
# Set up (once) and run the daemon on the bundled config: `bash deploy/run.sh [tls-scanner flags...]`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  apt-get update -qq && apt-get install -y -qq python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -c deploy/constraints.txt .
exec .venv/bin/tls-scanner --config config/endpoints.yaml "$@"
