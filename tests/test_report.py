"""The shift report (core/line/report.py): a hand-made history in a SQLite file, counts and review outcomes
computed by hand, the HTML and PDF renderings, the CLI and the empty range."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.line import report as rep
from core.scores.calibration import calibrate
from core.store.history import History
from core.store.model_store import ModelStore
from core.types import Prediction

CATEGORY = "widget"
T0 = dt.datetime(2026, 3, 2, 14, 0).timestamp()  # a local 14:00: shift 2 of the default starts (6, 14, 22)
HOUR = 3600.0


def _calibration(n: int = 40) -> dict:
    """A calibration of n good scores 1.00 .. 1.39 (threshold and promise by the product's own rule)."""
    good = [Prediction(1.0 + i / 100, np.full((4, 4), 0.5 + i / 1000, dtype=np.float32), 1.0) for i in range(n)]
    return calibrate(good, f"test goods (n={n})").to_dict()


@pytest.fixture()
def store(tmp_path: Path) -> ModelStore:
    """A store with two PatchCore versions of ``widget`` (their calibrations only matter here)."""
    import torch

    made = ModelStore(tmp_path / "models")
    manifest = {"category": CATEGORY, "kind": "patchcore", "settings": {}}
    made.create_version(CATEGORY, "patchcore", manifest, _calibration(40), reason="trained",
                        weights={"w": torch.zeros(1)})
    made.create_version(CATEGORY, "patchcore", manifest, _calibration(80), reason="recalibrated",
                        parent=made.current(CATEGORY, "patchcore"))
    return made


def _png(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 48, 3), value, dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def history(tmp_path: Path, store: ModelStore) -> History:
    """The hand-made shift (14:00-22:00), 12 judged parts and one refusal, plus rows outside the range:

    ======  =====  =======  =====  =======  ==========================
    hour    ver    verdict  score  review   note
    ======  =====  =======  =====  =======  ==========================
    14:05   1      OK       1.10   -
    14:10   1      OK       1.20   OK       a reviewed OK
    14:20   1      REVIEW   1.30   OK       below the threshold: no false alarm
    14:30   1      REVIEW   1.50   OK       at/above the threshold: false alarm
    14:40   1      DEFECT   3.00   DEFECT   scratch
    15:05   1      DEFECT   4.00   OK, then DEFECT (dent): the latest decision counts
    15:10   1      OK       1.00   -
    15:20   2      OK       1.05   -
    15:30   2      REVIEW   1.60   DEFECT   dent
    15:40   2      DEFECT   5.00   -        the worst image, file kept
    15:50   2      DEFECT   2.50   OK       false alarm
    16:00   2      NO VERDICT -    -
    16:10   -      REJECTED -      -
    ======  =====  =======  =====  =======  ==========================
    """
    opened = History(f"sqlite:///{tmp_path / 'history.sqlite3'}", host="line-1")
    threshold = 1.45
    rows = [  # minutes after 14:00, version, verdict, score, [decisions]
        (5, 1, "OK", 1.10, []), (10, 1, "OK", 1.20, [("OK", None)]), (20, 1, "REVIEW", 1.30, [("OK", None)]),
        (30, 1, "REVIEW", 1.50, [("OK", None)]), (40, 1, "DEFECT", 3.00, [("DEFECT", "scratch")]),
        (65, 1, "DEFECT", 4.00, [("OK", None), ("DEFECT", "dent")]), (70, 1, "OK", 1.00, []),
        (80, 2, "OK", 1.05, []), (90, 2, "REVIEW", 1.60, [("DEFECT", "dent")]), (100, 2, "DEFECT", 5.00, []),
        (110, 2, "DEFECT", 2.50, [("OK", None)]), (120, 2, "NO VERDICT", None, []),
    ]
    kept = _png(tmp_path / "line" / "defect" / "worst.png", 200)
    for i, (minute, version, verdict, score, decisions) in enumerate(rows):
        when = T0 + minute * 60
        made = opened.record_result(time=when, source="watch", category=CATEGORY, kind="patchcore", version=version,
                                    verdict=verdict, score=score, threshold=threshold, name=f"part-{i:02d}.png",
                                    journal_id=f"j{i}", path=str(kept) if score == 5.00 else
                                    str(tmp_path / "gone" / f"part-{i:02d}.png"))
        for j, (decision, defect) in enumerate(decisions):
            opened.record_review(made.id, decision, "ann", defect=defect, time=when + 600 + j)
    opened.record_result(time=T0 + 130 * 60, source="service", category=CATEGORY, verdict="REJECTED",
                         reason="not an image", status=415)
    # outside the range or another category: never counted
    opened.record_result(time=T0 - 60, source="watch", category=CATEGORY, kind="patchcore", version=1,
                         verdict="DEFECT", score=9.0, threshold=threshold, journal_id="before")
    opened.record_result(time=T0 + 8 * HOUR, source="watch", category=CATEGORY, kind="patchcore", version=2,
                         verdict="DEFECT", score=9.5, threshold=threshold, journal_id="after")
    opened.record_result(time=T0 + 60, source="watch", category="other", kind="patchcore", version=1,
                         verdict="DEFECT", score=9.9, threshold=threshold, journal_id="other")
    opened.record_alarm(category=CATEGORY, kind="patchcore", version=2, rule="cusum", statistic=7.5, limit=5.0,
                        message="line scores drifted above the calibration", time=T0 + 100 * 60)
    opened.record_alarm(category=CATEGORY, kind="patchcore", rule="cusum", message="yesterday's alarm",
                        time=T0 - 20 * HOUR)
    yield opened
    opened.close()


def _report(history: History, store: ModelStore, worst: int = rep.WORST) -> rep.ShiftReport:
    return rep.shift_report(history, store, CATEGORY, T0, T0 + 8 * HOUR, thumbnailer=rep.plain_thumbnailer(24),
                            now=T0 + 9 * HOUR, worst=worst)


def test_counts_per_verdict_and_the_trend_are_the_hand_counted_ones(history: History, store: ModelStore) -> None:
    report = _report(history, store)
    assert report.counts == {"OK": 4, "REVIEW": 3, "DEFECT": 4, "NO VERDICT": 1, "REJECTED": 1}
    assert report.judged == 11 and report.total == 13 and not report.empty
    assert report.bucket == "hour"
    hours = {b.label[-5:]: (b.total, b.counts) for b in report.trend}
    assert hours == {"14:00": (5, {"OK": 2, "REVIEW": 2, "DEFECT": 1}),
                     "15:00": (6, {"DEFECT": 3, "OK": 2, "REVIEW": 1}),
                     "16:00": (1, {"NO VERDICT": 1})}


def test_review_outcomes_per_model_verdict_use_the_latest_decision(history: History, store: ModelStore) -> None:
    outcomes = {o.model_verdict: o for o in _report(history, store).outcomes}
    assert [o for o in outcomes] == ["OK", "REVIEW", "DEFECT"]
    assert (outcomes["OK"].confirmed_ok, outcomes["OK"].confirmed_defect) == (1, 0)
    assert (outcomes["REVIEW"].confirmed_ok, outcomes["REVIEW"].confirmed_defect) == (2, 1)
    assert (outcomes["DEFECT"].confirmed_ok, outcomes["DEFECT"].confirmed_defect) == (1, 2)
    assert outcomes["DEFECT"].defects == {"scratch": 1, "dent": 1} and outcomes["REVIEW"].defects == {"dent": 1}
    assert outcomes["DEFECT"].reviewed == 3 and outcomes["DEFECT"].judged == 4


def test_the_promise_per_version_against_what_the_reviews_showed(history: History, store: ModelStore) -> None:
    checks = {c.version: c for c in _report(history, store).promises}
    assert sorted(checks) == [1, 2]
    one, two = checks[1], checks[2]
    assert one.kind == "patchcore" and one.promised == pytest.approx(0.05) and one.n == 40
    assert two.n == 80 and one.bound is not None and 0 < one.bound <= 0.05 + 1e-9
    assert one.statement and "n=40" in one.statement
    # version 1: 7 judged; at/above the 1.45 threshold: 1.50, 3.00, 4.00 (3 flagged), all reviewed;
    # confirmed good among them: 1.50 only; parts not confirmed defective: 7 - 2 = 5
    assert (one.judged, one.flagged, one.reviewed_flagged, one.false_alarms, one.goods_seen) == (7, 3, 3, 1, 5)
    assert one.good_share_of_flagged == pytest.approx(1 / 3)
    assert one.false_alarm_low == pytest.approx(1 / 5) and one.false_alarm_high == pytest.approx(1 / 5)
    # version 2: 4 judged with a score (NO VERDICT has none); flagged 1.60, 5.00, 2.50; reviewed 1.60 (DEFECT),
    # 2.50 (OK); 5.00 not reviewed; goods seen 4 - 1 = 3 (the NO VERDICT part is not judged)
    assert (two.judged, two.flagged, two.reviewed_flagged, two.false_alarms, two.goods_seen) == (4, 3, 2, 1, 3)
    assert two.false_alarm_low == pytest.approx(1 / 3) and two.false_alarm_high == pytest.approx(2 / 3)
    assert one.status == "above the promise" and two.status == "above the promise"


def test_drift_alarms_and_the_worst_images_in_the_range(history: History, store: ModelStore) -> None:
    report = _report(history, store, worst=3)
    assert [a.message for a in report.alarms] == ["line scores drifted above the calibration"]
    assert [w.result.score for w in report.worst] == [5.0, 4.0, 3.0]
    assert report.worst[0].thumbnail is not None and report.worst[0].thumbnail.png.startswith(b"\x89PNG")
    assert report.worst[1].thumbnail is None and "no longer there" in report.worst[1].note


class _Page(HTMLParser):
    """What a browser would see: text, tags and the img sources."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag in ("link", "script") or (tag == "a" and values.get("href", "").startswith("http")):
            self.links.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


def test_the_html_is_one_self_contained_printable_page_with_the_numbers(history: History,
                                                                        store: ModelStore) -> None:
    html = rep.render_html(_report(history, store))
    page = _parse(html)
    text = re.sub(r"\s+", " ", " ".join(page.text))
    assert "@media print" in html and "<style>" in html and not page.links
    assert "url(" not in html  # no external asset, not even from CSS
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert Image.open(io.BytesIO(base64.b64decode(page.images[0].split(",", 1)[1]))).size == (24, 16)  # 48 x 32 scaled to a 24 px long side
    for expected in ("Shift report", CATEGORY, "OK 4", "REVIEW 3", "DEFECT 4", "NO VERDICT 1", "REJECTED 1",
                     "line scores drifted above the calibration", "scratch 1", "dent 1", "n=40",
                     "part-09.png", "above the promise"):
        assert expected in text, expected
    assert "yesterday's alarm" not in text


def test_the_pdf_has_the_numbers_on_its_pages(history: History, store: ModelStore) -> None:
    pdf = rep.render_pdf(_report(history, store))
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    pypdf = pytest.importorskip("pypdf", reason="pypdf reads the PDF's text back (pip install pypdf)")
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    assert 1 <= len(reader.pages) <= 4
    text = re.sub(r"\s+", " ", " ".join(p.extract_text() for p in reader.pages))
    for expected in ("Shift report", CATEGORY, "line scores drifted above the calibration", "part-09.png",
                     "above the promise", "scratch 1"):
        assert expected in text, expected
    assert b"/Subtype /Image" in pdf  # the worst image's thumbnail


def test_an_empty_range_says_so_in_both_renderings(history: History, store: ModelStore) -> None:
    report = rep.shift_report(history, store, CATEGORY, T0 + 24 * HOUR, T0 + 32 * HOUR,
                              thumbnailer=rep.plain_thumbnailer(24))
    assert report.empty and report.judged == 0 and report.total == 0 and not report.promises
    assert rep.EMPTY in " ".join(_parse(rep.render_html(report)).text)
    pdf = rep.render_pdf(report)
    assert pdf.startswith(b"%PDF-")
    pypdf = pytest.importorskip("pypdf")
    assert rep.EMPTY in pypdf.PdfReader(io.BytesIO(pdf)).pages[0].extract_text()


def test_a_range_that_ends_before_it_begins_is_refused(history: History, store: ModelStore) -> None:
    with pytest.raises(ValueError, match="expected the range's end after its start"):
        rep.shift_report(history, store, CATEGORY, T0, T0 - 1)


def test_the_default_range_is_the_shift_holding_now() -> None:
    since, until = rep.current_shift(T0 + 3 * HOUR)
    assert (since, until) == (T0, T0 + 8 * HOUR)
    since, until = rep.current_shift(T0 - 9 * HOUR)  # 05:00: the night shift that began at 22:00
    assert (since, until) == (T0 - 16 * HOUR, T0 - 8 * HOUR)


def test_cli_writes_the_report(history: History, store: ModelStore, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    from core import cli

    monkeypatch.setenv("INSPECT_DATABASE_URL", history.label)
    since = dt.datetime.fromtimestamp(T0).isoformat()
    until = dt.datetime.fromtimestamp(T0 + 8 * HOUR).isoformat()
    out = tmp_path / "out" / "shift.html"
    args = ["report", "--store", str(store.root), "--category", CATEGORY, "--since", since, "--until", until,
            "--no-heatmaps"]
    assert cli.main([*args, "--out", str(out)]) == 0
    assert "DEFECT 4" in re.sub(r"\s+", " ", " ".join(_parse(out.read_text()).text))
    pdf = tmp_path / "shift.pdf"
    assert cli.main([*args, "--format", "pdf", "--out", str(pdf)]) == 0
    assert pdf.read_bytes().startswith(b"%PDF-")
    assert cli.main(["report", "--store", str(store.root), "--category", CATEGORY, "--since", until,
                     "--until", since, "--out", str(out)]) == 2  # a backwards range: an error, not a file


def test_the_heatmap_thumbnail_comes_from_the_model_that_judged_it(trained_store: Path, demo_root: Path) -> None:
    """The default thumbnailer scores the kept image with the version named in the row and draws its overlay."""
    from core.store.history import ResultRow

    store = ModelStore(trained_store)
    ref = store.current("demo_metal", "patchcore")
    image = next((demo_root / "demo_metal" / "test").glob("*/*.png"))
    row = ResultRow(id=1, time=T0, host="h", source="watch", ref="j", category="demo_metal", kind="patchcore",
                    version=ref.version, verdict="DEFECT", score=3.0, threshold=2.0, name=image.name,
                    image_sha1=None, path=str(image), latency_ms=None, reason=None, status=None, extra={})
    thumb = rep.model_thumbnailer(store, side=48)(row)
    assert thumb.heatmap and thumb.png is not None
    drawn = np.asarray(Image.open(io.BytesIO(thumb.png)).convert("RGB"))
    plain = np.asarray(Image.open(image).convert("RGB").resize(drawn.shape[1::-1]))
    assert max(drawn.shape[:2]) == 48 and np.abs(drawn.astype(int) - plain.astype(int)).mean() > 5  # coloured
    gone = rep.model_thumbnailer(store)(dataclasses.replace(row, version=99))
    assert not gone.heatmap and gone.png is not None and "99" in gone.note  # the image alone, with the reason


def test_the_line_page_ends_with_the_shift_report_and_its_two_downloads(demo_root: Path, trained_store: Path,
                                                                         tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import time

    from streamlit.testing.v1 import AppTest

    from core.line import results_log as line_log
    from ui import report_view

    root = Path(__file__).resolve().parents[1]
    models = tmp_path / "models"
    shutil.copytree(trained_store, models)
    log = tmp_path / "line.jsonl"
    for env, value in (("INSPECT_DATA_ROOT", demo_root), ("INSPECT_MODEL_STORE", models), ("INSPECT_LINE_LOG", log)):
        monkeypatch.setenv(env, str(value))
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.delenv("INSPECT_DATABASE_URL", raising=False)
    image = next((demo_root / "demo_metal" / "test").glob("*/*.png"))
    now = time.time()
    since, until = rep.current_shift(now)
    line_log.append(log, {"time": now, "source": "watch", "id": "j1", "category": "demo_metal",
                          "name": image.name, "score": 9.0, "threshold": 1.0, "verdict": "DEFECT",
                          "model": "patchcore", "version": 1, "latency_ms": 10.0, "path": str(image)})
    at = AppTest.from_string((root / "app.py").read_text(), default_timeout=120)
    at.run()
    at.switch_page(str(root / "pages" / "line.py"))
    at.run()
    assert not at.exception, at.exception
    assert at.subheader[-1].value == "Shift report"
    buttons = at.get("download_button")
    assert [b.proto.label for b in buttons[-2:]] == ["Download HTML", "Download PDF"]
    # what the buttons hand over when clicked: the report of the chosen range (default: the current shift)
    store = ModelStore(models)
    made = report_view.report_file(store, "demo_metal", since, until, None, "html")()
    page = _parse(made.decode())
    assert "DEFECT 1" in re.sub(r"\s+", " ", " ".join(page.text)) and page.images  # its heatmap thumbnail
    assert report_view.report_file(store, "demo_metal", since, until, "patchcore", "pdf")().startswith(b"%PDF-")
    at.date_input(key="shift_report_to_day").set_value(dt.date.fromtimestamp(since) - dt.timedelta(days=2)).run()
    assert any("Expected the end after the start" in e.value for e in at.error)



def test_the_report_takes_the_history_shift_rule_by_its_public_name() -> None:
    """One shift rule (core.store.history.shift_bucket), imported by its public name: no module of core/ reaches
    into another's private names."""
    import ast

    from core.store import history as hist

    source = Path(rep.__file__).read_text()
    private = [f"{node.module}.{alias.name}" for node in ast.walk(ast.parse(source))
               if isinstance(node, ast.ImportFrom) for alias in node.names if alias.name.startswith("_")]
    assert private == []
    assert "shift_bucket" in hist.__all__ and "hour_bucket" in hist.__all__
    start, end, label = hist.shift_bucket(dt.datetime(2026, 3, 2, 3, 0).timestamp(), None, (6, 14, 22))
    assert rep.current_shift(dt.datetime(2026, 3, 2, 3, 0)) == (start, end) and label.endswith("shift 3")
