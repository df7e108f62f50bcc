"""The ``landmark`` command line: data, train, evaluate, export, predict, tag, review, runs, places, models."""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

from .errors import LandmarkError, TrainingCancelled
from .locations import DEMO_ALIASES, data_dir, demo_dir, resolve_dataset

def _number(kind, low, high=None):
    """An argparse type: a finite ``kind`` (int or float) from ``low`` to ``high``, refused with its range
    otherwise (``nan``, ``inf``, ``-1`` and ``1e308`` mean nothing a user wants)."""
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a number {span}")
        return value
    parse.__name__ = "number"  # argparse names the type in its messages
    return parse


def _open_finished_run(value: str, action: str):
    """The run named ``value``, refused while a process trains it (its model is half-made until then)."""
    from .runs import Run, refuse_while_training
    run = Run.open(value)
    refuse_while_training(run.path, action)
    return run


def resolve_data(value: str) -> str:
    """``demo`` means the built-in demo set (drawn on first use, with a progress bar); anything else is a folder."""
    from .demo import is_complete_demo
    if value in DEMO_ALIASES and not is_complete_demo(demo_dir()):
        print(f"creating the demo dataset in {demo_dir()} ...", file=sys.stderr)
    return resolve_dataset(value, progress=ProgressBar("demo classes"))


class ProgressBar:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, label: str, unit_scale: float = 1.0, unit: str = ""):
        self.label, self.scale, self.unit = label, unit_scale, unit
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.line_open = False  # a terminal line drawn without its newline yet

    def __call__(self, done: int, total: int | None) -> None:
        now = time.time()
        finished = total is not None and done >= total
        if not finished and now - self.last < (0.1 if self.tty else 5.0):
            return
        self.last = now
        amount = f"{done * self.scale:,.1f}{self.unit}" if self.scale != 1 else f"{done:,}"
        if total:
            share = min(1.0, done / total)
            bar = "#" * int(share * 30)
            line = f"{self.label} [{bar:<30}] {share:6.1%} {amount}"
        else:
            line = f"{self.label} {amount}"
        print(("\r" + line) if self.tty else line, end="\n" if finished or not self.tty else "", file=sys.stderr, flush=True)
        self.line_open = self.tty and not finished


# --- commands ---------------------------------------------------------------------------------

def cmd_data_demo(args) -> int:
    from .demo import generate_demo_dataset
    from .demo import is_complete_demo
    out = Path(args.out or demo_dir())
    if args.if_missing and is_complete_demo(out):
        print(out)
        return 0
    generate_demo_dataset(out, seed=args.seed, train_per_class=args.train_per_class, test_per_class=args.test_per_class,
                          progress=ProgressBar("demo classes"))
    print(out)
    return 0


def cmd_data_download(args) -> int:
    from .download import DATASET_URL, download_dataset
    root = download_dataset(Path(args.out or data_dir()), url=args.url or DATASET_URL,
                            progress=ProgressBar("downloading", 1 / 2**20, " MiB"))
    print(root)
    return 0


def cmd_data_import(args) -> int:
    from .download import import_dataset
    root, dataset = import_dataset(args.zip, data_dir(), args.name)
    print(root)
    print(f"{dataset.num_classes} classes, {len(dataset.train)} train / {len(dataset.test)} test files", file=sys.stderr)
    return 0


def cmd_data_stats(args) -> int:
    from .data import dataset_report, scan_dataset
    dataset = scan_dataset(resolve_data(args.data))
    report = dataset_report(dataset, progress=ProgressBar("checking images"))
    counts: dict[str, dict[str, int]] = {}
    for row in report["images"]:
        counts.setdefault(row["class"], {"train": 0, "test": 0})[row["split"]] += 1
    if args.json:
        print(json.dumps({"root": report["root"], "classes": len(report["classes"]), "counts": counts,
                          "unreadable": report["unreadable"], "duplicates": report["duplicates"],
                          "leaks": report["leaks"]}, indent=2))
        return 0
    print(f"{report['root']}: {len(report['classes'])} classes, "
          f"{sum(c['train'] for c in counts.values())} train / {sum(c['test'] for c in counts.values())} test images"
          + (" (test split taken from train)" if report["test_taken_from_train"] else ""))
    width = max(len(name) for name in counts)
    for name, c in counts.items():
        print(f"  {name:<{width}}  train {c['train']:5d}  test {c['test']:5d}")
    for path, reason in report["unreadable"].items():
        print(f"unreadable: {reason}")
    for group in report["duplicates"]:
        print(f"duplicates: {', '.join(group)}")
    if report["leaks"]:
        print(f"warning: {len(report['leaks'])} test photos are also in train/ (test accuracy would count them as "
              "recognised); remove them from one of the splits:", file=sys.stderr)
        for leak in report["leaks"]:
            how = "identical file" if leak["kind"] == "identical" else f"near-duplicate, {leak['distance']} bits apart"
            print(f"leak: {leak['test']} = {leak['train']} ({how})")
    return 0


