"""PatchCore's automatic input mode: resized, native aspect or tiles, decided per category from good images only.

``PatchCoreConfig(input_mode="auto")`` (the default) is resolved when the model is fitted (:func:`choose_input`):

1. **Candidates from the sizes.** The images' median short side over the model input side (the ratio) and their
   aspect ratio decide what is worth trying: ``squash`` (resized to ``height x width``) always; ``native`` (aspect
   kept, short side scaled to the model input) when the images are not square-ish and of one size; ``tiles`` (``tile`` px tiles at
   native resolution, and at half resolution for very large images) when the short side is at least
   :data:`TILE_RATIO` tiles. With one candidate nothing is scored.
2. **Scored on synthetic defects.** A small, seeded subsample: :data:`FIT_IMAGES` good images build a quick bank
   per candidate (same settings, the coreset sized like the full model's bank, at most :data:`QUICK_BANK`
   entries), :data:`HELD_OUT_IMAGES` other good images are scored as they are and with one synthetic defect of
   each kind pasted at their real resolution (core/data/synthetic.py: cut-paste patches from the fitting images,
   thin scratches, spots at 1-3% of the short side). Each candidate's synthetic-defect AUROC is how well its
   image scores separate the defective copies from the good ones.
3. **Kept within a latency budget.** Each candidate's expected ms/image comes from the pixels it puts through
   the network (:func:`expected_ms`, a cost model measured on the reference 2-core CPU: deterministic, unlike a
   clock on shared cores); candidates above ``auto_budget_ms`` are out. Among the rest, the cheapest whose AUROC
   is within its tie margin of the best wins (near-ties go to the cheaper). A candidate's tie margin
   (:func:`tie_margin`) is :data:`MARGIN`, or if larger the standard error of its difference from the best on
   so few images: both AUROCs' standard errors (:func:`auroc_se`) combined. Both count: near an AUROC of 1 the
   best's own error vanishes, while the weaker candidate's does not (0.958 against 0.990 from 8 goods and 24
   defects is 6 of 192 pairs: a tie). So a category whose small defects the resized input already sees, or
   where the evidence is thin, keeps the resized input.

The result (:class:`InputChoice`) is what the manifest records, the Models page shows and ``train`` prints.
Same images and seed: same choice.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from core.data.synthetic import PAINTERS, synthetic_defects
from core.models.tiling import tile_boxes
from core.types import NO_CONTROL, TrainControl

if TYPE_CHECKING:
    from core.models.patchcore import PatchCore, PatchCoreConfig

logger = logging.getLogger(__name__)

AUTO = "auto"
MODES = ("squash", "native", "tiles")
FIT_IMAGES = 16  # good images in each candidate's quick bank
HELD_OUT_IMAGES = 8  # other good images, scored as they are and with one synthetic defect of each kind
MIN_IMAGES = 6  # fewer good images than this: decided by the size ratio alone
QUICK_BANK = 1024  # at most this many entries in a quick bank (the coreset dominates the choice's cost)
# Synthetic-defect AUROC within this of the best, or within the standard error of the difference (tie_margin) if
# larger, is a tie: the cheaper candidate wins. On juice_bottle_loco native aspect scored 0.742 against the resized
# 0.661 (tie margin 0.141 from 8 goods and 24 defects) and lost 0.02 real image AUROC; on pcb_00041 tiles scored
# 0.698 against 0.469 (tie margin 0.157).
MARGIN = 0.02
TILE_RATIO = 1.5  # tiles are a candidate when the (scaled) short side is at least this many tiles
NATIVE_ASPECT = 1.25  # native aspect is a candidate when the images' median aspect differs this much from the input's
# ... and when this share of the images has one size: native input runs each size as its own batch, without a
# compiled graph (magnetic_tile's 103-632 x 222-403 px crops: ~10 s per image while choosing on shared cores)
NATIVE_ONE_SIZE = 0.9
# Expected latency: ms per megapixel put through the network (backbone + bank search + map) on the reference
# 2-core Intel Xeon (RESULTS.md "small_defects": 256² squashed 8 ms/image) plus a fixed cost per tile
# (cropping, stitching). Deterministic on purpose: the decision must not depend on how busy the cores are.
MS_PER_MEGAPIXEL = 120.0
MS_PER_TILE = 0.5


@dataclass(frozen=True)
class Candidate:
    """One input mode to try: the config ``settings`` it sets, a ``label`` for people, and ``pixels`` put through
    the network per (median-sized) image (``tiles``: the number of tiles times a tile's pixels)."""

    mode: str
    settings: dict[str, Any]
    label: str
    pixels: int
    tiles: int = 0

    @property
    def expected_ms(self) -> float:
        return expected_ms(self.pixels, self.tiles)


@dataclass(frozen=True)
class CandidateScore:
    """A candidate's result: ``auroc`` on synthetic defects (None: not scored), its expected ms/image on the
    reference CPU, and the ms/image measured with its quick bank while choosing (this machine, at that moment)."""

    mode: str
    label: str
    settings: dict[str, Any]
    expected_ms: float
    within_budget: bool
    auroc: float | None = None
    measured_ms: float | None = None
    margin: float | None = None  # its tie margin against the best (tie_margin); None: the best, or not compared

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "label": self.label, "settings": dict(self.settings),
                "expected_ms": round(self.expected_ms, 1), "within_budget": self.within_budget,
                "auroc": None if self.auroc is None else round(self.auroc, 4),
                "measured_ms": None if self.measured_ms is None else round(self.measured_ms, 1),
                "margin": None if self.margin is None else round(self.margin, 4)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateScore:
        return cls(str(data["mode"]), str(data.get("label", data["mode"])), dict(data.get("settings", {})),
                   float(data.get("expected_ms", 0.0)), bool(data.get("within_budget", True)),
                   None if data.get("auroc") is None else float(data["auroc"]),
                   None if data.get("measured_ms") is None else float(data["measured_ms"]),
                   None if data.get("margin") is None else float(data["margin"]))  # absent before session 11


@dataclass(frozen=True)
class InputChoice:
    """What the automatic input mode chose and why. ``settings``: the config fields it sets (``input_mode`` and,
    per mode, ``scale`` / ``tile``); ``candidates``: every mode considered, in cost order; ``scored``: False when
    the size ratio alone decided (one candidate, or too few images); ``margin``: the tie margin of the deciding
    comparison (the pick's against the best, or when the best won, the best cheaper candidate's; each candidate
    keeps its own)."""

    mode: str
    settings: dict[str, Any]
    label: str
    reason: str
    candidates: tuple[CandidateScore, ...]
    scored: bool
    budget_ms: float
    margin: float
    seed: int
    ratio: float  # median short side over the model input side
    images: dict[str, int]  # fit / held_out / defects used to score
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "settings": dict(self.settings), "label": self.label, "reason": self.reason,
                "candidates": [c.to_dict() for c in self.candidates], "scored": self.scored,
                "budget_ms": self.budget_ms, "margin": self.margin, "seed": self.seed, "ratio": round(self.ratio, 3),
                "images": dict(self.images), "seconds": round(self.seconds, 2)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputChoice:
        """The choice as a manifest keeps it.

        Raises:
            ValueError: not a recorded choice (no mode, or a mode that is not one of :data:`MODES`).
        """
        if not isinstance(data, dict) or data.get("mode") not in MODES:
            raise ValueError(f"expected a recorded input choice with a mode in {MODES}, found {data!r:.200}")
        return cls(str(data["mode"]), dict(data.get("settings", {})), str(data.get("label", data["mode"])),
                   str(data.get("reason", "")),
                   tuple(CandidateScore.from_dict(c) for c in data.get("candidates", [])),
                   bool(data.get("scored", False)), float(data.get("budget_ms", 0.0)),
                   float(data.get("margin", MARGIN)), int(data.get("seed", 0)), float(data.get("ratio", 0.0)),
                   {str(k): int(v) for k, v in dict(data.get("images", {})).items()}, float(data.get("seconds", 0.0)))

    def summary(self) -> str:
        """One line for people: the choice and, per candidate, its synthetic-defect AUROC and expected ms/image."""
        parts = [f"{c.label}: " + (f"AUROC {c.auroc:.3f}, " if c.auroc is not None else "")
                 + f"~{c.expected_ms:.0f} ms/image" + ("" if c.within_budget else " (over budget)")
                 for c in self.candidates]
        return f"input: {self.label} (auto). {self.reason} Candidates: " + "; ".join(parts)


def expected_ms(pixels: int, tiles: int = 0) -> float:
    """Expected ms per image on the reference CPU for ``pixels`` through the network and ``tiles`` tiles."""
    return pixels / 1e6 * MS_PER_MEGAPIXEL + tiles * MS_PER_TILE


def _median_shape(shapes: Sequence[tuple[int, ...]]) -> tuple[int, int]:
    return int(np.median([s[0] for s in shapes])), int(np.median([s[1] for s in shapes]))


def candidates(shapes: Sequence[tuple[int, ...]], config: PatchCoreConfig) -> list[Candidate]:
    """The input modes worth trying for images of ``shapes`` (H, W, ...), cheapest first (see the module doc)."""
    from core.models.preprocess import InputSpec

    h, w = _median_shape(shapes)
    side = min(config.height, config.width)
    short = min(h, w)
    out = [Candidate("squash", {"input_mode": "squash"}, f"resized to {config.height}x{config.width}",
                     config.height * config.width)]
    aspects = [max(s[0], s[1]) / max(1, min(s[0], s[1])) for s in shapes]
    input_aspect = max(config.height, config.width) / side
    sizes = Counter((s[0], s[1]) for s in shapes)
    one_size = sizes.most_common(1)[0][1] >= NATIVE_ONE_SIZE * len(shapes)
    if one_size and float(np.median(aspects)) / input_aspect >= NATIVE_ASPECT:
        scale = round(min(1.0, side / short), 3)
        th, tw = InputSpec(config.height, config.width, mode="native", scale=scale).target_size((h, w))
        out.append(Candidate("native", {"input_mode": "native", "scale": scale},
                             f"native aspect at {scale:g}x (e.g. {th}x{tw})", th * tw))
    for scale in (1.0, 0.5):
        sh, sw = int(round(h * scale)), int(round(w * scale))
        if min(sh, sw) < TILE_RATIO * config.tile:
            continue
        n = len(tile_boxes((sh, sw), config.tile, config.tile_overlap))
        out.append(Candidate("tiles", {"input_mode": "tiles", "tile": config.tile, "scale": scale},
                             f"tiles of {config.tile} px at {scale:g}x ({n} per {h}x{w} image)",
                             n * config.tile * config.tile, n))
    return sorted(out, key=lambda c: c.expected_ms)


def auroc(negatives: Sequence[float], positives: Sequence[float]) -> float:
    """Probability that a positive scores above a negative (ties count half): the Mann-Whitney AUROC."""
    neg, pos = np.asarray(negatives, np.float64), np.asarray(positives, np.float64)
    if neg.size == 0 or pos.size == 0:
        raise ValueError(f"expected good and defective scores, found {neg.size} and {pos.size}")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (neg.size * pos.size))


