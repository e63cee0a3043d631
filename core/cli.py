"""Command line: ``python -m core train|evaluate|predict|list|versions|feedback|users|demo``.

Exit codes: 0 success; 1 finished but some inputs could not be used (named on stderr); 2 bad arguments,
missing data or a broken model; 130 cancelled. Heavy packages (torch, anomalib) are imported only by the
command that needs them, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import logs
from core import settings as app_settings
from core.models.registry import INFERENCE_PATHS, kinds, settings_from_options, spec, train_options
from core.store.model_store import ModelStore, ModelStoreError, validate_name

if TYPE_CHECKING:
    from core.types import TrainControl

EXAMPLES = """examples:
  python -m core demo --out demo_data
  python -m core train --data demo_data --category demo_metal --model patchcore
  python -m core train --data demo_data --category demo_metal --model efficientad --steps 1000
  python -m core evaluate --data demo_data --category demo_metal --model patchcore
  python -m core predict --category demo_metal --overlays out/ demo_data/demo_metal/test/scratch
  python -m core list
  python -m core feedback --category demo_metal part_0042.png      # mark OK: PatchCore learns it
  python -m core serve --port 8600
  python -m core report --category demo_metal --out shift.pdf   # the current shift's report
  python -m core batch --category demo_metal archive/ "more/*.png" list.csv [--ray HOST:6379]  # re-inspect
  python -m core train-all --data demo_data [--ray HOST:6379]   # every category, one Ray task each

The model store is INSPECT_MODEL_STORE when set, else models/ in the repository (the dashboard's too).
Exit codes: 0 ok, 1 done but some inputs were unusable, 2 bad arguments / missing data / broken model,
130 cancelled."""


def _progress_printer() -> TrainControl:
    from core.types import TrainControl

    last = {"pct": -1}

    def show(message: str, fraction: float) -> None:
        pct = int(fraction * 100)
        if pct != last["pct"]:
            last["pct"] = pct
            print(f"[{pct:3d}%] {message}", file=sys.stderr, flush=True)

    return TrainControl(progress=show, cancel=threading.Event())


def _settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the ``train`` flags of ``args.model`` set (its options in the kind table).

    Raises:
        ValueError: a flag of another kind was given.
    """
    values = {name: getattr(args, option.dest, None) for name, (option, _) in train_options().items()}
    return settings_from_options(args.model, values)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """``train``'s model flags, one per option in the kind table (a flag only some kinds have says which)."""
    every = kinds()
    for name, (option, owners) in train_options().items():
        more = "" if owners == every else f" [{', '.join(owners)}]"
        default = f" (default {option.default})" if option.default is not None else ""
        nargs: int | str | None = len(option.fields) if len(option.fields) > 1 else ("+" if option.many else None)
        p.add_argument(f"--{name}", dest=option.dest, type=option.type, nargs=nargs,
                       choices=option.choices or None, metavar=option.metavar, help=option.help + default + more)


def _load_data(args: argparse.Namespace):
    from core.data.dataset import load_category, load_folder

    if args.category:
        return load_category(args.data, validate_name(args.category, "category name"))
    return load_folder(args.data)


def _model(args: argparse.Namespace):
    """The saved model the arguments name (``--version`` or the current one), loaded."""
    from core.store import lifecycle as det

    store = ModelStore(args.store)
    ref = store.ref(validate_name(args.category, "category name"), args.model, getattr(args, "version", None))
    return det.load(ref, getattr(args, "inference", "fast"))


def cmd_train(args: argparse.Namespace) -> int:
    from core.data.imageio import median_shape
    from core.store import lifecycle as det

    data = _load_data(args)
    validate_name(data.name, "category name")  # before any training, not after it
    if data.problems:
        for p in data.problems:
            print(f"warning: {p}", file=sys.stderr)
    settings = _settings_from_args(args)
    shape = median_shape([s.path for s in data.train])
    forecast = spec(args.model).training_forecast(settings, len(data.train), shape)
    if forecast is not None:
        from core.progress import busy_note_now

        busy = busy_note_now()
        print(forecast + (f"; {busy}" if busy else ""), file=sys.stderr, flush=True)
    result = det.train(data, args.model, settings, ModelStore(args.store), _progress_printer(),
                       resume=args.resume, reason=args.reason or "trained")
    for p in result.problems:
        print(f"unreadable, skipped: {p}", file=sys.stderr)
    choice = det.input_choice_of(result.manifest)
    if choice is not None:
        print(choice.summary(), file=sys.stderr)
    print(json.dumps({"model": result.ref.label, "folder": str(ModelStore(args.store).path(result.ref)),
                      "train": result.manifest["train"],
                      **({"input_choice": result.manifest["input_choice"]} if choice is not None else {}),
                      "image_threshold": result.calibration.image_threshold,
                      "pixel_threshold": result.calibration.pixel_threshold}, indent=2, default=float))
    return 1 if result.problems else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from core.data.dataset import load_category
    from core.store import lifecycle as det

    data = load_category(args.data, validate_name(args.category, "category name"))
    model = _model(args)
    result = det.run_evaluation(model, data, _progress_printer())
    print(json.dumps({"overall": result.overall, "per_defect": result.per_defect}, indent=2, default=float))
    for p in result.problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if result.unreadable else 0


def _expand(paths: list[Path]) -> list[Path]:
    """The image files named: files as given, folders searched recursively.

    Raises:
        FileNotFoundError: a path names nothing (checked before any model is loaded).
    """
    from core.data.imageio import SUPPORTED_SUFFIXES

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"expected images or folders, found nothing there: {', '.join(missing)}")
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in SUPPORTED_SUFFIXES))
        else:
            out.append(p)
    return out