def _config_from_args(args):
    from .config import TrainConfig
    given = {f.name: getattr(args, f.name) for f in _config_flags() if getattr(args, f.name) is not None}
    given["data"] = resolve_data(given.get("data", ""))
    return TrainConfig(**given)


# Commands check what they were given (a run, a folder) before importing torch: a typo is answered at once.

def cmd_train(args) -> int:
    from . import distributed
    from .runs import Run, launch_background, read_status, resolve_run

    if distributed.launched_by_torchrun():
        return _train_as_rank(args)
    if args.estimate and (args.run_dir or args.resume):
        raise LandmarkError("--estimate is for a new run: give --data and the settings, not --resume")
    if args.run_dir or args.resume:
        run_dir = resolve_run(args.run_dir or args.resume)
        resume = bool(args.resume) or Run(run_dir).checkpoint("last").exists()
        processes = args.nproc_per_node or read_status(run_dir).get("processes") or 1  # resume as it ran
    else:
        if not args.data:
            raise LandmarkError("--data DIR is required (or --data demo for the built-in demo set)")
        if args.estimate:
            from .allocator import keep_freed_memory
            from .estimate import estimate
            keep_freed_memory()  # as the training process will: its steps are what is timed
            config = _config_from_args(args)
            print(f"{config.model} on {Path(config.data).name}: {estimate(config).describe()}")
            return 0
        from .pipeline import create_run
        run_dir, resume = create_run(_config_from_args(args)), False
        processes = args.nproc_per_node or 1
    if processes < 1:
        raise LandmarkError("--nproc-per-node must be at least 1")
    if args.background:
        pid = launch_background(run_dir, resume=resume, processes=processes)
        print(run_dir)
        print(f"training in the background (pid {pid}); follow it with: landmark runs", file=sys.stderr)
        return 0
    print(run_dir, flush=True)
    if processes > 1:
        from .pipeline import train_distributed
        train_distributed(run_dir, processes)
    else:
        from .callbacks import ConsoleProgress
        from .pipeline import train
        train(run_dir, resume=resume, callbacks=[ConsoleProgress(lambda line: print(line, file=sys.stderr, flush=True),
                                                                 run_dir)],
              progress=lambda stage, done, total: ProgressBar(stage)(done, total) if done == total else None)
    evaluation = Run(run_dir).evaluation or {}
    if evaluation:
        print(f"test top-1 {evaluation['top1']:.3f}  top-5 {evaluation['top5']:.3f}", file=sys.stderr)
    return 0


def _train_as_rank(args) -> int:
    """One rank of a run launched by torchrun (ours, or a user's own across machines): rank 0 creates the run
    folder when none is given and tells the others where it is; rank 0 alone prints and writes."""
    from . import distributed
    from .callbacks import ConsoleProgress
    from .config import device_or_error
    from .pipeline import create_run, train
    from .runs import Run, resolve_run

    main_rank = os.environ.get("RANK", "0") == "0"
    if args.run_dir or args.resume:
        run_dir = resolve_run(args.run_dir or args.resume)
    else:
        if not args.data:
            raise LandmarkError("--data DIR is required (or --run-dir RUN)")
        config = _config_from_args(args)
        world, _ = distributed.join(device_or_error(config.device))
        run_dir = Path(world.broadcast_object(str(create_run(config)) if world.is_main else None))
        if main_rank:
            print(run_dir, flush=True)
    resume = Run(run_dir).checkpoint("last").exists()
    console = [ConsoleProgress(lambda line: print(line, file=sys.stderr, flush=True), run_dir)] if main_rank else []
    train(run_dir, resume=resume, callbacks=console)
    return 0


