#!/usr/bin/env bash
# Set up (once) and run tls-scanner from this checkout: `bash deploy/run.sh [tls-scanner flags and targets...]`.
# Without flags: the daemon on config/endpoints.yaml, on :9913. Runs from the checkout's root, so relative paths in
# the arguments are taken from there. The project is installed (editable) into .venv only when .venv/.run-sh-stamp
# does not hold the hash of pyproject.toml and deploy/constraints.txt, so a second start installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  apt-get update -qq && apt-get install -y -qq python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.run-sh-stamp
wanted="$(cat pyproject.toml deploy/constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ] || [ ! -x .venv/bin/tls-scanner ]; then
  echo "run.sh: installing tls-scanner into .venv" >&2
  .venv/bin/pip install -q --disable-pip-version-check -c deploy/constraints.txt -e .
  echo "$wanted" >"$stamp"
fi

# Say where the daemon serves (not for --once, --check-config, --help or --version, whose output is theirs).
listen=:9913 web_config= daemon=1 previous=
for arg in "$@"; do
  case "$previous" in
    --web.listen-address) listen=$arg ;;
    --web.config.file) web_config=$arg ;;
  esac
  case "$arg" in
    --once | --check-config | -h | --help | --version) daemon= ;;
    --web.listen-address=*) listen=${arg#*=} ;;
    --web.config.file=*) web_config=${arg#*=} ;;
  esac
  previous=$arg
done
if [ -n "$daemon" ]; then
  host=${listen%:*} port=${listen##*:}
  case "$host" in
    '' | 0.0.0.0 | '[::]') host=localhost ;;
  esac
  scheme=http
  if [ -n "$web_config" ] && grep -Eq '^[[:space:]]*cert_file:' "$web_config" 2>/dev/null; then
    scheme=https
  fi
  echo "run.sh: tls-scanner serves $scheme://$host:$port/ (metrics at /metrics); stop it with Ctrl-C" >&2
fi
exec .venv/bin/tls-scanner "$@"
