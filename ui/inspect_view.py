"""Scoring helpers for pages: decode uploads safely, predict through the cache, build overlays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.data.imageio import ImageLoadError, load_image
from core.scores.calibration import Calibration
from core.store.lifecycle import LoadedModel
from core.verdict.inspection import Inspection, inspect
from core.verdict.overlay import overlay
from ui import cache
from ui.display import display_image


@dataclass(frozen=True)
class Scored:
    """One image as a page shows it: ``inspection`` holds score, map, verdict and the familiarity flag."""

    name: str
    image: np.ndarray
    inspection: Inspection

    @property
    def verdict(self) -> str:
        return self.inspection.verdict


def decode_upload(name: str, data: bytes) -> np.ndarray:
    """uint8 RGB image of an upload; raises ImageLoadError with a readable reason."""
    return load_image(data, name=name)


def score_image(inference: str, model: LoadedModel, name: str, image: np.ndarray) -> Scored:
    """Score and judge ``image`` ``[H, W, 3]`` with core.verdict.inspection, the pipeline of the service and the
    watch folder, measured through the dashboard's cache (per weights and image digest), so the calibration and
    familiarity limit saved now judge it without scoring it again. Images below the minimum side are not scored."""
    return Scored(name, image, inspect(model, [image], cache.measurer(model.ref, inference))[0])


def item_keys(images: list[np.ndarray]) -> list[str]:
    """One widget key per listed image: its position and a digest of its pixels. File names do not do: two
    uploads (or cameras) may share one, and the same image may be listed twice."""
    return [f"{index}-{cache.digest(image)[:12]}" for index, image in enumerate(images)]


def unique_names(names: list[str]) -> list[str]:
    """``names`` with repeats told apart as the table and the feedback log show them: ``cam.png``,
    ``cam.png (2)``, ``cam.png (3)``."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def taught_region(scored: Scored, calibration: Calibration, cmap: str) -> tuple[np.ndarray, float | None]:
    """The overlay a Mark as OK confirmation shows (the predicted defect outlined at the pixel threshold) and
    the share of the image above that threshold (None for an unscored image): what would be learnt as normal."""
    shown = render_overlay(scored, calibration, 0.5, cmap, True)
    amap = scored.inspection.anomaly_map
    share = None if amap is None else float((np.asarray(amap) >= calibration.pixel_threshold).mean())
    return shown, share


def render_overlay(scored: Scored, calibration: Calibration, opacity: float, cmap: str, show_contour: bool) -> np.ndarray:
    shown = display_image(scored.image)
    if scored.inspection.anomaly_map is None:
        return shown
    return overlay(shown, scored.inspection.anomaly_map, calibration, opacity, cmap, show_contour)


__all__ = ["ImageLoadError", "Scored", "decode_upload", "display_image", "item_keys", "render_overlay", "score_image",
           "taught_region", "unique_names"]