def cmd_evaluate(args) -> int:
    run = _open_finished_run(args.run, "evaluate")
    from .config import resolve_device
    from .evaluate import evaluate_run
    from .export import export_run
    run_dir = run.path
    summary = evaluate_run(run_dir, device=resolve_device(args.device), checkpoint=args.checkpoint)
    exported = run.export_meta or {}
    carried = (exported.get("temperature"), exported.get("probability_threshold"), exported.get("familiarity_threshold"))
    chosen = (summary["calibration"]["temperature"], summary["default_threshold"], summary["default_familiarity_threshold"])
    if exported.get("checkpoint") == args.checkpoint and carried != chosen:
        # the exported model carries the calibration and both tag thresholds: it must give what evaluation chose
        export_run(run_dir, checkpoint=args.checkpoint, format=exported.get("format", "torchscript"))
        print(f"re-exported {run_dir.name} with the new calibration and thresholds", file=sys.stderr)
    if args.json:
        calibration = {k: v for k, v in summary["calibration"].items() if k in ("temperature", "fitted_on")}
        calibration.update({f"{split}_ece_{when}": summary["calibration"][split][f"ece_{when}"]
                            for split in ("validation", "test") for when in ("before", "after")})
        print(json.dumps({**{k: summary[k] for k in ("run_id", "num_images", "top1", "top5", "mean_loss", "default_threshold",
                                                      "coverage_at_precision", "per_class", "most_confused")},
                          "calibration": calibration}, indent=2))
    else:
        print(f"{summary['run_id']}: {summary['num_images']} test images  top-1 {summary['top1']:.3f}  top-5 {summary['top5']:.3f}")
        calibration = summary["calibration"]["test"]
        if calibration["ece_before"] is not None:
            print(f"  calibration error (ECE) {calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f} "
                  f"(temperature {summary['calibration']['temperature']:.2f})")
        for point in summary["coverage_at_precision"]["test"]:
            if point["coverage"] is not None:
                print(f"  coverage at {point['precision']:.0%} precision: {point['coverage']:.1%}")
        for pair in summary["most_confused"][:5]:
            print(f"  confused: {pair['true']} -> {pair['predicted']} ({pair['count']})")
    return 0


def cmd_export(args) -> int:
    run_dir = _open_finished_run(args.run, "export").path
    from .export import export_fastest, export_run
    if args.format != "fastest":
        print(export_run(run_dir, checkpoint=args.checkpoint, format=args.format))
        return 0
    path, speed = export_fastest(run_dir, checkpoint=args.checkpoint)
    for format, result in speed.items():
        print(f"{format:<12} " + (f"{result:7.1f} photos/s" if isinstance(result, float) else f"left out: {result}"),
              file=sys.stderr)
    print(path)
    return 0


