"""Unfamiliar-image guard on real data: how often it flags good parts, defects, and other products.

    python benchmarks/bench_familiarity.py

For each category (magnetic_tile, juice_bottle_loco from ../shared/data, and the generated demo_metal), the guard
is fitted exactly as training fits it (core.detector.train: 10% of the good training images held out, profile of
the rest, limit = core.familiarity.LIMIT_MARGIN x the largest held-out distance) and then judges: the category's
test/good images (target: <= 2% flagged), its defective test images (flagged or not, they keep their score and
verdict), and the test images of the other categories plus 320 natural photos (target: >= 95% flagged).
Written to the ``familiarity`` section of RESULTS.md.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine, write_section  # noqa: E402

from core import familiarity as fam  # noqa: E402
from core.dataset import load_category  # noqa: E402
from core.demo import DEMO_CATEGORY, make_demo_dataset  # noqa: E402
from core.detector import HOLDOUT_FRACTION, split_holdout  # noqa: E402
from core.dataset import image_files  # noqa: E402
from core.imageio import load_image  # noqa: E402


def main() -> int:
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp())
    roots = {DEMO_CATEGORY: make_demo_dataset(tmp).parent}
    for name in ("magnetic_tile", "juice_bottle_loco"):
        if (DATA / name).is_dir():
            roots[name] = DATA
    sets = {}
    for name, root in roots.items():
        data = load_category(root, name)
        train = [load_image(s.path) for s in data.train]
        test = [(s.label, load_image(s.path)) for s in data.test]
        sets[name] = (train, test)
    natural = [load_image(p) for p in image_files(DATA / "natural")] if (DATA / "natural").is_dir() else []
    lines = [f"Machine: {machine()}. Limit margin {fam.LIMIT_MARGIN}, aspect margin {fam.ASPECT_MARGIN}.", "",
             "| model's category | held out | limit | test/good flagged | defects flagged (verdict kept) | "
             "other products flagged | natural photos flagged | guard ms/image |", "|---|---|---|---|---|---|---|---|"]
    for name, (train, test) in sets.items():
        fit_idx, hold_idx = split_holdout(len(train), HOLDOUT_FRACTION, 0)
        profile = fam.build_profile([train[i] for i in fit_idx])
        limit = fam.fit_limit(profile, [train[i] for i in hold_idx])

        def flagged(images: list[np.ndarray]) -> tuple[int, int]:
            res = fam.assess(profile, limit, images) if images else []
            return sum(not r.familiar for r in res), len(res)

        good = flagged([im for lab, im in test if lab == 0])
        bad = flagged([im for lab, im in test if lab == 1])
        others = [im for other, (_, t) in sets.items() if other != name for _, im in t]
        oth = flagged(others)
        nat = flagged(natural)
        times = []
        for im in [im for _, im in test[:23]]:
            t0 = time.perf_counter()
            fam.assess(profile, limit, [im])
            times.append((time.perf_counter() - t0) * 1000)
        share = lambda c: f"{c[0]}/{c[1]} ({c[0] / max(c[1], 1):.1%})"  # noqa: E731
        lines.append(f"| {name} | {len(hold_idx)} | {limit:.2f} | {share(good)} | {share(bad)} | {share(oth)} | "
                     f"{share(nat)} | {statistics.median(times[3:]):.1f} |")
    lines += ["", "A flagged image still gets its score and verdict; the flag is shown beside it (Inspect, "
                  "`python -m core predict`'s `familiar` column). Command: `python benchmarks/bench_familiarity.py`."]
    write_section("familiarity", "## Unfamiliar-image guard\n\n" + "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
