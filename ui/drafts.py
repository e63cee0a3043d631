"""Unsaved threshold changes, kept per model version for the browser session until saved or discarded.

Streamlit forgets a widget's value when its page is left; the Thresholds page keeps what the user moved here
instead, keyed by :class:`~core.store.model_store.ModelRef`, so leaving the page (or looking at another model) loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from core.store.model_store import ModelRef

_KEY = "_threshold_drafts"


@dataclass(frozen=True)
class ThresholdDraft:
    """Thresholds (and the review band ``(low, high)``; None: the model has none) moved on the Thresholds page
    and not saved yet."""

    image_threshold: float
    pixel_threshold: float
    review: tuple[float, float] | None = None


def _drafts() -> dict[ModelRef, ThresholdDraft]:
    drafts: dict[ModelRef, ThresholdDraft] = st.session_state.setdefault(_KEY, {})
    return drafts


def get(ref: ModelRef) -> ThresholdDraft | None:
    """The unsaved thresholds of this model version in this browser session, if any."""
    return _drafts().get(ref)


def put(ref: ModelRef, draft: ThresholdDraft) -> None:
    """Keep ``draft`` as this model version's unsaved thresholds."""
    _drafts()[ref] = draft


def discard(ref: ModelRef) -> None:
    """Forget this model version's unsaved thresholds (after Save or Discard)."""
    _drafts().pop(ref, None)