def cmd_predict(args) -> int:
    run = _open_finished_run(args.run, "predict with")
    from .errors import ImageError
    from .predict import Predictor
    from .tagging import decide_for, read_gps
    predictor = Predictor(run)
    results, failures = [], 0
    for image in args.images:
        try:
            assessment = predictor.assess(image, top_k=args.top_k)
            existing_gps = read_gps(image)
        except ImageError as error:
            failures += 1
            print(f"error: {error}", file=sys.stderr)
            results.append({"image": image, "error": str(error)})
            continue
        decision = decide_for(predictor, image, assessment=assessment, existing_gps=existing_gps)
        place = decision.place
        results.append({"image": image, "outcome": decision.status, "familiarity": assessment.familiarity,
                        "landmark": decision.name if decision.status == "tagged" else None,
                        "latitude": place.latitude if place and decision.status == "tagged" else None,
                        "longitude": place.longitude if place and decision.status == "tagged" else None,
                        "predictions": [{"class": p.label, "probability": p.probability} for p in assessment.predictions]})
        if not args.json:
            familiarity = f", familiarity {assessment.familiarity:.3f}" if assessment.familiarity is not None else ""
            where = f" at {place.latitude:.4f}, {place.longitude:.4f}" if place and decision.status == "tagged" else ""
            print(f"{image}: {decision.status}{' as ' + decision.description + where if decision.status == 'tagged' else ''}"
                  f"{familiarity}")
            for p in assessment.predictions:
                print(f"  {p.probability:7.2%}  {p.label}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failures else 0


#: What ``landmark explain --out`` writes, by the name's extension.
_HEATMAP_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def cmd_explain(args) -> int:
    out = Path(args.out)
    image_format = _HEATMAP_FORMATS.get(out.suffix.lower())
    if image_format is None:
        raise LandmarkError(f"--out {out}: the heatmap is an image; give a name ending in "
                            f"{', '.join(_HEATMAP_FORMATS)}")
    if os.path.lexists(out) and os.path.lexists(args.photo) and os.path.samefile(out, args.photo):
        raise LandmarkError(f"--out {out} is the photo being explained; choose another name")
    run = _open_finished_run(args.run, "explain")
    from .explain import Explainer
    from .fileio import write_user_file
    explainer = Explainer(run.path, args.checkpoint)
    explanation = explainer.explain(args.photo, args.target)
    heatmap = io.BytesIO()
    explanation.overlay().convert("RGB").save(heatmap, format=image_format)
    write_user_file(out, heatmap.getvalue())  # atomic: a failure leaves what was there
    print(f"{out}: Grad-CAM of {explanation.class_name} ({explanation.probability:.1%}) on layer "
          f"{type(explainer.layer).__name__}", file=sys.stderr)
    return 0


def cmd_tag(args) -> int:
    from .predict import Predictor
    from .tagging import tag_files

    from .config import device_or_error

    shard = _parse_shard(args.shard) if args.shard is not None else None
    run = _open_finished_run(args.run, "tag with")
    sidecars = args.sidecars or args.sidecar_dir is not None
    if sidecars and (args.overwrite or args.out):
        raise LandmarkError("--sidecars leaves the photos alone: it takes neither --out nor --overwrite")
    sidecar_dir = Path(args.sidecar_dir) if args.sidecar_dir is not None else None
    predictor = Predictor(run, device=device_or_error(args.device))
    out_dir = None if args.overwrite or sidecars else Path(args.out or "tagged")
    suffix = f"-shard-{shard[0]}-of-{shard[1]}" if shard else ""  # each shard its own report: no shared file
    report = Path(args.report) if args.report else (out_dir or sidecar_dir or Path(".")) / f"tag-report{suffix}.csv"
    bar = ProgressBar("tagging")

    def progress(state) -> None:
        eta = f"  ETA {_duration(state.eta_seconds)}" if state.eta_seconds is not None else ""
        bar.label = (f"tagging {state.files_per_second:5.1f} files/s{eta}  "
                     + " ".join(f"{k} {v}" for k, v in state.counts.items() if v))
        bar(state.done, state.total)

    counts = tag_files(predictor, args.paths, out_dir=out_dir, threshold=args.min_confidence, in_place=args.overwrite,
                       overwrite_gps=args.overwrite_gps, report_path=report, open_set=not args.tag_unfamiliar,
                       progress=progress, workers=args.workers, batch_size=args.batch_size, shard=shard,
                       sidecars=sidecars, sidecar_naming=args.sidecar_name, sidecar_dir=sidecar_dir)
    threshold = predictor.probability_threshold if args.min_confidence is None else args.min_confidence
    rule = f"probability >= {threshold:.2f}"
    if predictor.familiarity_threshold is not None and not args.tag_unfamiliar:
        rule += f" and familiarity >= {predictor.familiarity_threshold:.3f}"
    elif predictor.familiarity_threshold is None:
        rule += " (this model has no open-set check: run landmark evaluate to add it)"
    if bar.line_open:  # end the progress line before the summary
        print(file=sys.stderr)
    print(f"tagged when {rule}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()), file=sys.stderr)
    if counts["tagged_without_place"]:
        print(f"{counts['tagged_without_place']} photos tagged by name only: their class has no place "
              "(add it to the dataset's places.csv)", file=sys.stderr)
    print(report)
    return 0


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise LandmarkError(f"--shard takes K/N, e.g. 1/4 (got {text!r})") from None
    if not 1 <= k <= n:
        raise LandmarkError(f"--shard K/N needs 1 <= K <= N (got {text})")
    return k, n


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def cmd_runs(args) -> int:
    from .progress import run_progress
    from .runs import list_runs
    runs = list_runs()
    if args.json:
        print(json.dumps([{**r.__dict__, "path": str(r.path), "progress": _progress_fields(run_progress(r.path))}
                          for r in runs], indent=2, default=str))
        return 0
    if not runs:
        print("no runs yet (start one with: landmark train --data demo --model scratch_cnn)")
    for r in runs:
        acc = f"  test top-1 {r.test_acc:.1%}" if r.test_acc is not None else ""
        print(f"{r.run_id}  {r.model:<20} {run_progress(r.path).describe()}{acc}")
    return 0


def _progress_fields(progress) -> dict:
    from dataclasses import asdict
    return {**asdict(progress), "state": str(progress.state), "stage": str(progress.stage) if progress.stage else None,
            "label": progress.label, "fraction": progress.fraction, "description": progress.describe()}


def _position(text: str) -> tuple[float, float]:
    try:
        latitude, longitude = (float(part) for part in text.split(","))
    except ValueError:
        raise LandmarkError(f"a position is LAT,LON in degrees, e.g. 30.3285,35.4444 (got {text!r})") from None
    return latitude, longitude


def cmd_places(args) -> int:
    from .places import places_matching
    root = resolve_dataset(args.data) if args.data else None
    if args.towns or args.near:
        from .towns import nearest_towns, search_towns
        found_towns = (search_towns(args.towns) if args.towns
                       else [town for town, _ in nearest_towns(*_position(args.near))])
        for town in found_towns:
            print(f"{town.latitude:9.4f} {town.longitude:10.4f}  {town.description}")
        return 0 if found_towns else 1
    if args.set:
        from .towns import nearest_towns, place_at, set_place
        if root is None or args.at is None:
            raise LandmarkError("--set CLASS needs --at LAT,LON and --data DATASET (whose places.csv it writes)")
        latitude, longitude = _position(args.at)
        town, distance = nearest_towns(latitude, longitude, 1)[0]
        place = place_at(args.set, town, args.display_name, latitude, longitude)
        path = set_place(root, place)
        print(f"{args.set}: {place.description} ({latitude:.4f}, {longitude:.4f}; {distance:.0f} km from {town.name}) "
              f"in {path}", file=sys.stderr)
        return 0
    found = places_matching(args.name, root)
    if args.json:
        print(json.dumps([place.__dict__ for place in found], indent=2, ensure_ascii=False))
    else:
        for place in found:
            print(f"{place.latitude:9.4f} {place.longitude:10.4f}  {place.description}")
    if args.name and not found:
        print(f"no place for {args.name!r}: add it to the dataset's places.csv (or on the Explore page)", file=sys.stderr)
        return 1
    return 0


def cmd_review(args) -> int:
    from .review import Review, Verdict
    review = Review(args.report)
    judged = [(file, Verdict.CONFIRMED, None, False) for file in args.accept]
    for flag, pairs, new_class in (("--correct", args.correct, False), ("--new-class", args.new_class, True)):
        for pair in pairs:
            file, _, class_name = pair.rpartition("=")
            if not file or not class_name:
                raise LandmarkError(f"{flag} takes FILE=CLASS (got {pair!r})")
            judged.append((file, Verdict.CORRECTED, class_name, new_class))
    judged += [(file, Verdict.NOT_A_LANDMARK, None, False) for file in args.not_landmark]
    for file, verdict, class_name, new_class in judged:
        entry = review.judge(file, verdict, class_name, new_class=new_class)
        print(f"{entry['verdict']}: {Path(entry['file']).name} -> {entry['copy']} (in {review.dataset_root})", file=sys.stderr)
    if args.undo:
        taken_back = review.undo(None if args.undo == "last" else args.undo)
        gone = " (its copy had already left the dataset)" if taken_back and taken_back.get("copy_was_gone") else ""
        print(f"undid: {taken_back['verdict']} {Path(taken_back['file']).name}{gone}" if taken_back
              else "nothing to undo", file=sys.stderr)
    if args.retrain:
        runs_before = review.run.id
        result = review.retrain(progress=lambda stage, done, total: ProgressBar(stage)(done, total))
        print(f"retrained {runs_before} as {result.run.name}; re-tagged the photos the model decided:", file=sys.stderr)
        for status in result.before:
            if result.before[status] or result.after[status]:
                print(f"  {status:<11} {result.before[status]:>6} -> {result.after[status]}", file=sys.stderr)
        for change in result.changes:
            print(f"  {Path(change['file']).name}: {change['before']} {change['before_landmark']} -> "
                  f"{change['after']} {change['after_landmark']}", file=sys.stderr)
        print(result.run)
        return 0
    if judged or args.undo:
        return 0
    items = review.items()
    if args.json:
        print(json.dumps([item.__dict__ for item in items], indent=2, ensure_ascii=False, default=str))
        return 0
    for item in items:
        verdict = item.verdict
        said = f"{verdict['verdict']}{' ' + verdict['class'] if verdict.get('class') else ''}" if verdict else "-"
        probability = f"{item.probability:.2f}" if item.probability is not None else "-"
        print(f"{item.status:<10} margin {item.doubt:+.3f}  {item.prediction or '-':<28} p {probability}  "
              f"review {said:<30} {item.file}")
    if not items:
        print("nothing to review: no photo of this report was decided by the model", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from .serve import API_KEY_ENV, ServeSettings, serve
    settings = ServeSettings(run=args.run, host=args.host, port=args.port, workers=args.workers,
                             api_key=args.api_key or os.environ.get(API_KEY_ENV) or None, max_batch=args.max_batch,
                             batch_wait_ms=args.batch_wait_ms, max_queue=args.queue, device=args.device)
    serve(settings)
    return 0


def cmd_lr_find(args) -> int:
    from .lr_finder import Sweep, find_learning_rate
    try:
        config = _config_from_args(args)
        if not config.data:
            raise LandmarkError("no dataset given (--data DIR, or --data demo)")
        if args.into:  # a background sweep the app started: its folder keeps the progress and the result
            result = Sweep(Path(args.into)).run_here(config, steps=args.steps)
        else:
            result = find_learning_rate(config, steps=args.steps, progress=ProgressBar("learning-rate sweep"))
    except BaseException as error:
        if args.into:  # the app reads why from the folder, whatever failed
            Sweep(Path(args.into)).record_failure(error)
        raise
    if args.json:
        print(json.dumps({"suggestion": result.suggestion, "trained": result.trained,
                          "learning_rates": result.learning_rates, "losses": result.losses}))
        return 0 if result.suggestion else 1
    if result.suggestion is None:
        print("no clear descent of the loss: keep the model's default learning rate", file=sys.stderr)
        return 1
    print(f"suggested learning rate (trained: {result.trained}; --lr for landmark train):", file=sys.stderr)
    print(f"{result.suggestion:.2e}")
    return 0


def cmd_models(args) -> int:
    from .models import list_models, model_info
    for name in list_models():
        info = model_info(name)
        print(f"{name:<20} {info['parameters'] / 1e6:5.2f} M params  {info['gflops']:5.2f} GFLOPs at {info['image_size']}px  "
              f"{info['description']}")
    return 0


# --- parser -----------------------------------------------------------------------------------

def _config_flags() -> list:
    """The TrainConfig fields a user sets from the command line (each with its help text)."""
    import dataclasses

    from .config import TrainConfig
    return [f for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]


#: Flags that existed before the flags were generated from TrainConfig, kept working.
_FLAG_ALIASES = {"weights_path": ["--weights"], "early_stopping_patience": ["--early-stopping"]}
_NEGATIVE_ALIASES = {"cache_features": "--no-feature-cache", "calibrate": "--no-calibration"}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field: type and choices from the field, help from its ``setting``."""
    from .config import CHOICES, TrainConfig
    defaults = TrainConfig()
    for f in _config_flags():
        flags = ["--" + f.name.replace("_", "-"), *_FLAG_ALIASES.get(f.name, [])]
        default = getattr(defaults, f.name)
        shown = f" (default: {default})" if default not in (None, "") else ""
        kind = str(f.type).split(" | ")[0]
        if kind == "bool":
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f.metadata["help"] + shown)
            if f.name in _NEGATIVE_ALIASES:
                parser.add_argument(_NEGATIVE_ALIASES[f.name], dest=f.name, action="store_false", help=argparse.SUPPRESS)
        else:
            parser.add_argument(*flags, dest=f.name, type={"int": int, "float": float}.get(kind, str), default=None,
                                choices=CHOICES.get(f.name), help=f.metadata["help"] + shown,
                                metavar=None if f.name in CHOICES else f.name.split("_")[-1].upper())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="landmark", description="Landmark photo classification and tagging.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="create, download or inspect datasets").add_subparsers(dest="data_command", required=True)
    demo = data.add_parser("demo", help="generate the built-in demo dataset")
    demo.add_argument("--out", help="folder (default: artifacts/data/demo)")
    demo.add_argument("--seed", type=_number(int, 0, 2**32 - 1), default=0)
    demo.add_argument("--train-per-class", type=_number(int, 1, 100_000), default=100)
    demo.add_argument("--test-per-class", type=_number(int, 1, 100_000), default=25)
    demo.add_argument("--if-missing", action="store_true", help="do nothing when the folder already holds a complete demo set")
    demo.set_defaults(func=cmd_data_demo)
    download = data.add_parser("download", help="download the real 50-class landmark_images set (resumable)")
    download.add_argument("--out", help="folder to put landmark_images/ in (default: artifacts/data)")
    download.add_argument("--url", help="download from this URL instead")
    download.set_defaults(func=cmd_data_download)
    imported = data.add_parser("import", help="unpack a zip of photos (train/ and test/ or class folders) safely")
    imported.add_argument("zip")
    imported.add_argument("--name", help="folder name under artifacts/data (default: the zip's name)")
    imported.set_defaults(func=cmd_data_import)
    stats = data.add_parser("stats", help="counts per class and split, unreadable files and duplicates")
    stats.add_argument("data", help="dataset folder, or 'demo'")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_data_stats)

    train = sub.add_parser("train", help="train a model; prints the run folder",
                           description="Every training setting (TrainConfig); unset ones take the model's defaults.")
    _add_config_flags(train)
    train.add_argument("--resume", metavar="RUN", help="continue an interrupted or cancelled run")
    train.add_argument("--run-dir", help=argparse.SUPPRESS)
    train.add_argument("--background", action="store_true", help="train in a detached process")
    train.add_argument("--estimate", action="store_true", help="say how long this run would take on this machine "
                       "(a few training steps timed) and train nothing")
    train.add_argument("--nproc-per-node", type=_number(int, 1, 1024), metavar="N",
                       help="data-parallel training with N processes on this machine through torchrun (one per GPU, "
                            "or CPU processes); --batch-size stays the global batch. Resuming uses the run's own N "
                            "unless given")
    train.set_defaults(func=cmd_train)

    lr_find = sub.add_parser("lr-find", help="suggest a learning rate: a short sweep with growing rates (fastai's "
                             "lr_find); prints the rate", description="Takes the training settings of landmark train; "
                             "nothing is written to any run.")
    _add_config_flags(lr_find)
    lr_find.add_argument("--steps", type=_number(int, 10, 1000), default=80, help="batches in the sweep (default 80)")
    lr_find.add_argument("--json", action="store_true", help="the rates and smoothed losses too")
    lr_find.add_argument("--into", metavar="DIR", help="keep progress and result in DIR (status.json, result.json): how "
                         "the app runs a sweep in the background")
    lr_find.set_defaults(func=cmd_lr_find)

    evaluate = sub.add_parser("evaluate", help="evaluate a run on its test split")
    evaluate.add_argument("run")
    evaluate.add_argument("--checkpoint", default="best", choices=("best", "last"))
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=cmd_evaluate)

    export = sub.add_parser("export", help="export a run (TorchScript or ONNX) with its preprocessing inside")
    export.add_argument("run")
    export.add_argument("--checkpoint", default="best", choices=("best", "last"))
    export.add_argument("--format", default="torchscript", choices=("torchscript", "onnx", "onnx-int8", "fastest"),
                        help="torchscript (default; what training exports), onnx (ONNX Runtime and other "
                             "runtimes) or onnx-int8 (quantised on the run's training photos, accepted only if it "
                             "keeps top-1 within 0.5 points and the tag decision on 99%% of the test photos), or "
                             "fastest: each of them timed on this machine, the fastest that passes its check kept; "
                             "the app, `landmark tag`, `landmark serve` and `landmark predict` load whichever was "
                             "exported last")
    export.set_defaults(func=cmd_export)

    predict = sub.add_parser("predict", help="top-k landmarks for images")
    predict.add_argument("run")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--top-k", type=_number(int, 1, 1000), default=5)
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(func=cmd_predict)

    runs = sub.add_parser("runs", help="list training runs")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(func=cmd_runs)

    places = sub.add_parser("places", help="list the known places, or look one up: landmark places \"Taj Mahal\"")
    places.add_argument("name", nargs="?", help="a class or landmark name (all places when left out)")
    places.add_argument("--data", help="also the places.csv of this dataset folder (or 'demo')")
    places.add_argument("--json", action="store_true")
    places.add_argument("--towns", metavar="NAME", help="search GeoNames' towns (offline) instead: London, Agra, Cusco")
    places.add_argument("--near", metavar="LAT,LON", help="the towns nearest to a position")
    places.add_argument("--set", metavar="CLASS", help="give CLASS a place in --data's places.csv: at --at, its region "
                        "and country from the nearest town")
    places.add_argument("--at", metavar="LAT,LON", help="with --set: the landmark's position")
    places.add_argument("--display-name", help="with --set: the landmark's display name (default: from the class name)")
    places.set_defaults(func=cmd_places)

    review = sub.add_parser("review", help="review a tag report: confirm or correct tags, retrain on the verdicts",
                            description="Without options: the report's photos the model decided, by outcome, the "
                                        "least certain first. Each verdict copies the photo into the run's dataset "
                                        "(train/CLASS/ or unknown/), logged beside the report and undoable.")
    review.add_argument("report", help="a tag report (tag-report.csv) written by landmark tag")
    review.add_argument("--accept", nargs="+", default=[], metavar="FILE", help="these photos' tags are right")
    review.add_argument("--correct", nargs="+", default=[], metavar="FILE=CLASS",
                        help="these photos show CLASS, a class of the dataset")
    review.add_argument("--new-class", nargs="+", default=[], metavar="FILE=CLASS",
                        help="these photos show CLASS, a landmark the dataset has no class for yet (one is made)")
    review.add_argument("--not-landmark", nargs="+", default=[], metavar="FILE",
                        help="these photos show no landmark the model should know")
    review.add_argument("--undo", nargs="?", const="last", metavar="FILE",
                        help="take back the verdict on FILE (the latest verdict without FILE)")
    review.add_argument("--retrain", action="store_true", help="train a new run with the same settings on the "
                        "dataset with the verdicts, then re-tag the photos the model decided")
    review.add_argument("--json", action="store_true")
    review.set_defaults(func=cmd_review)

    served = sub.add_parser("serve", help="an HTTP API for photo platforms: POST /v1/predict and /v1/tag",
                            description="Answers on 127.0.0.1 unless --host says otherwise (then --api-key is needed). "
                                        "OpenAPI description at /docs and /openapi.json.")
    served.add_argument("run", help="a finished, exported run")
    served.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    served.add_argument("--port", type=_number(int, 0, 65535), default=8000)
    served.add_argument("--workers", type=_number(int, 1, 64), default=1, help="processes, each with its own model")
    served.add_argument("--api-key", help="required from clients (header X-API-Key), also from $LANDMARK_API_KEY")
    served.add_argument("--max-batch", type=_number(int, 1, 256), default=8, help="photos classified in one pass")
    served.add_argument("--batch-wait-ms", type=_number(float, 0, 1000), default=5.0,
                        help="how long a photo waits for others to share its pass (default: 5 ms)")
    served.add_argument("--queue", type=_number(int, 1, 100_000), default=64,
                        help="photos that may wait; beyond it clients get 503 and Retry-After")
    served.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N or mps")
    served.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="list registered models")
    models.set_defaults(func=cmd_models)

    explain = sub.add_parser("explain", help="Grad-CAM heatmap of where the model looked, over the photo")
    explain.add_argument("run")
    explain.add_argument("photo")
    explain.add_argument("--out", default="heatmap.png", help="image to write (default: heatmap.png)")
    explain.add_argument("--target", help="explain this class (name) instead of the top prediction")
    explain.add_argument("--checkpoint", default="best", choices=("best", "last"))
    explain.set_defaults(func=cmd_explain)

    tag = sub.add_parser("tag", help="tag photos with the predicted landmark and its GPS position")
    tag.add_argument("run", help="a finished run")
    tag.add_argument("paths", nargs="+", metavar="PATH", help="photos or folders")
    tag.add_argument("--min-confidence", type=_number(float, 0, 1), help="abstain below this probability "
                     "(default: the threshold chosen on the run's validation split)")
    tag.add_argument("--tag-unfamiliar", action="store_true",
                     help="also tag photos that look like no landmark the model learned (not recommended)")
    tag.add_argument("--out", help="folder for tagged copies (default: ./tagged)")
    tag.add_argument("--overwrite", action="store_true", help="write the tags into the original files")
    tag.add_argument("--sidecars", action="store_true", help="write the tags into XMP sidecars beside the photos, "
                     "never touching them (an existing sidecar is merged into)")
    tag.add_argument("--sidecar-name", choices=("ext", "stem"), default="ext",
                     help="ext: photo.jpg.xmp (digiKam, darktable, Immich; default), stem: photo.xmp (Lightroom, "
                          "Capture One)")
    tag.add_argument("--sidecar-dir", metavar="DIR", help="with --sidecars: put them under DIR in a mirror of the "
                     "library's tree instead (for read-only libraries)")
    tag.add_argument("--overwrite-gps", action="store_true", help="also tag photos that already have GPS")
    tag.add_argument("--report", help="CSV report path (default: OUT/tag-report.csv, or OUT/tag-report-shard-K-of-N.csv)")
    tag.add_argument("--workers", type=_number(int, 1, 256), help="threads decoding photos (default: one per two cores on a CPU, "
                     "one per core with a GPU; at most 8)")
    tag.add_argument("--batch-size", type=_number(int, 1, 4096), help="photos per forward pass (default: 8 on a CPU, 64 on a GPU)")
    tag.add_argument("--shard", metavar="K/N", help="tag only this process's share of the files (1/4 ... 4/4): run N "
                     "processes, or one per GPU, on the same library; no file is tagged twice")
    tag.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N or mps")
    tag.set_defaults(func=cmd_tag)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TrainingCancelled as stop:
        print(f"cancelled: {stop}", file=sys.stderr)
        return 130
    except LandmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `landmark runs | head -3`: the reader left; nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not complain either
        return 141
    except OSError as error:  # a read-only folder, a full disk: the reason and the path, in one line
        where = f": {error.filename}" if error.filename else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: still one line, with the details on request
        if os.environ.get("LANDMARK_DEBUG"):
            raise
        print(f"internal error: {type(error).__name__}: {error} (set LANDMARK_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
