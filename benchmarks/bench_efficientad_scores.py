"""EfficientAD: how the two branch maps become a map and an image score, studied on a trained model.

    python benchmarks/bench_efficientad_scores.py --category juice_bottle_loco --variant lite_6000

Loads the model that ``bench_efficientad.py`` saved at the end of its run (benchmarks/out/efficientad_model_<category>_
<variant>.pt), computes the raw student-teacher and student-autoencoder maps ``[N, 256, 256]`` of every test image
once, then scores the same maps several ways (``RULES`` below): anomalib's rule (quantile-normalised mean of the two
branches, image score = map maximum) and alternatives (one branch alone, a Gaussian blur of the map, the mean of the
top 1% of the map). No retraining: every row is the same networks. Rows go to
benchmarks/results/efficientad_scores_<category>_<variant>.json and the RESULTS.md section lists every saved file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_efficientad import ROWS
from bench_patchcore import image_metrics, pixel_metrics
from common import DATA, OUT, fmt, machine, write_section

from core.data.dataset import load_category
from core.data.imageio import load_image
from core.models.efficientad import EfficientAD, EfficientADConfig
from core.models.preprocess import resize_map, to_tensor
from core.store.lifecycle import HOLDOUT_FRACTION, split_holdout

Maps = tuple[torch.Tensor, torch.Tensor]  # normalised (st, ae), each [N, H, W]


def blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """``maps: [N, H, W]`` blurred with a Gaussian of ``sigma`` px (kernel 2*ceil(3 sigma)+1, reflect border)."""
    k = 2 * int(np.ceil(3 * sigma)) + 1
    return TF.gaussian_blur(maps[:, None], [k, k], [sigma, sigma])[:, 0]


def top_mean(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of the top ``fraction`` of each map ``[N, H, W]`` -> ``[N]``."""
    flat = maps.flatten(1)
    k = max(1, int(fraction * flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(dim=1)


def amax(maps: torch.Tensor) -> torch.Tensor:
    return maps.flatten(1).amax(dim=1)


def inner_max(maps: torch.Tensor, border: int) -> torch.Tensor:
    """Maximum of each map ``[N, H, W]`` without its outer ``border`` px -> ``[N]`` (the map itself is kept)."""
    return maps[:, border:maps.shape[1] - border, border:maps.shape[2] - border].flatten(1).amax(dim=1)


def mean(maps: Maps) -> torch.Tensor:
    """anomalib's combined map: the mean of the two normalised branch maps."""
    return 0.5 * maps[0] + 0.5 * maps[1]


# map name -> maps -> map [N, H, W]
MAPS: dict[str, Callable[[Maps], torch.Tensor]] = {
    "mean of branches": mean,
    "student-teacher": lambda m: m[0],
    "autoencoder": lambda m: m[1],
    "mean, blur sigma 2": lambda m: blur(mean(m), 2),
    "mean, blur sigma 4": lambda m: blur(mean(m), 4),
    "mean, blur sigma 8": lambda m: blur(mean(m), 8),
}
# rule name -> (map name, map [N, H, W] -> image score [N])
RULES: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "anomalib (mean of branches, max)": ("mean of branches", amax),
    "student-teacher only, max": ("student-teacher", amax),
    "autoencoder only, max": ("autoencoder", amax),
    "blur sigma 2, max": ("mean, blur sigma 2", amax),
    "blur sigma 4, max": ("mean, blur sigma 4", amax),
    "blur sigma 8, max": ("mean, blur sigma 8", amax),
    "max without 8 px border": ("mean of branches", lambda m: inner_max(m, 8)),
    "max without 16 px border (the product's)": ("mean of branches", lambda m: inner_max(m, 16)),
    "max without 24 px border": ("mean of branches", lambda m: inner_max(m, 24)),
    "student-teacher only, max without 16 px border": ("student-teacher", lambda m: inner_max(m, 16)),
    "blur sigma 4, max without 16 px border": ("mean, blur sigma 4", lambda m: inner_max(m, 16)),
    "mean of top 1%": ("mean of branches", lambda m: top_mean(m, 0.01)),
    "blur sigma 4, mean of top 1%": ("mean, blur sigma 4", lambda m: top_mean(m, 0.01)),
}


def normalised_maps(model: EfficientAD, images: list[np.ndarray], batch: int = 8) -> Maps:
    """The two branch maps ``([N, H, W], [N, H, W])`` at model input size, quantile-normalised by anomalib."""
    st_all, ae_all = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            st, ae = model.model.get_maps(to_tensor(images[start:start + batch], model.config.input_spec),
                                          normalize=True)
            st_all.append(st[:, 0])
            ae_all.append(ae[:, 0])
    return torch.cat(st_all), torch.cat(ae_all)


def write_table() -> None:
    lines = ["Each file: one trained EfficientAD model (bench_efficientad.py's last checkpoint), its test maps computed "
             "once and turned into a map and image score by each rule. The product's rule (since the hard-quantile "
             "change) is the mean of the branches with the image score taken without a 16 px border; before it, "
             "anomalib's rule (the maximum of the whole map).", "",
             "| category | variant | steps | rule | image AUROC | pixel AUROC | AUPRO | F1-max | pixel AUROC per defect |",
             "|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(ROWS.glob("efficientad_scores_*.json")):
        saved = json.loads(path.read_text())
        for r in saved["rows"]:
            per_defect = ", ".join(f"{d} {fmt(v)}" for d, v in r.get("per_defect_pixel_auroc", {}).items()) or "–"
            lines.append(f"| {saved['category']} | {saved['variant']} | {saved['steps']} | {r['rule']} | "
                         f"{fmt(r['image_auroc'])} | {fmt(r['pixel_auroc'])} | {fmt(r['aupro'])} | "
                         f"{fmt(r['f1_max'])} | {per_defect} |")
    lines += ["", "Command: `python benchmarks/bench_efficientad_scores.py --category C --variant V`."]
    write_section("efficientad_scores", "## EfficientAD: from branch maps to a score (one model, several rules)\n\n"
                  + "\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--variant", default="lite_6000")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    if args.table:
        write_table()
        return 0
    model_file = OUT / f"efficientad_model_{args.category}_{args.variant}.pt"
    rows_file = ROWS / f"efficientad_{args.category}_{args.variant}.json"
    if not (DATA / args.category).is_dir() or not model_file.is_file():
        print(f"skipped: needs {DATA / args.category} and {model_file}", file=sys.stderr)
        return 0
    torch.set_num_threads(args.threads)
    settings = json.loads(rows_file.read_text())["settings"]
    model = EfficientAD(EfficientADConfig.from_dict(settings))
    model.load_state(torch.load(model_file, map_location="cpu", weights_only=True))
    data = load_category(DATA, args.category)
    samples = list(data.test)
    images = [load_image(s.path) for s in samples]
    maps = normalised_maps(model, images)
    rows = []
    for map_name, make_map in MAPS.items():  # each map once, then every rule that scores it
        amap = make_map(maps)
        pixel = pixel_metrics(samples, images, [resize_map(m, im.shape[:2]) for m, im in zip(amap, images, strict=True)])
        for name, (rule_map, score_of) in RULES.items():
            if rule_map != map_name:
                continue
            row = {"rule": name, **image_metrics(samples, score_of(amap).numpy()), **pixel}
            rows.append(row)
            print(json.dumps(row, default=float), file=sys.stderr, flush=True)
    rows.sort(key=lambda r: list(RULES).index(r["rule"]))  # the table lists rules in RULES order
    _, hold_idx = split_holdout(len(data.train), HOLDOUT_FRACTION, 0)
    out = ROWS / f"efficientad_scores_{args.category}_{args.variant}.json"
    out.write_text(json.dumps({"category": args.category, "variant": args.variant, "steps": settings["steps"],
                               "machine": machine(), "num_holdout": len(hold_idx), "rows": rows},
                              default=float, indent=1))
    write_table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
