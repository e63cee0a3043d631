"""The feedback loop: a user says "this is OK" or "this is a defect" about a scored image.

- **Mark as OK (false alarm)**, PatchCore: the image's patch features join the memory bank (no retraining;
  seconds), as a new model version whose parent is the version that raised the alarm; thresholds are kept
  (a larger bank only lowers good images' scores, so the false-alarm rate the default promised stays an upper
  bound). EfficientAD cannot learn from one image yet: :class:`FeedbackError` says so and what to do instead.
- **Mark as defect**: the image is filed under ``<data>/<category>/test/<defect>/`` so the next evaluation and
  the Thresholds page count it (its mask can be drawn on the Annotate page).
- Every action is one line of the model's feedback log (time, image hash, action, versions before/after) and
  can be undone: an OK mark by moving the current-version pointer back, a defect mark by removing the filed copy.

Two safeguards on Mark as OK:

- An image scored **far above the threshold** (:func:`far_above`, the one place this rule lives) looks like a
  clear defect: marking it OK would teach the model that the defect is normal. It is refused with
  :class:`NeedsConfirmation` unless the caller passes ``confirm_far_above=True`` (the Inspect page after its
  confirmation panel, the CLI with ``--force``).
- Two marks started from the **same version** (two tabs, the CLI beside the app) must not lose one image: the new
  version is created only if the version it was built on is still current (compare-and-swap under the store's
  lock); otherwise the current version is reloaded and the image applied on top of it, so its manifest's
  ``marked_ok`` list keeps both.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.files import atomic_write_bytes, now_iso
from core.models.registry import FeedbackLearner, spec
from core.store import lifecycle as det
from core.store.model_store import ModelRef, ModelStore, ModelStoreError, StaleParentError, validate_name
from core.verdict.inspection import NO_VERDICT, inspect

logger = logging.getLogger(__name__)

MARK_OK = "mark_ok"
MARK_DEFECT = "mark_defect"
UNDO = "undo"
FAR_ABOVE_RATIO = 1.5  # a score at least this many times the image threshold needs a confirmation to be marked OK
MARK_ATTEMPTS = 5  # how often a mark is re-applied on a version another writer made meanwhile before giving up


class FeedbackError(ValueError):
    """A feedback action that cannot be taken; the message says why and what to do instead."""


@dataclass(frozen=True)
class FarAbove:
    """Why a score needs a deliberate confirmation before its image is marked OK. ``median_defect``: the median
    score of the defect images in the version's saved evaluation (None when it has none)."""

    score: float
    threshold: float
    median_defect: float | None

    @property
    def ratio(self) -> float:
        return self.score / self.threshold if self.threshold > 0 else float("inf")

    def describe(self) -> str:
        """E.g. ``score 63.5 is 2.20x the image threshold 28.8 (at least 1.5x)``."""
        reasons = []
        if self.ratio >= FAR_ABOVE_RATIO:
            reasons.append(f"at least {FAR_ABOVE_RATIO:g}x")
        if self.median_defect is not None and self.score > self.median_defect:
            reasons.append(f"above the median defect score {self.median_defect:.4g} of the saved evaluation")
        return (f"score {self.score:.4g} is {self.ratio:.2f}x the image threshold {self.threshold:.4g} "
                f"({' and '.join(reasons)})")


class NeedsConfirmation(FeedbackError):
    """Mark as OK refused until confirmed: the image scores far above the threshold (``far`` says how far)."""

    def __init__(self, name: str, far: FarAbove) -> None:
        super().__init__(f"{name}: not marked OK without a confirmation: expected a score below "
                         f"{FAR_ABOVE_RATIO:g}x the image threshold (and below the evaluation's median defect "
                         f"score), found {far.describe()}. It looks like a clear defect: marking it OK teaches the "
                         "model that its outlined region is normal")
        self.name = name
        self.far = far


@dataclass(frozen=True)
class FeedbackResult:
    """One action's outcome. ``score_*``: raw score of the image before and after (None for a defect mark)."""

    action: str
    before: ModelRef
    after: ModelRef
    image_sha1: str
    score_before: float | None
    score_after: float | None
    filed_as: Path | None
    message: str


def image_sha1(image: np.ndarray) -> str:
    """Digest of the decoded pixels ``[H, W, 3]`` (the same image in another file format has the same hash)."""
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def far_above(score: float, threshold: float, median_defect: float | None) -> FarAbove | None:
    """The rule: an image the model scores at or above the threshold needs a confirmation to be marked OK when
    its score is at least :data:`FAR_ABOVE_RATIO` times the threshold, or above ``median_defect`` (the saved
    evaluation's median defect score, when there is one). None when no confirmation is needed."""
    if not score >= threshold:  # also NaN: the model already calls it OK, nothing dangerous is taught
        return None
    far = threshold > 0 and score >= FAR_ABOVE_RATIO * threshold
    typical_defect = median_defect is not None and score > median_defect
    return FarAbove(float(score), float(threshold), median_defect) if far or typical_defect else None