def auroc_se(value: float, negatives: int, positives: int) -> float:
    """The standard error of an AUROC of ``value`` from ``negatives`` and ``positives`` scores (Hanley & McNeil,
    Radiology 1982): with 8 good images it is ~0.09 at 0.7, so smaller differences are ties, not evidence."""
    q1, q2 = value / (2 - value), 2 * value * value / (1 + value)
    var = (value * (1 - value) + (positives - 1) * (q1 - value * value) + (negatives - 1) * (q2 - value * value))
    return float(np.sqrt(max(var, 0.0) / (negatives * positives)))


def tie_margin(best: float, other: float, negatives: int, positives: int) -> float:
    """How far ``other``'s AUROC may fall below the ``best`` one and still be a tie, both from the same
    ``negatives`` good and ``positives`` defective scores: :data:`MARGIN`, or the standard error of their difference
    if larger, sqrt(SE(best)^2 + SE(other)^2). The two AUROCs come from the same images, so the true error of the
    difference is smaller (they correlate): this errs towards a tie, i.e. towards the cheaper input."""
    se = np.hypot(auroc_se(best, negatives, positives), auroc_se(other, negatives, positives))
    return float(max(MARGIN, se))


def decide(scores: Sequence[CandidateScore], negatives: int, positives: int,
           budget_ms: float) -> tuple[CandidateScore, str, float, list[CandidateScore]]:
    """The winner among scored ``scores`` (cost order, AUROCs from ``negatives`` good and ``positives`` defective
    images), the reason in words, the deciding tie margin, and ``scores`` with each within-budget candidate's tie
    margin against the best (:func:`tie_margin`; the best itself keeps None)."""
    inside = [i for i, s in enumerate(scores) if s.within_budget and s.auroc is not None]
    if not inside:
        return scores[0], f"no candidate within the {budget_ms:.0f} ms/image budget: the cheapest.", MARGIN, list(scores)
    top_i = max(inside, key=lambda i: scores[i].auroc or 0.0)  # the first (cheapest) of equal AUROCs
    top = scores[top_i].auroc or 0.0
    marked = [replace(s, margin=round(tie_margin(top, s.auroc or 0.0, negatives, positives), 3))
              if i in inside and i != top_i else s for i, s in enumerate(scores)]
    best = marked[top_i]
    pick_i = next(i for i in inside if i == top_i or (marked[i].auroc or 0.0) >= top - (marked[i].margin or 0.0))
    pick = marked[pick_i]
    if pick_i != top_i:
        margin = pick.margin or MARGIN
        why = (f"AUROC {pick.auroc:.3f}, within {margin:.2f} of the best synthetic-defect AUROC ({top:.3f}, "
               f"{best.label}) and cheaper")
    else:
        cheaper = [marked[i] for i in inside if i < top_i]
        runner = max(cheaper, key=lambda s: s.auroc or 0.0) if cheaper else None
        margin = MARGIN if runner is None else (runner.margin or MARGIN)
        why = f"best synthetic-defect AUROC {top:.3f} ({best.label})" + (
            "" if runner is None else f", more than {margin:.2f} above the best cheaper one ({runner.label})")
    over = [s for s in scores if not s.within_budget]
    if over:
        why += f"; over the {budget_ms:.0f} ms/image budget: " + ", ".join(s.label for s in over)
    why += (f". Tie margin {margin:.2f} ({MARGIN:.2f}, or the standard error of the AUROCs' difference on so few "
            "images if larger): closer AUROCs are a tie, and the cheaper wins.")
    return pick, why, margin, marked


