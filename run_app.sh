#!/usr/bin/env bash
# Set up (first run only) and start the inspection dashboard on the built-in demo data.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
export HF_HUB_OFFLINE=1
if [ ! -d demo_data/demo_metal ]; then
  .venv/bin/python -m core demo --out demo_data
fi
if ! .venv/bin/python -m core versions --category demo_metal --model patchcore --store models >/dev/null 2>&1; then
  .venv/bin/python -m core train --data demo_data --category demo_metal --model patchcore --store models
  .venv/bin/python -m core evaluate --data demo_data --category demo_metal --model patchcore --store models >/dev/null
fi
exec .venv/bin/streamlit run app.py "$@"