def median_defect_score(ref: ModelRef) -> float | None:
    """Median raw score of the defect images in ``ref``'s saved evaluation (None: not evaluated, or no defects).

    Raises:
        ModelStoreError: the evaluation table is damaged (the message names it).
    """
    raw = ModelStore(ref.store).read_eval_images(ref)
    if raw is None:
        return None
    try:
        scores = [float(row["score"]) for row in csv.DictReader(io.StringIO(raw.decode()))
                  if int(row["label"]) == 1]
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ModelStoreError(f"{ref.label}: expected an evaluation table with label and score columns, found "
                              f"damaged content ({type(exc).__name__}: {exc}); evaluate the model again") from None
    return float(np.median(scores)) if scores else None


def needs_confirmation(model: det.LoadedModel, score: float | None) -> FarAbove | None:
    """:func:`far_above` for ``model``'s saved image threshold and evaluation (None for an unscored image)."""
    if score is None:
        return None
    return far_above(score, model.calibration.image_threshold, median_defect_score(model.ref))


def history(store: ModelStore, category: str, kind: str) -> list[dict[str, Any]]:
    """The feedback log, oldest first (raises ModelStoreError, naming the line, when it is damaged)."""
    return store.read_feedback(category, kind)


def mark_ok(model: det.LoadedModel, image: np.ndarray, name: str,
            confirm_far_above: bool = False) -> FeedbackResult:
    """Teach ``model`` that ``image`` (uint8 RGB ``[H, W, 3]``) is a good part: a new, current version.

    ``confirm_far_above``: the user confirmed an image scored far above the threshold (:func:`far_above`).
    When another writer made a newer version of the model since ``model`` was loaded, the image is applied on
    top of that version instead (the result's ``before`` names it), so neither mark is lost.

    Raises:
        NeedsConfirmation: the image scores far above the threshold and ``confirm_far_above`` is False.
        FeedbackError: the kind cannot learn from feedback, the image is too small or unlike this product's
            images (marking it would teach the model the wrong thing), or the model kept changing meanwhile.
        ModelStoreError: the feedback log is damaged (nothing is changed).
    """
    kind = spec(model.kind)
    if not kind.learns_from_feedback:
        raise FeedbackError(f"{kind.label} cannot learn from a single marked image yet: add the image to "
                            f"train/good and retrain it on the Models page (PatchCore learns it in seconds)")
    store = ModelStore(model.ref.store)
    store.read_feedback(model.category, model.kind)  # a damaged log stops us before anything changes
    base = model
    for _ in range(MARK_ATTEMPTS):
        try:
            result = _mark_ok_on(store, base, image, name, confirm_far_above, started_from=model.ref)
            logger.info("feedback %s/%s: %s", model.category, model.kind, result.message)
            return result
        except StaleParentError as exc:  # another mark (tab, process) made a version meanwhile: build on it
            logger.info("%s: %s; marking it OK on %s instead", name, exc, exc.current.label)
            base = det.load(exc.current)
    raise FeedbackError(f"{name}: not marked OK: expected the model to stay at one version while marking, found "
                        f"it changed {MARK_ATTEMPTS} times meanwhile (now {store.current(model.category, model.kind).label}); "
                        "try again")


def _mark_ok_on(store: ModelStore, model: det.LoadedModel, image: np.ndarray, name: str, confirm_far_above: bool,
                started_from: ModelRef) -> FeedbackResult:
    """One attempt of :func:`mark_ok` on ``model``; StaleParentError when ``model`` is no longer current."""
    before = inspect(model, [image])[0]
    if before.verdict == NO_VERDICT:
        raise FeedbackError(f"{name}: not marked, {before.note}")
    if before.familiar is False:
        raise FeedbackError(f"{name}: not marked, it does not look like this product's images ({before.note}); "
                            "marking it OK would teach the model that anything goes")
    far = needs_confirmation(model, before.score)
    if far is not None and not confirm_far_above:
        raise NeedsConfirmation(name, far)
    fresh = det.build(model.kind, det.inference_settings(model.kind, model.manifest["settings"], "fast"))
    if not isinstance(fresh, FeedbackLearner):
        raise FeedbackError(f"{name}: not marked, expected a {model.kind} detector that learns from feedback "
                            f"(add_to_bank), found {type(fresh).__name__} without it")
    fresh.load_state(model.detector.state())
    added = fresh.add_to_bank([image])
    after_score = float(fresh.predict([image])[0].score)
    digest = image_sha1(image)
    manifest = store.read_manifest(model.ref)
    marked = list(manifest.get("feedback", {}).get("marked_ok", [])) + [{"image": name, "sha1": digest}]
    manifest["feedback"] = {"marked_ok": marked, "bank_entries_added": added}
    manifest["metrics"] = {}  # the scores changed: the old evaluation does not describe this version
    entry: dict[str, Any] = {"time": now_iso(), "action": MARK_OK, "image": name, "sha1": digest,
                             "version_before": model.version, "score_before": before.score,
                             "score_after": after_score}
    if far is not None:
        entry["confirmed_far_above"] = {"ratio": far.ratio, "threshold": far.threshold,
                                        "median_defect": far.median_defect}
    after = store.create_version(model.category, model.kind, manifest, model.calibration.to_dict(),
                                 reason=f"feedback: {name} marked OK", weights=fresh.state(), parent=model.ref,
                                 require_parent_current=True, feedback=entry)
    moved = "" if model.ref == started_from else (
        f" (built on v{model.version}: another mark made it while this one ran, so both are kept)")
    return FeedbackResult(MARK_OK, model.ref, after, digest, before.score, after_score, None,
                          f"{name} marked OK: score {before.score:.4g} -> {after_score:.4g} "
                          f"(threshold {model.calibration.image_threshold:.4g}); now {after.label}{moved}")