def choose_input(images: Sequence[np.ndarray], config: PatchCoreConfig,
                 build: Callable[[PatchCoreConfig], PatchCore], control: TrainControl = NO_CONTROL) -> InputChoice:
    """Resolve ``config.input_mode == "auto"`` for the good ``images`` (uint8 RGB ``[H, W, 3]``): the candidate
    that separates held-out good images from synthetic small defects best, within the latency budget (module doc).
    ``build`` makes a PatchCore from a config (the quick banks). Deterministic for ``config.seed``."""
    t0 = time.perf_counter()
    shapes = [im.shape for im in images]
    h, w = _median_shape(shapes)
    ratio = min(h, w) / min(config.height, config.width)
    budget = float(config.auto_budget_ms)
    options = candidates(shapes, config)
    unscored = [CandidateScore(c.mode, c.label, c.settings, c.expected_ms, c.expected_ms <= budget) for c in options]

    def made(pick: CandidateScore, reason: str, scores: Sequence[CandidateScore], used: dict[str, int],
             margin: float = MARGIN) -> InputChoice:
        return InputChoice(pick.mode, pick.settings, pick.label, reason, tuple(scores), bool(used), budget, margin,
                           config.seed, ratio, used, time.perf_counter() - t0)

    if len(options) == 1:
        return made(unscored[0], f"Resized: the images ({h}x{w}) are {ratio:.2f}x the model input, "
                                 "too small for tiles or a native-aspect input to keep more detail (no other "
                                 "candidate to try).", unscored, {})
    if len(images) < MIN_IMAGES:
        fits = [c for c in unscored if c.within_budget] or unscored[:1]
        pick = fits[-1] if ratio >= 2 * TILE_RATIO else fits[0]
        return made(pick, f"{len(images)} good images are too few to score candidates on (need {MIN_IMAGES}): "
                          f"by the size ratio ({ratio:.2f}x the model input).", unscored, {})
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(images))
    n_held = min(HELD_OUT_IMAGES, len(images) // 2)
    held = [images[i] for i in order[:n_held]]
    fit = [images[i] for i in order[n_held:n_held + FIT_IMAGES]]
    defects = [d.image for d in synthetic_defects(held, fit, config.seed)]
    full_bank = config.coreset_ratio * len(images)  # the full model's bank, in images' worth of patches
    scored = []
    for n, (cand, base) in enumerate(zip(options, unscored, strict=True)):
        control.report(f"choosing the input: {cand.label}", n / len(options))
        quick = replace(config, **cand.settings, search="exact")  # the model's runtime (PatchCore._quick_model)
        patches = cand.pixels / 64.0 * len(fit)  # stride-8 features
        ratio_q = min(1.0, max(full_bank / len(fit), 1.0 / patches), QUICK_BANK / patches)
        model = build(replace(quick, coreset_ratio=ratio_q))
        model.fit(fit)
        good = model.predict(held)
        bad = model.predict(defects)
        value = auroc([p.score for p in good], [p.score for p in bad])
        ms = float(np.median([p.latency_ms for p in good]))
        scored.append(replace(base, auroc=value, measured_ms=ms))
        logger.info("input candidate %s: synthetic-defect AUROC %.3f, expected %.0f ms/image (measured %.0f)",
                    cand.label, value, cand.expected_ms, ms)
    pick, why, margin, scored = decide(scored, len(held), len(defects), budget)  # ties: within the noise
    choice = made(pick, why, scored, {"fit": len(fit), "held_out": len(held), "defects": len(defects),
                                      "defect_kinds": len(PAINTERS)}, margin)
    logger.info("%s (%.1f s)", choice.summary(), choice.seconds)
    return choice
