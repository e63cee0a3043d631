#!/usr/bin/env bash
# Set up (first run only) and start the inspection dashboard on the built-in demo data, with both models
# (PatchCore and EfficientAD) trained and evaluated on it, so Compare shows them side by side at once.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
export HF_HUB_OFFLINE=1
# EfficientAD trains with its defaults (the 40-image demo reaches image AUROC 1.0 in about 40 s on 2 cores,
# RESULTS.md cpu_speed). DEMO_EFFICIENTAD_STEPS=N trains it for N steps instead (the browser journey test's
# shortcut); the version's reason in the store then says so.
DEMO_EFFICIENTAD_STEPS=${DEMO_EFFICIENTAD_STEPS:-}
# Where the demo lives: core/settings.py's rule, the app's and the CLI's (INSPECT_DATA_ROOT / INSPECT_MODEL_STORE,
# else the repository's demo_data/ and models/; the browser journey test runs this script on throwaway folders).
DATA=$(.venv/bin/python -c 'from core import settings; print(settings.data_roots()[0])')
STORE=$(.venv/bin/python -c 'from core import settings; print(settings.model_store())')
if [ ! -d "$DATA/demo_metal" ]; then
  .venv/bin/python -m core demo --out "$DATA"
fi
for kind in patchcore efficientad; do
  if ! .venv/bin/python -m core versions --category demo_metal --model "$kind" --store "$STORE" >/dev/null 2>&1; then
    extra=()
    if [ "$kind" = efficientad ] && [ -n "$DEMO_EFFICIENTAD_STEPS" ]; then
      extra=(--steps "$DEMO_EFFICIENTAD_STEPS"
             --reason "trained with the demo's budget: $DEMO_EFFICIENTAD_STEPS steps (DEMO_EFFICIENTAD_STEPS)")
    fi
    .venv/bin/python -m core train --data "$DATA" --category demo_metal --model "$kind" --store "$STORE" "${extra[@]}"
    .venv/bin/python -m core evaluate --data "$DATA" --category demo_metal --model "$kind" --store "$STORE" >/dev/null
  fi
done
# 127.0.0.1 unless STREAMLIT_SERVER_ADDRESS or a later --server.address says otherwise (then a login is required).
exec .venv/bin/streamlit run app.py --server.address "${STREAMLIT_SERVER_ADDRESS:-127.0.0.1}" "$@"