def cmd_predict(args: argparse.Namespace) -> int:
    from core.data.imageio import SUPPORTED_SUFFIXES, ImageLoadError, load_image
    from core.verdict import inspection

    paths = _expand(args.images)
    if not paths:
        print(f"error: no images ({', '.join(SUPPORTED_SUFFIXES)}) in {', '.join(map(str, args.images))}: "
              "nothing scored", file=sys.stderr)
        return 1
    model = _model(args)
    print(f"{model.ref.label} loaded; warm-up {model.warmup_ms:.0f} ms (not counted in latency_ms)", file=sys.stderr)
    failures = 0
    writer = csv.writer(sys.stdout)
    writer.writerow(["path", "score", "threshold", "verdict", "familiar", "latency_ms", "note"])
    for path in paths:
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
            continue
        result = inspection.inspect(model, [image])[0]
        if result.score is None:
            print(f"no verdict: {path}: {result.note}", file=sys.stderr)
            failures += 1
        familiar = {True: "yes", False: "no", None: ""}[result.familiar]
        writer.writerow([str(path), "" if result.score is None else f"{result.score:.6g}",
                         f"{model.calibration.image_threshold:.6g}", result.verdict, familiar,
                         "" if result.score is None else f"{result.latency_ms:.1f}", result.note])
        if args.overlays and result.anomaly_map is not None:
            from core.verdict.overlay import overlay_png

            args.overlays.mkdir(parents=True, exist_ok=True)
            (args.overlays / f"{path.stem}_overlay.png").write_bytes(
                overlay_png(image, result.anomaly_map, model.calibration))
    return 1 if failures else 0


