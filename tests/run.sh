#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine (venv, the package with all extras,
# Debian's Chromium for the real-browser test) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[all]"
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo -n"
  ( $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null ) \
    || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
.venv/bin/python -m ipykernel install --user --name python3 >/dev/null 2>&1 || true
exec .venv/bin/python -m pytest -q "$@"
