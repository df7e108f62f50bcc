"""``landmark train``, ``evaluate``, ``export``, ``runs``, ``lr-find`` and ``models``."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..core.errors import LandmarkError
from .common import ProgressBar, config_flags, open_finished_run, resolve_data


def _config_from_args(args):
    from ..runs.config import TrainConfig
    given = {f.name: getattr(args, f.name) for f in config_flags() if getattr(args, f.name) is not None}
    given["data"] = resolve_data(given.get("data", ""))
    return TrainConfig(**given)


# Commands check what they were given (a run, a folder) before importing torch: a typo is answered at once.

def cmd_train(args) -> int:
    from ..runs.launch import launch_background
    from ..runs.run import Run, read_status, resolve_run
    from ..training import distributed

    if distributed.launched_by_torchrun():
        return _train_as_rank(args)
    if args.json and not args.estimate:
        raise LandmarkError("--json goes with --estimate (a run's own output is its folder)")
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
            from ..core.allocator import keep_freed_memory
            from ..training.estimate import estimate, estimate_as_json
            keep_freed_memory()  # as the training process will: its steps are what is timed
            config = _config_from_args(args)
            print(estimate_as_json(config) if args.json else
                  f"{config.model} on {Path(config.data).name}: {estimate(config).describe()}")
            return 0
        run_dir, resume, processes = None, False, args.nproc_per_node or 1
    if processes < 1:
        raise LandmarkError("--nproc-per-node must be at least 1")
    if args.background:
        if run_dir is None:
            from ..pipeline import start_run
            run_dir = start_run(_config_from_args(args), processes=processes)
        else:
            launch_background(run_dir, resume=resume, processes=processes)
        print(run_dir)
        print(f"training in the background (pid {read_status(run_dir).get('pid')}); follow it with: landmark runs",
              file=sys.stderr)
        return 0
    if run_dir is None:
        from ..pipeline import create_run
        run_dir = create_run(_config_from_args(args))
    print(run_dir, flush=True)
    if processes > 1:
        from ..pipeline import train_distributed
        train_distributed(run_dir, processes)
    else:
        from ..pipeline import train
        from ..training.callbacks import ConsoleProgress
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
    from ..pipeline import create_run, train
    from ..runs.config import device_or_error
    from ..runs.run import Run, resolve_run
    from ..training import distributed
    from ..training.callbacks import ConsoleProgress

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
    run = open_finished_run(args.run, "evaluate")
    from ..pipeline import reevaluate
    from ..runs.config import resolve_device
    summary, exported_again = reevaluate(run, device=resolve_device(args.device), checkpoint=args.checkpoint)
    if exported_again:
        print(f"re-exported {run.id} with the new calibration and thresholds", file=sys.stderr)
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
    run_dir = open_finished_run(args.run, "export").path
    from ..export.exporter import export_fastest, export_run
    if args.format != "fastest":
        print(export_run(run_dir, checkpoint=args.checkpoint, format=args.format))
        return 0
    path, speed = export_fastest(run_dir, checkpoint=args.checkpoint)
    for format, result in speed.items():
        print(f"{format:<12} " + (f"{result:7.1f} photos/s" if isinstance(result, float) else f"left out: {result}"),
              file=sys.stderr)
    print(path)
    return 0


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def cmd_runs(args) -> int:
    from ..runs.progress import run_progress
    from ..runs.run import list_runs
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


def cmd_lr_find(args) -> int:
    from ..training.lr_finder import Sweep, find_learning_rate
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
    from ..models.registry import list_models, model_info
    for name in list_models():
        info = model_info(name)
        print(f"{name:<20} {info['parameters'] / 1e6:5.2f} M params  {info['gflops']:5.2f} GFLOPs at {info['image_size']}px  "
              f"{info['description']}")
    return 0
