"""The review queue: line results a person still has to look at (REVIEW and DEFECT), and their decisions.

:func:`pending` lists the line results (service and watch folder, from :class:`core.store.history.History`) that
nobody has reviewed yet, newest first. :func:`decide` takes a person's answer on one of them:

- **OK** (a good part): for a kind that learns from feedback (``spec(kind).learns_from_feedback``, PatchCore) the
  stored image is marked OK on the model's *current* version (:func:`core.verdict.feedback.mark_ok`: the bank
  grows, a new version). An image the current version scores far above its threshold
  (:func:`core.verdict.feedback.far_above`, for every kind: it would also join the recalibration set) is not
  taken without ``force``: the answer is a :class:`ReviewOutcome` with ``needs_confirmation`` set and nothing
  written, and the caller asks (as Inspect does). The result counts as a confirmed good part for
  *Recalibrate from the line* (:func:`confirmed_good`), whether the kind learns from it or not.
- **DEFECT** (with a defect type): the stored image is filed under ``<data_root>/<category>/test/<defect>/``
  (:func:`core.verdict.feedback.mark_defect`) for the next evaluation.

Every decision is one audit row in ``history.reviews()`` (who, when, the version that judged the image, what it
said, and in ``note`` what was done with it).

What is written when something is wrong (the rule): a decision the person could not have based on the image, or
whose action cannot be carried out, writes **nothing** and raises :class:`ReviewError` saying what was expected
and found: the stored image is missing or is not an image, the result names no model or one of no trained kind,
no version of its kind exists any more, a DEFECT has no defect type (or ``good``), the data root has no folder
for the category, the result was reviewed already. The item stays in the queue (the page offers Skip). A model
*version* that no longer exists is no obstacle as long as the kind has a current version: feedback always goes to
the current version, and the audit row still names the version that judged the image. When the model refuses to
learn an OK image (it does not look like the product's images, it gives no verdict) the decision is still a
person's word on a good part: the audit row is written, its note and the outcome say that nothing was taught.

**Once, whatever the number of reviewers and crashes.** A decision is *claimed* before its action runs
(:meth:`History.record_review` ``first=True``: checked and written in one transaction), so of two reviewers
answering the same part at once one acts and the other is refused; a decision whose action fails is withdrawn.
The claim's note says :data:`CLAIMED` until the action is done. A process killed in between leaves a claim that
nobody finishes: once it is older than :data:`CLAIM_LEASE_S` it is *settled* (:func:`settle_claims`, run by
:func:`pending` and :func:`decide`) from what the model's feedback log says happened: an action logged for the
image since the claim (the mark was done): the claim is kept, its note says so; none: the claim is withdrawn and
the part is back in the queue, to be answered again. So after a crash at any step the part is either decided with
its action done once, or waiting with nothing done (tests/test_review_race.py kills the decision at every step;
benchmarks/bench_review_race.py repeats the race). Crash tests stop the decision between its steps through
``core.files.STEP_HOOK`` (:data:`STEPS`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import files
from core.data.imageio import ImageLoadError, load_image
from core.models.registry import spec
from core.portable import DEFECT, OK, REVIEW
from core.store import history as hist
from core.store import lifecycle as det
from core.store.history import History, ResultRow, ReviewRow, Time
from core.store.model_store import ModelRef, ModelStore, ModelStoreError
from core.verdict import feedback
from core.verdict.feedback import FarAbove, FeedbackError, FeedbackResult, NeedsConfirmation
from core.verdict.inspection import inspect

logger = logging.getLogger(__name__)

DECISIONS = hist.DECISIONS  # ("OK", "DEFECT")
QUEUED = (REVIEW, DEFECT)  # the verdicts a person reviews by default
QUEUE_LIMIT = 500
CLAIMED = "deciding: the action is being taken"  # the note of a decision whose action has not finished
CLAIM_LEASE_S = 1800.0  # a claim unfinished after this long was left by a process that died (an action takes
# seconds, minutes on a loaded machine: a live decision must never be settled under its feet)
STEPS = ("review claimed", "review action done", "review noted")  # the decision's steps (core.files.step)
ACTIONS = {OK: feedback.MARK_OK, DEFECT: feedback.MARK_DEFECT}  # the feedback action a decision logs

Loader = Callable[[ModelRef], det.LoadedModel]


class ReviewError(ValueError):
    """A decision that cannot be taken (nothing was written); the message says what was expected and found."""


@dataclass(frozen=True)
class ReviewOutcome:
    """What :func:`decide` did with one answer.

    ``review``: the audit row written (None: nothing was written, see ``needs_confirmation``). ``feedback``: the
    feedback action taken (None for an OK the kind does not learn from, or one the model refused: ``message``
    says which). ``needs_confirmation``: the image scores far above the threshold, so it was not marked OK; ask
    the person and call :func:`decide` again with ``force=True``.
    """

    result: ResultRow
    decision: str
    review: ReviewRow | None
    feedback: FeedbackResult | None
    needs_confirmation: FarAbove | None
    message: str

    @property
    def recorded(self) -> bool:
        return self.review is not None


@dataclass(frozen=True)
class ConfirmedGood:
    """A line result a person confirmed OK, with its stored image (``path``, a file that exists)."""

    result: ResultRow
    review: ReviewRow

    @property
    def path(self) -> Path:
        return Path(str(self.result.path))


def pending(history: History, category: str | None = None, kind: str | None = None,
            verdicts: Sequence[str] = QUEUED, since: Time | None = None, limit: int | None = QUEUE_LIMIT, *,
            source: str | None = None, until: Time | None = None, skip: Collection[int] = (),
            store: ModelStore | None = None, spot_checks: bool = True) -> list[ResultRow]:
    """Line results with a verdict in ``verdicts`` that nobody reviewed yet, newest first (time, then id), at
    most ``limit`` (None: all); filtered by ``category``, ``kind``, ``source`` (``service``, ``watch``), the time
    window ``since <= time < until``, and without the ids in ``skip`` (the ones a person skipped). ``store``:
    abandoned claims are settled first (:func:`settle_claims`), so a part whose decision a crash cut short is
    back in the queue. ``spot_checks``: the spot-checked OK verdicts (``ResultRow.spot_check``: 1 in
    ``INSPECT_SPOT_CHECK`` by image hash) are in the queue too; a person's OK on one of them is an unbiased
    confirmed good for *Recalibrate from the line*."""
    if store is not None:
        settle_claims(history, store, category=category)
    return history.unreviewed(verdicts, category=category, kind=kind, source=source, since=since, until=until,
                              skip=list(skip), limit=limit, spot_checks=spot_checks)


@dataclass(frozen=True)
class Settled:
    """An abandoned claim settled: ``kept`` (its action had been done: the note says so) or withdrawn."""

    review: ReviewRow
    kept: bool
    note: str


def settle_claims(history: History, store: ModelStore, *, category: str | None = None,
                  result_id: int | None = None, now: float | None = None) -> list[Settled]:
    """Settle the claims older than :data:`CLAIM_LEASE_S` whose action never reported done (their process died):
    kept when the model's feedback log holds the decision's action for the image since the claim (or the
    decision has no action: an OK for a kind that does not learn), else withdrawn (the part is back in the
    queue). ``now``: epoch s (tests)."""
    before = (time.time() if now is None else now) - CLAIM_LEASE_S
    settled = []
    for claim in history.reviews(category=category, result_id=result_id, note=CLAIMED, until=before, limit=None):
        result = history.result(claim.result_id)
        done = None if result is None else _action_logged(store, result, claim)
        if done is None:
            if not history.withdraw_review(claim.id, if_note=CLAIMED):
                continue  # its process finished it after all, between the query and now
            settled.append(Settled(claim, False, "withdrawn: its action was not done"))
            logger.warning("review %d of %s by %s: abandoned before its action; withdrawn, the part is back in the "
                           "queue", claim.id, claim.result_id, claim.reviewer)
            continue
        note = f"settled after an interruption: {done}"
        history.set_review_note(claim.id, note)
        settled.append(Settled(dataclasses.replace(claim, note=note), True, note))
        logger.warning("review %d of %s by %s: abandoned after its action; kept (%s)", claim.id, claim.result_id,
                       claim.reviewer, done)
    return settled


def _action_logged(store: ModelStore, result: ResultRow, claim: ReviewRow) -> str | None:
    """What the feedback log says the claimed decision did (None: nothing, or the image cannot be read)."""
    if claim.decision == OK and result.kind and not _learns(result.kind):
        return "kept as a confirmed good for recalibration (nothing to teach)"
    try:
        digest = feedback.image_sha1(stored_image(result))
        entries = store.read_feedback(result.category, str(result.kind))
    except (ReviewError, ModelStoreError, OSError):
        return None
    for entry in reversed(entries):
        when = entry.get("time")
        try:
            logged = dt.datetime.fromisoformat(str(when)).timestamp()
        except ValueError:
            continue
        if (entry.get("action") == ACTIONS[claim.decision] and entry.get("sha1") == digest
                and logged >= claim.time - 1.0):  # the log's times are whole seconds
            return f"{entry['action']} logged at {when}" + (f" ({entry['filed_as']})" if entry.get("filed_as") else "")
    return None


def _learns(kind: str) -> bool:
    try:
        return spec(kind).learns_from_feedback
    except ValueError:
        return False


def confirmed_good(history: History, category: str, kind: str, limit: int | None = None,
                   spot_checked: bool | None = None) -> list[ConfirmedGood]:
    """The line results of ``category``/``kind`` a person confirmed OK, newest decision first, at most ``limit``,
    only those whose stored image is still on disk (what *Recalibrate from the line* fits thresholds from). A
    result reviewed more than once counts by its latest decision (OK, then DEFECT: not a confirmed good).
    ``spot_checked``: True, only spot checks (the unbiased sample of OK verdicts); False, only the others (REVIEW
    and DEFECT verdicts, the high-scoring goods); None: both."""
    found: list[ConfirmedGood] = []
    for result, latest in history.latest_decisions(category, kind):
        if latest.decision != OK or not Path(str(result.path)).is_file():
            continue
        if spot_checked is not None and bool(result.spot_check) != spot_checked:
            continue
        found.append(ConfirmedGood(result, latest))
        if limit is not None and len(found) >= limit:
            break
    return found


def stored_image(result: ResultRow) -> np.ndarray:
    """The image a line result kept (uint8 RGB ``[H, W, 3]``).

    Raises:
        ReviewError: the result kept no image, its file is gone, or the file is not an image.
    """
    if not result.path:
        raise ReviewError(f"{_label(result)}: expected a stored image to review, found none: the row keeps no path "
                          "(the service keeps REVIEW and DEFECT uploads only since the review queue exists)")
    path = Path(result.path)
    if not path.is_file():
        raise ReviewError(f"{_label(result)}: expected its stored image at {path}, found nothing there (moved or "
                          "deleted); nothing recorded")
    try:
        return load_image(path)
    except ImageLoadError as exc:
        raise ReviewError(f"{_label(result)}: expected an image at {path}, found {exc.reason}; nothing recorded") \
            from None


def model_for(store: ModelStore, result: ResultRow, load: Loader = det.load) -> tuple[det.LoadedModel, str]:
    """The model feedback on ``result`` goes to: the current version of its category and kind (the one that
    judged it may be older, or gone), and a note when that is not the version that judged it.

    Raises:
        ReviewError: the result names no model, a kind the product does not know, or a kind with no version now.
    """
    if not result.kind:
        raise ReviewError(f"{_label(result)}: expected the model that judged it, found none in the row")
    try:
        spec(result.kind)
        ref = store.current(result.category, result.kind)
        model = load(ref)
    except (ValueError, ModelStoreError) as exc:
        raise ReviewError(f"{_label(result)}: expected a trained {result.category}/{result.kind} model to take the "
                          f"decision to, found: {exc}; nothing recorded") from None
    note = ""
    if result.version is not None and result.version != ref.version:
        gone = result.version not in store.version_numbers(result.category, result.kind)
        note = (f" (v{result.version} that judged it {'no longer exists' if gone else 'is not current'}: "
                f"taken to {ref.label})")
    return model, note


def decide(history: History, store: ModelStore, data_root: Path, result: ResultRow, decision: str, reviewer: str,
           defect: str | None = None, force: bool = False, load: Loader = det.load) -> ReviewOutcome:
    """Take ``reviewer``'s ``decision`` (``OK`` or ``DEFECT`` with the type ``defect``) on line result ``result``:
    the feedback action, then the audit row (see the module docstring for what happens and what is written when
    something is wrong). ``force``: the person confirmed OK for an image far above the threshold. ``load``: how a
    model version is loaded (the dashboard passes its cache).

    Raises:
        ReviewError: the decision cannot be taken; nothing was written.
    """
    if decision not in DECISIONS:
        raise ReviewError(f"expected a decision of {' or '.join(DECISIONS)}, found {decision!r}")
    if not reviewer.strip():
        raise ReviewError("expected the reviewer's name, found an empty one")
    if decision == OK and defect:
        raise ReviewError(f"expected no defect type with an OK decision, found {defect!r}")
    if decision == DEFECT:
        _check_defect(defect)
    settle_claims(history, store, result_id=result.id)
    done = history.reviews(result_id=result.id, limit=1)
    if done:  # a quick refusal; the claim below is the one that holds when two reviewers answer at once
        raise ReviewError(f"{_label(result)}: {hist.AlreadyReviewed(done[0])}")
    image = stored_image(result)
    model, moved = model_for(store, result, load)
    name = result.name or Path(str(result.path)).name
    if decision == OK:
        return _confirm_ok(history, model, image, name, result, reviewer, force, moved)
    row = _claim(history, result, DEFECT, reviewer, defect)
    try:
        action = feedback.mark_defect(model, image, name, data_root, str(defect))
        files.step(STEPS[1])
    except (FeedbackError, ModelStoreError) as exc:
        history.withdraw_review(row.id)
        raise ReviewError(f"{_label(result)}: not filed as a {defect!r} defect: {exc}; nothing recorded") from None
    except BaseException:
        history.withdraw_review(row.id)
        raise
    note = f"filed as {action.filed_as}{moved}"
    row = _done(history, row, note)
    logger.info("review %s by %s: DEFECT %r, %s", _label(result), reviewer, defect, note)
    return ReviewOutcome(result, DEFECT, row, action, None, f"{name}: DEFECT ({defect}) recorded, {note}")



def _claim(history: History, result: ResultRow, decision: str, reviewer: str, defect: str | None) -> ReviewRow:
    """Record the decision first, refused when another reviewer's came first (one transaction), so its action
    (teaching the model, filing the image) runs once whatever the number of reviewers answering."""
    try:
        claimed = history.record_review(result.id, decision, reviewer, defect=defect, note=CLAIMED, first=True)
    except hist.AlreadyReviewed as exc:
        raise ReviewError(f"{_label(result)}: {exc}; nothing done") from None
    files.step(STEPS[0])
    return claimed


def _done(history: History, row: ReviewRow, note: str) -> ReviewRow:
    history.set_review_note(row.id, note)
    files.step(STEPS[2])
    return dataclasses.replace(row, note=note)


def _confirm_ok(history: History, model: det.LoadedModel, image: np.ndarray, name: str, result: ResultRow,
                reviewer: str, force: bool, moved: str) -> ReviewOutcome:
    action: FeedbackResult | None = None
    kind = spec(model.kind)
    try:  # the safeguard holds for every kind: a confirmed good also joins the recalibration set
        far = feedback.needs_confirmation(model, inspect(model, [image])[0].score)
    except ModelStoreError as exc:
        raise ReviewError(f"{_label(result)}: {exc}; nothing recorded") from None
    if far is not None and not force:
        return _ask(result, name, far)
    claim = _claim(history, result, OK, reviewer, None)
    if result.spot_check and result.verdict == OK:  # the unbiased sample: in the bank it would re-score ~0
        note = "spot check confirmed good: kept for recalibration, not taught to the model"
    elif not kind.learns_from_feedback:
        note = f"{kind.label} does not learn from one image: kept as a confirmed good for recalibration"
    else:
        try:
            action = feedback.mark_ok(model, image, name, confirm_far_above=force)
        except NeedsConfirmation as exc:  # another version became current meanwhile, and it scores it far above
            history.withdraw_review(claim.id)
            return _ask(result, name, exc.far)
        except (FeedbackError, ModelStoreError) as exc:
            note = f"not taught to the model: {exc}"
        except BaseException:
            history.withdraw_review(claim.id)
            raise
        else:
            note = f"marked OK: {action.before.label} -> {action.after.label}"
    files.step(STEPS[1])
    note += moved
    row = _done(history, claim, note)
    logger.info("review %s by %s: OK, %s", _label(result), reviewer, note)
    return ReviewOutcome(result, OK, row, action, None, f"{name}: OK recorded, {note}")


def _ask(result: ResultRow, name: str, far: FarAbove) -> ReviewOutcome:
    return ReviewOutcome(result, OK, None, None, far,
                         f"{name}: not recorded yet: {far.describe()}. It looks like a clear defect: confirm OK to "
                         "record it as a good part (and teach the model that it is normal)")


def _check_defect(defect: str | None) -> None:
    try:
        feedback.check_defect_name(defect)
    except FeedbackError as exc:
        raise ReviewError(f"expected a defect type with a DEFECT decision: {exc}") from None


def _label(result: ResultRow) -> str:
    return f"line result {result.id} ({result.name or 'unnamed'}, {result.category}, {result.source})"


__all__ = ["CLAIM_LEASE_S", "DECISIONS", "QUEUED", "STEPS", "ConfirmedGood", "ReviewError", "ReviewOutcome",
           "Settled", "confirmed_good", "decide", "model_for", "pending", "settle_claims", "stored_image"]