def cmd_list(args: argparse.Namespace) -> int:
    records = ModelStore(args.store).list_models() if Path(args.store).is_dir() else []
    if not records:
        print(f"no models in {args.store}: train one with `python -m core train --data DIR --category C`",
              file=sys.stderr)
        return 0
    for rec in records:
        if rec.ok and rec.manifest is not None and rec.ref is not None:
            m = rec.manifest.get("metrics", {})
            print(f"{rec.ref.label} (of {rec.num_versions}): {rec.manifest['backbone']} created "
                  f"{rec.manifest['created']} image AUROC {m.get('image_auroc', float('nan')):.3f}")
        else:
            print(f"{rec.category}/{rec.kind}: BROKEN - {rec.error}")
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    store = ModelStore(args.store)
    category = validate_name(args.category, "category name")
    if args.use is not None:
        ref = store.use(store.ref(category, args.model, args.use))
        print(f"{ref.label} is now current", file=sys.stderr)
    infos = store.list_versions(category, args.model)
    if not infos:
        raise ModelStoreError(f"expected a trained {args.model} model for {category} in {args.store}, found none")
    writer = csv.writer(sys.stdout)
    writer.writerow(["version", "current", "parent", "reason", "created", "image_auroc", "problem"])
    for info in infos:
        m = info.manifest or {}
        auroc = m.get("metrics", {}).get("image_auroc")
        writer.writerow([info.ref.version, "*" if info.current else "", info.parent or "", info.reason,
                         m.get("created", ""), "" if auroc is None else f"{auroc:.4f}", info.error or ""])
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    from core.data.imageio import load_image
    from core.verdict import feedback

    store = ModelStore(args.store)
    category = validate_name(args.category, "category name")
    if args.undo:
        print(feedback.undo(store, category, args.model))
        return 0
    if args.log:
        for entry in feedback.history(store, category, args.model):
            print(json.dumps(entry))
        return 0
    if not args.images:
        raise ValueError("expected images to mark (or --undo / --log), found none")
    failures = 0
    for path in _expand(args.images):
        model = _model(args)  # the current version: each mark builds on the previous one
        try:
            image = load_image(path)
            if args.defect:
                result = feedback.mark_defect(model, image, path.name, args.data, args.defect)
            else:
                result = feedback.mark_ok(model, image, path.name, confirm_far_above=args.force)
        except feedback.NeedsConfirmation as exc:
            print(f"error: {exc}; pass --force to mark it OK anyway", file=sys.stderr)
            failures += 1
            continue
        except (feedback.FeedbackError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
            continue
        print(result.message)
    return 1 if failures else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from core.line.service import ServiceConfig, WatchSpec, api_key_from, serve

    if not Path(args.store).is_dir():
        raise FileNotFoundError(f"expected a model store folder at {args.store}, found nothing there")
    if args.api_key is not None:
        raise ValueError("expected the API key in INSPECT_API_KEY or a file (--api-key-file, INSPECT_API_KEY_FILE), "
                         "never on the command line (every user of the machine sees it in `ps`), found --api-key")
    key = api_key_from(args.api_key_file)
    watches = []
    for text in args.watch or []:
        parts = text.split(",")
        if len(parts) != 5:
            raise ValueError(f"expected --watch CATEGORY,MODEL,IN,OK,DEFECT, found {text!r}")
        category, model, *dirs = parts
        ModelStore(args.store).current(validate_name(category, "category name"), model)  # exists, now
        watches.append(WatchSpec(category, model, *(Path(d) for d in dirs)))
    config = ServiceConfig(Path(args.store), key, args.workers, watches=tuple(watches), max_pending=args.queue)
    print(f"serving {args.store} on http://{args.host}:{args.port} (docs: /docs; API key "
          f"{'required' if key else 'not required'}; {args.processes} process(es) x {args.workers} workers, "
          f"{config.pending_limit} requests admitted per process, images up to {config.max_pixels:,} px)",
          file=sys.stderr, flush=True)
    if watches and args.processes > 1:
        raise ValueError("expected --processes 1 with --watch (one process owns a watch folder), found "
                         f"{args.processes}")
    serve(config, args.host, args.port, args.processes)
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from core.line import results_log as line_log
    from core.line.watch import WatchConfig, Watcher
    from core.store.model_cache import ModelCache

    category = validate_name(args.category, "category name")
    if not args.in_dir.is_dir():
        raise FileNotFoundError(f"expected the folder to watch at {args.in_dir}, found nothing there")
    cache = ModelCache(ModelStore(args.store))
    model = cache.current(category, args.model)  # fails now, not at the first image, if there is no model
    config = WatchConfig(args.in_dir, args.ok, args.defect, args.rejected or args.in_dir.parent / "rejected",
                         args.log or args.in_dir.parent / "results.csv", copy=args.copy, settle=args.settle, max_wait=args.max_wait,
                         line_log=line_log.default_path(args.store), review_dir=args.review)
    print(f"watching {args.in_dir} with {model.ref.label} (the store's current version is used for each image); "
          f"log: {config.log}", file=sys.stderr, flush=True)
    judged = Watcher(config, lambda: cache.current(category, args.model)).run(once=args.once)
    print(f"{judged} image(s) judged", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from core.line.export import export_bundle

    ref = ModelStore(args.store).ref(validate_name(args.category, "category name"), args.model, args.version)
    path = export_bundle(ref, args.out)
    print(f"{ref.label} exported to {path} ({path.stat().st_size / 1e6:.1f} MB); run it with: "
          f"unzip {path.name} -d bundle && python bundle/runner.py IMAGE...", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The shift report of one category and time range (default: the current shift), as HTML or PDF."""
    from core.files import atomic_write_bytes
    from core.line import report as shift
    from core.line import results_log as line_log
    from core.store.history import History

    category = validate_name(args.category, "category name")
    since, until = shift.report_range(args.since, args.until)
    store = ModelStore(args.store)
    fmt = args.format or ("pdf" if args.out.suffix.lower() == ".pdf" else "html")
    with History.open(store.root, line_log=line_log.default_path(store.root)) as history:
        made = shift.shift_report(history, store, category, since, until, kind=args.kind,
                                  thumbnailer=None if args.heatmaps else shift.plain_thumbnailer())
    data = shift.render_pdf(made) if fmt == "pdf" else shift.render_html(made).encode("utf-8")
    atomic_write_bytes(args.out, data)
    said = shift.EMPTY if made.empty else f"{made.judged} part(s) judged, {len(made.alarms)} drift alarm(s)"
    print(f"{made.title}: {said}; {fmt.upper()} written to {args.out}", file=sys.stderr)
    return 0


def _batch_progress() -> Callable[[Any], None]:
    """Prints a batch run's progress on stderr, at most once a second (and the last one)."""
    import time

    last = [0.0]

    def show(progress: Any) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 or progress.done == progress.total:
            last[0] = now
            print(progress.describe(), file=sys.stderr, flush=True)

    return show


def cmd_batch(args: argparse.Namespace) -> int:
    """Re-inspect images with one model version into the results database, each image once (core/line/batch.py);
    on Ray actors with ``--ray``, else in this process."""
    from core.line import batch
    from core.line import results_log as line_log
    from core.store.history import History

    paths = batch.expand_sources(args.sources)
    store = ModelStore(args.store)
    ref = store.ref(validate_name(args.category, "category name"), args.model, args.version)
    runner: batch.Runner
    if args.ray is None:
        runner = batch.LocalRunner(ref, args.inference)
    else:
        from core.line import ray_cluster

        runner = ray_cluster.RayRunner(ref, args.inference, args.ray, workers=args.workers)
    print(f"{ref.label}: {len(paths)} image(s) to re-inspect on {runner.workers} worker(s)"
          f"{'' if args.ray is None else f' (Ray {args.ray})'}", file=sys.stderr, flush=True)
    try:
        with History.open(store.root, line_log=line_log.default_path(store.root)) as history:
            summary = batch.run_batch(ref, paths, runner, history, chunk_size=args.chunk,
                                      progress=_batch_progress())
    finally:
        runner.close()
    print(summary.describe(), file=sys.stderr)
    return 1 if summary.rejected or summary.failed else 0


def cmd_train_all(args: argparse.Namespace) -> int:
    """Train every category under ``--data`` (core/line/train_all.py): one Ray task each with ``--ray``, else one
    after the other here; a failed category is reported and the others go on (exit code 1 if any failed)."""
    from core.line import train_all

    settings = _settings_from_args(args)
    where = "this process" if args.ray is None else f"Ray {args.ray}"
    jobs = train_all.jobs_for(args.data, args.model, settings, args.store, where)
    print(f"train-all: {len(jobs)} categor{'y' if len(jobs) == 1 else 'ies'} ({args.model}) on {where}; job "
          f"records in {args.store / train_all.JOBS / jobs[0].run}", file=sys.stderr, flush=True)

    def done(outcome: train_all.TrainOutcome) -> None:
        said = f"v{outcome.version}" if outcome.ok else f"FAILED: {outcome.error}"
        print(f"{outcome.category}/{outcome.kind}: {said} ({outcome.seconds:.1f} s on {outcome.host or '?'})",
              file=sys.stderr, flush=True)

    if args.ray is None:
        outcomes = train_all.run_local(jobs, done)
    else:
        from core.line import ray_cluster

        outcomes = ray_cluster.run_train(jobs, args.ray, done)
    failed = [o for o in outcomes if not o.ok]
    print(json.dumps({"trained": [f"{o.category}/{o.kind} v{o.version}" for o in outcomes if o.ok],
                      "failed": {f"{o.category}/{o.kind}": o.error for o in failed}}, indent=2))
    return 1 if failed else 0


def _read_password(name: str) -> str:
    """The new password, never from argv: asked twice on a terminal, else the first line of stdin."""
    import getpass

    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if first != getpass.getpass("again: "):
            raise ValueError("expected the same password twice, found two different ones")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_users(args: argparse.Namespace) -> int:
    """The dashboard's users file: add (password from stdin/getpass), remove, list."""
    from core import access

    path = args.users_file
    try:
        if args.action == "add":
            password = None if args.no_password else _read_password(args.name)
            record = access.add_user(path, args.name, args.role, password, email=args.email, replace=args.replace)
            print(f"{record.name} ({record.role.value}) saved in {path}", file=sys.stderr)
        elif args.action == "remove":
            access.remove_user(path, args.name)
            print(f"{args.name} removed from {path}", file=sys.stderr)
        else:
            users = access.read_users(path)
            for u in users.values():
                print(f"{u.name}\t{u.role.value}\t{u.email or '-'}\t{'password' if u.password_hash else 'sso only'}")
            if not users:
                print(f"no users in {path}", file=sys.stderr)
    except access.UsersFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from core.data.demo import make_demo_dataset

    path = make_demo_dataset(args.out)
    print(f"demo data written to {path}")
    return 0


INFERENCE_HELP = ("fast (default): ONNX Runtime, blocked exact / HNSW search, matrix map smoothing; "
                  "stock: anomalib's own PyTorch forward pass, for comparison")


def _int_at_least_1(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a version number >= 1, found {value}")
    return value


def _iso_time(text: str) -> float:
    from core.line.report import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Offline visual anomaly detection.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.allow_abbrev = False  # "feedback --log" and "watch --log" are no abbreviation of --log-level/--log-json
    parser.add_argument("--log-level", type=str.upper, choices=app_settings.LOG_LEVELS,
                        help="module log level, before the command (default: INSPECT_LOG_LEVEL, else WARNING)")
    parser.add_argument("--log-json", action="store_true", default=None,
                        help="log one JSON object per line on stderr (default: INSPECT_LOG_JSON, else text)")
    sub = parser.add_subparsers(dest="command", required=True)
    store_default = app_settings.model_store()

    def store_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", type=Path, default=store_default,
                       help=f"model store folder (default: INSPECT_MODEL_STORE, else {store_default})")

    def common(p: argparse.ArgumentParser, need_data: bool = True) -> None:
        if need_data:
            p.add_argument("--data", type=Path, required=True, help="data root (MVTec layout) or a folder of good images")
        store_option(p)
        p.add_argument("--model", choices=kinds(), default="patchcore",
                       help=f"model kind ({', '.join(f'{k}: {spec(k).label}' for k in kinds())}; default patchcore)")

    p = sub.add_parser("train", help="fit a model on good images and save it")
    common(p)
    p.add_argument("--category", help="category under --data (omit when --data is a plain folder of good images)")
    _add_train_options(p)
    p.add_argument("--reason", help="why this version exists, shown in the versions list (default: trained)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted EfficientAD run kept in the "
                   "store (stopped by Cancel or Ctrl-C; its state is saved every 250 steps) with its own settings")
    p.set_defaults(func=cmd_train)

    def scoring(p: argparse.ArgumentParser) -> None:
        """The flags of a command that scores with one model version: category, inference path, version."""
        p.add_argument("--category", required=True)
        p.add_argument("--inference", choices=INFERENCE_PATHS, default="fast", help=INFERENCE_HELP)
        p.add_argument("--version", type=_int_at_least_1, help="model version (default: the current one)")

    p = sub.add_parser("evaluate", help="score the test set and save metrics beside the model")
    common(p)
    scoring(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="score images or folders; CSV on stdout")
    common(p, need_data=False)
    scoring(p)
    p.add_argument("--overlays", type=Path, help="write heatmap overlay PNGs here")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="image files or folders to score (folders are searched recursively)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("versions", help="list a model's versions; --use N makes version N current (undo, rollback)")
    common(p, need_data=False)
    p.add_argument("--category", required=True)
    p.add_argument("--use", type=_int_at_least_1, help="make this version current")
    p.set_defaults(func=cmd_versions)

    p = sub.add_parser("feedback", help="mark images OK (PatchCore learns them) or as a defect; undo; show the log")
    common(p, need_data=False)
    p.add_argument("--category", required=True)
    p.add_argument("--data", type=Path, help="data root; needed with --defect (the image is filed under test/)")
    p.add_argument("--defect", help="file the images as this defect type instead of marking them OK")
    p.add_argument("--undo", action="store_true", help="undo the newest feedback action")
    p.add_argument("--log", action="store_true", help="print the feedback log (JSON lines)")
    p.add_argument("--force", action="store_true",
                   help="mark OK even images scored far above the threshold (>= 1.5x it, or above the evaluation's "
                        "median defect score): they look like clear defects, so this needs saying")
    p.add_argument("images", type=Path, nargs="*")
    p.set_defaults(func=cmd_feedback)

    p = sub.add_parser("list", help="list saved models")
    store_option(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("serve", help="run the inspection service (HTTP API) over a model store")
    store_option(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8600)
    p.add_argument("--api-key", help=argparse.SUPPRESS)  # refused: argv is visible in `ps`
    p.add_argument("--api-key-file", type=Path,
                   help="require the X-API-Key header holding this file's first line (default: the file "
                        "INSPECT_API_KEY_FILE names, else the key INSPECT_API_KEY holds, else no key)")
    p.add_argument("--workers", type=int, default=2, help="images scored at once per process (default 2)")
    p.add_argument("--queue", type=int, default=None,
                   help="inspect requests admitted at once per process; one more gets 503 + Retry-After "
                        "(default 4 x --workers)")
    p.add_argument("--processes", type=int, default=1, help="server processes behind the one port (default 1)")
    p.add_argument("--watch", action="append", metavar="CATEGORY,MODEL,IN,OK,DEFECT",
                   help="also run a watch folder in the service (repeatable)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("watch", help="judge images that appear in a folder and move them by verdict")
    common(p, need_data=False)
    p.add_argument("--category", required=True)
    p.add_argument("--in", dest="in_dir", type=Path, required=True, help="folder the camera writes to")
    p.add_argument("--ok", type=Path, required=True, help="where OK images go")
    p.add_argument("--defect", type=Path, required=True, help="where DEFECT images go")
    p.add_argument("--review", type=Path, help="REVIEW images, in the review band: a person decides (default: "
                   "<ok>/../review)")
    p.add_argument("--rejected", type=Path, help="unreadable / NO VERDICT images (default: <in>/../rejected)")
    p.add_argument("--log", type=Path, help="results CSV (default: <in>/../results.csv)")
    p.add_argument("--copy", action="store_true", help="copy instead of move (the input folder keeps the files)")
    p.add_argument("--settle", type=float, default=1.0, help="seconds a file must stay unchanged before it is read")
    p.add_argument("--max-wait", type=float, default=30.0,
                   help="seconds a stable file that is not yet a complete image is retried before it is rejected "
                        "(a camera that paused mid-file; default 30)")
    p.add_argument("--once", action="store_true", help="stop when the folder holds no unjudged image")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("export", help="write a bundle (ONNX, bank, calibration, runner) a line PC can run")
    common(p, need_data=False)
    p.add_argument("--category", required=True)
    p.add_argument("--version", type=_int_at_least_1, help="model version (default: the current one)")
    p.add_argument("--out", type=Path, required=True, help="the .zip to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="the shift report of a category (HTML or PDF): verdicts, the promise vs the "
                       "reviews, drift alarms, review outcomes, the worst images")
    store_option(p)
    p.add_argument("--category", required=True)
    p.add_argument("--kind", choices=kinds(), help="one model kind (default: every kind that judged)")
    p.add_argument("--since", type=_iso_time, help="start, ISO date/time, local unless it has an offset "
                   "(default: the start of the current shift, or of the shift --until ends in)")
    p.add_argument("--until", type=_iso_time, help="end, excluded (default: the current shift's end; now with --since)")
    p.add_argument("--format", choices=("html", "pdf"), help="default: pdf when --out ends in .pdf, else html")
    p.add_argument("--no-heatmaps", dest="heatmaps", action="store_false",
                   help="thumbnails of the worst images without the model's heatmap (no model is loaded)")
    p.add_argument("--out", type=Path, required=True, help="the file to write")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("train-all", help="train every category under --data (one Ray task each with --ray); a "
                       "failed category is reported, the others go on")
    common(p)
    _add_train_options(p)
    p.add_argument("--ray", metavar="ADDRESS", help="one Ray task per category on this cluster (host:port, "
                   "ray://host:10001, auto, or local); EfficientAD asks for a GPU where the cluster has one")
    p.set_defaults(func=cmd_train_all)

    p = sub.add_parser("batch", help="re-inspect images (folders, globs, a CSV of paths) with one model version "
                       "into the results database, each image once; on a Ray cluster with --ray")
    common(p, need_data=False)
    scoring(p)
    p.add_argument("--ray", metavar="ADDRESS", help="run on Ray actors: a cluster's address (host:port, "
                   "ray://host:10001), auto (the cluster started on this machine) or local (a new one in this process)")
    p.add_argument("--workers", type=int, help="Ray actors, each with the model loaded once (default: one per CPU "
                   "of the cluster)")
    p.add_argument("--chunk", type=int, default=16, help="images per chunk, judged and written together (default 16)")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image files, folders (searched recursively), globs "
                   "(quoted), or a .csv whose first column holds paths")
    p.set_defaults(func=cmd_batch)

    users_default = app_settings.users_file()
    p = sub.add_parser("users", help="the dashboard's users and roles (operator, engineer); passwords from stdin")
    p.add_argument("--users-file", type=Path, default=users_default,
                   help=f"default: INSPECT_USERS_FILE, else users.json in the model store ({users_default})")
    users_sub = p.add_subparsers(dest="action", required=True)
    u = users_sub.add_parser("add", help="add a user; the password is asked for (or read from stdin), never an argument")
    u.add_argument("name")
    u.add_argument("--role", choices=("operator", "engineer"), required=True,
                   help="operator: inspect, review, mark; engineer: also train, thresholds, versions, annotate, export")
    u.add_argument("--email", help="match this user to an identity provider sign-in (st.login) by email")
    u.add_argument("--no-password", action="store_true", help="identity-provider sign-in only (needs --email)")
    u.add_argument("--replace", action="store_true", help="overwrite an existing user (new role, password)")
    u = users_sub.add_parser("remove", help="remove a user")
    u.add_argument("name")
    users_sub.add_parser("list", help="list users: name, role, email, how they sign in")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("demo", help="generate the built-in demo dataset")
    p.add_argument("--out", type=Path, default=app_settings.data_roots()[0],
                   help=f"default: the dashboard's data root ({app_settings.data_roots()[0]})")
    p.set_defaults(func=cmd_demo)
    return parser


def _backbone_error() -> type[Exception]:
    """core.models.backbone imports timm and torch: only looked up when an exception is being handled."""
    from core.models.backbone import BackboneError

    return BackboneError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from core.data.dataset import DatasetError
    from core.types import TrainingCancelled

    if args.command == "feedback" and args.defect and not args.data:
        print("error: --defect files the image under <data>/<category>/test/<defect>/: expected --data, found none",
              file=sys.stderr)
        return 2
    try:
        logs.configure(args.log_level or app_settings.log_level(),
                       app_settings.log_json() if args.log_json is None else args.log_json)
        return int(args.func(args))
    except (DatasetError, ModelStoreError, _backbone_error(), ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingCancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return 130
