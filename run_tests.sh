#!/usr/bin/env bash
# Set up (first run only), lint (ruff), check the layers' import contracts (import-linter), type-check (mypy),
# and run the whole test suite, the real-browser tests included. Settings for all four are in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi
# PostgreSQL for tests/test_history.py (a throwaway server per session; its tests skip when none can be started)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null
fi
export HF_HUB_OFFLINE=1
.venv/bin/python -m ruff check .
.venv/bin/lint-imports --no-cache
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest -q "$@"
