"""Dashboard responsiveness: first render of each page, and re-render after a threshold change,
with 500 evaluation images and two trained models (PatchCore and EfficientAD).

    python benchmarks/bench_dashboard.py

Times are server-side script runs measured with streamlit's AppTest (what the user waits for before the
browser paints). As on a running server, model and data caches are process-wide: a new session's first render
of a page includes whatever that page loads first (Compare loads and runs both models on its images).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, write_section

from core.data.dataset import load_category
from core.data.demo import make_demo_dataset
from core.store import lifecycle as det
from core.store.model_store import ModelStore

PAGES = ("models", "inspect", "thresholds", "compare", "similar", "annotate")


def main() -> int:
    from streamlit.testing.v1 import AppTest

    work = Path(tempfile.mkdtemp(prefix="bench-dash-"))
    make_demo_dataset(work / "data", n_train=30, n_test_good=300, n_per_defect=100, size=64, seed=1)
    data = load_category(work / "data", "demo_metal")
    store = ModelStore(work / "models")
    for kind, settings in (("patchcore", {"height": 64, "width": 64, "coreset_ratio": 0.1}),
                           ("efficientad", {"steps": 20})):
        det.train(data, kind, settings, store)
        det.run_evaluation(det.load(store.current("demo_metal", kind)), data)
    os.environ["INSPECT_DATA_ROOT"] = str(work / "data")
    os.environ["INSPECT_MODEL_STORE"] = str(store.root)
    n_eval = len(data.test)

    first = {}
    for name in PAGES:
        runs = []
        for _ in range(5):
            at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
            at.run()
            at.switch_page(f"pages/{name}.py")
            t0 = time.perf_counter()
            at.run()
            runs.append(time.perf_counter() - t0)
            assert not at.exception, at.exception
        first[name] = (runs[0], statistics.median(runs[1:]))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/thresholds.py")
    at.run()
    slider = at.slider[0]
    rerender = []
    for i in range(7):
        at.slider[0].set_value(slider.min + (slider.max - slider.min) * (i + 1) / 8)
        t0 = time.perf_counter()
        at.run()
        rerender.append(time.perf_counter() - t0)
    lines = [f"Machine: {machine()}. {n_eval} evaluation images, PatchCore and EfficientAD both trained and evaluated. "
             "Server-side script time (AppTest); caches are process-wide as on a running server.", "",
             "| page | first render in a new session (s) | re-render (s, median of 4) |", "|---|---|---|"]
    for name, (cold, warm) in first.items():
        lines.append(f"| {name} | {cold:.2f} | {warm:.2f} |")
    lines += ["", f"Thresholds page re-render after moving the image-threshold slider: median "
                  f"{statistics.median(rerender) * 1000:.0f} ms, max {max(rerender) * 1000:.0f} ms over 7 moves "
                  f"(scores are read once from the model folder and cached; nothing is re-scored).",
              "", "Command: `python benchmarks/bench_dashboard.py`."]
    write_section("dashboard", "## Dashboard responsiveness\n\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