def check_defect_name(defect: str | None) -> str:
    """``defect`` when it can name a folder under ``test/``: a plain folder name other than ``good``.

    Raises:
        FeedbackError: none given, not a plain folder name, or ``good`` (the message says what was found).
    """
    if not defect or not defect.strip():
        raise FeedbackError("expected a defect name (e.g. scratch), found none")
    try:
        validate_name(defect, "defect name")
    except ModelStoreError as exc:
        raise FeedbackError(str(exc)) from None
    if defect == "good":
        raise FeedbackError("expected a defect name, found 'good': use Mark as OK for good parts")
    return defect


def mark_defect(model: det.LoadedModel, image: np.ndarray, name: str, data_root: Path, defect: str) -> FeedbackResult:
    """File ``image`` under ``<data_root>/<category>/test/<defect>/`` as a PNG (never overwriting a file).

    Raises:
        FeedbackError: ``defect`` is not a plain folder name, or ``good`` (use Mark as OK for that).
        ModelStoreError: the feedback log is damaged (nothing is changed).
    """
    store = ModelStore(model.ref.store)
    store.read_feedback(model.category, model.kind)
    check_defect_name(defect)
    category_dir = Path(data_root) / model.category
    if not category_dir.is_dir():
        raise FeedbackError(f"expected the category folder {category_dir}, found nothing there")
    digest = image_sha1(image)
    folder = category_dir / "test" / defect
    target = folder / f"feedback_{digest[:12]}.png"
    if not target.exists():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        atomic_write_bytes(target, buffer.getvalue())
    store.append_feedback(model.category, model.kind, {
        "time": now_iso(), "action": MARK_DEFECT, "image": name, "sha1": digest, "defect": defect,
        "filed_as": str(target), "version_before": model.version, "version_after": model.version})
    logger.info("feedback %s/%s: %s filed as a %r defect: %s", model.category, model.kind, name, defect, target)
    return FeedbackResult(MARK_DEFECT, model.ref, model.ref, digest, None, None, target,
                          f"{name} filed as a '{defect}' defect: {target}")


def undoable(entries: list[dict[str, Any]]) -> int | None:
    """Index in the log of the newest action not yet undone (None when there is none)."""
    undone = {e.get("undoes") for e in entries if e.get("action") == UNDO}
    for index in range(len(entries) - 1, -1, -1):
        if entries[index].get("action") in (MARK_OK, MARK_DEFECT) and index not in undone:
            return index
    return None


def undo(store: ModelStore, category: str, kind: str) -> str:
    """Undo the newest feedback action not yet undone; returns what was done.

    Raises:
        FeedbackError: nothing to undo, or the model has moved on since (another version was made current).
        ModelStoreError: the feedback log is damaged (nothing is changed).
    """
    entries = store.read_feedback(category, kind)
    index = undoable(entries)
    if index is None:
        raise FeedbackError(f"nothing to undo for {category}/{kind}")
    entry = entries[index]
    current = store.current(category, kind)
    if entry["action"] == MARK_OK:
        if current.version == entry["version_before"]:
            # the pointer is back already (an undo stopped between moving it and logging): only log it
            logger.info("%s/%s: v%s is current already; logging the undo of %s", category, kind,
                        entry["version_before"], entry["image"])
        elif current.version != entry["version_after"]:
            raise FeedbackError(f"not undone: the current version is v{current.version}, not v{entry['version_after']} "
                                f"that marking {entry['image']} made; switch versions on the Models page instead")
        else:
            store.use(store.ref(category, kind, int(entry["version_before"])))
        message = f"undone: {entry['image']} no longer marked OK; v{entry['version_before']} is current again"
    else:
        undone = {e.get("undoes") for e in entries if e.get("action") == UNDO} | {index}
        still_filed = any(e.get("filed_as") == entry["filed_as"] and i not in undone
                          for i, e in enumerate(entries) if e.get("action") == MARK_DEFECT)
        if not still_filed:  # the same image marked twice stays until both marks are undone
            Path(entry["filed_as"]).unlink(missing_ok=True)
        message = f"undone: {entry['image']} removed from the '{entry['defect']}' test images"
    store.append_feedback(category, kind, {"time": now_iso(), "action": UNDO, "undoes": index,
                                           "version_before": current.version,
                                           "version_after": store.current(category, kind).version})
    logger.info("feedback %s/%s: %s", category, kind, message)
    return message
