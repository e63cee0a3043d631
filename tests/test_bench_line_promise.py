"""benchmarks/bench_line_promise.py measures the product as it is today: a stored model trained with older defaults
is retrained, and the drift watch reads what core.verdict.drift_status reads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_line_promise as bench

from core.portable import DEFECT, NO_VERDICT, OK, REVIEW

DEFAULTS = {"input_mode": "auto", "runtime": "auto", "tile": 256, "coreset_ratio": 0.01}


def test_a_model_from_before_the_automatic_input_mode_is_stale() -> None:
    old = {"settings": {"input_mode": "squash", "runtime": "onnx", "tile": 256, "coreset_ratio": 0.01}}
    assert bench.stale_settings(old, DEFAULTS) == {"input_mode": ("squash", "auto"), "runtime": ("onnx", "auto")}


def test_a_setting_the_automatic_choice_resolved_counts_as_the_default() -> None:
    today = {"settings": {"input_mode": "tiles", "runtime": "auto", "tile": 256, "coreset_ratio": 0.01},
             "input_choice": {"mode": "tiles", "settings": {"input_mode": "tiles", "scale": 1.0}}}
    assert bench.stale_settings(today, DEFAULTS) == {}


def test_a_default_the_model_never_recorded_is_stale() -> None:
    before = {"settings": {"input_mode": "auto", "runtime": "auto", "tile": 256}}
    assert bench.stale_settings(before, DEFAULTS) == {"coreset_ratio": (None, 0.01)}


@pytest.mark.parametrize(("score", "verdict", "threshold", "read"), [
    (0.7, OK, 1.0, 0.7), (1.1, REVIEW, 1.0, 1.1), (5.0, DEFECT, 1.0, 1.0), (0.9, DEFECT, 1.0, 0.9),
    (3.0, NO_VERDICT, 1.0, None),
])
def test_the_drift_watch_reads_what_the_product_reads(score: float, verdict: str, threshold: float,
                                                      read: float | None) -> None:
    assert bench.PRODUCT(score, verdict, threshold) == read


def test_a_setting_the_inference_path_sets_at_load_is_not_compared() -> None:
    old = {"settings": {"input_mode": "squash", "runtime": "onnx", "tile": 256, "coreset_ratio": 0.01}}
    fast = lambda settings: {**settings, "runtime": "auto"}  # noqa: E731  (what inference_settings "fast" does)
    assert bench.stale_settings(old, DEFAULTS, fast) == {"input_mode": ("squash", "auto")}


def test_a_row_measured_on_a_kept_stale_model_says_what_differs() -> None:
    assert bench.stale_note({"stale": {}}) == ""
    assert bench.stale_note({"stale": {"input_mode": ["squash", "auto"]}}) == (
        " (trained before today's defaults: input_mode 'squash', today 'auto')")
