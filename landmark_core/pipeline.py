"""A run from start to finish: create its folder, train it (one trainer at a time), evaluate and export it.

:func:`create_run` writes the resolved config; :func:`train` holds the run's lock, prepares the data, builds
the model and the engine with the standard callbacks, and on success evaluates and exports. Cancellation
(a ``CANCEL`` file, SIGTERM or Ctrl-C) is an exception; the last checkpoint stays, so a run resumes from it.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import data as data_lib
from .core.allocator import keep_freed_memory, release_freed_memory
from .core.errors import DataError, LandmarkError, RunError, TrainingCancelled
from .core.fileio import read_jsonl, remove_unfinished_writes, write_bytes_atomic
from .evaluation.evaluate import evaluate_run
from .export.exporter import export_run
from .models.builders import familiarity_network
from .models.registry import build_model
from .runs.config import TrainConfig, resolve_device, run_preprocessing
from .runs.progress import Stage
from .runs.launch import launch_background
from .runs.run import Run, new_run_dir, non_negative, now_iso, read_status, worked_seconds, write_status
from .runs.states import STOPPED_BY_REQUEST, RunState
from .training import distributed
from .training.callbacks import CancelOnRequest, Checkpointer, EarlyStopping, MetricsLogger, StatusUpdater
from .training.checkpoints import load_checkpoint
from .training.engine import Engine
from .training.events import Callback
from .training.prepare import prepare_data, resolved_for_dataset


#: The stop signal this process received, if any: a library may catch the TrainingCancelled the handler raises
#: and fail with an error of its own (torch's load_state_dict reports it as a RuntimeError about a tensor).
_signal_received: list[int] = []


def _raise_cancel(signum, frame):
    _signal_received.append(signum)
    raise TrainingCancelled(f"stopped by signal {signum}")


def _restrict_metrics(path: Path, epoch: int) -> None:
    """On resume, drop records of the epoch that was interrupted (it is trained again)."""
    kept = [r for r in read_jsonl(path) if r.get("epoch", 0) <= epoch]
    write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in kept).encode())


def create_run(config: TrainConfig, artifacts: Path | None = None) -> Path:
    """Make a run folder with its resolved ``config.json`` and a queued status; train it later."""
    config, dataset = resolved_for_dataset(config)
    if dataset.num_classes < 2:
        raise DataError(f"{config.data} has {dataset.num_classes} class ({', '.join(dataset.classes)}); "
                        "a classifier needs at least 2")
    run_dir = new_run_dir(config.model, artifacts)
    run = Run(run_dir)
    run.write_config(config.to_dict())
    run.mark(RunState.QUEUED, created=now_iso(), epochs=config.epochs, epoch=0)
    return run_dir


def start_run(config: TrainConfig, *, processes: int = 1, artifacts: Path | None = None) -> Path:
    """Create a run and train it in a background process of its own (the CLI's ``--background`` and the Train
    page's Start): it outlives the caller, and its folder says how it goes. Returns the run folder."""
    run_dir = create_run(config, artifacts)
    launch_background(run_dir, processes=processes)
    return run_dir


def reevaluate(run: Run | Path, *, device: torch.device | str = "cpu", checkpoint: str = "best") -> tuple[dict, bool]:
    """Evaluate a finished run again and, when its export is of that checkpoint and now carries another
    calibration or other tag thresholds, export it again in the same format: the exported model (what the
    Predictor, ``landmark tag``, the service and the bundle read) always decides as evaluation chose, with the
    feature bank it saved (photos added to the dataset's unknown/ folder change it). Returns the summary and whether
    the run was exported again."""
    run = Run.of(run)
    summary = evaluate_run(run, device=device, checkpoint=checkpoint)
    exported = run.export_meta or {}
    # an export from before distractors has no digest: its bank is out of date only if the new one has distractors
    bank = summary["open_set"]["bank_digest"] if not summary["open_set"]["distractors"] else None
    carried = (exported.get("temperature"), exported.get("probability_threshold"), exported.get("familiarity_threshold"),
               exported.get("feature_bank_digest", bank))
    chosen = (summary["calibration"]["temperature"], summary["default_threshold"], summary["default_familiarity_threshold"],
              summary["open_set"]["bank_digest"])
    if exported.get("checkpoint") != checkpoint or carried == chosen:
        return summary, False
    export_run(run.path, checkpoint=checkpoint, format=exported.get("format", "torchscript"))
    return summary, True


def train(run_dir: Path, *, resume: bool = False, callbacks: Sequence[Callback] = (),
          progress: Callable[[str, int, int], None] | None = None, evaluate_and_export: bool = True) -> Path:
    """Train the run in ``run_dir`` (made by :func:`create_run`); return ``run_dir``.

    Status moves queued → running → finished / failed / cancelled. Cancellation
    (a ``CANCEL`` file, SIGTERM or Ctrl-C) is an exception raised inside the loop;
    the last checkpoint stays, so ``resume=True`` continues from it.

    In a process started by torchrun this is one rank of a distributed run (:mod:`.training.distributed`): rank 0
    holds the lock and writes the run folder; the other ranks train their share and write nothing.
    """
    keep_freed_memory()
    config = Run(run_dir).config()
    previous = _unfinished_status(run_dir)
    world, device = distributed.join(resolve_device(config.device))
    try:
        if not world.is_main:
            _train_rank(run_dir, config, world, device, resume=resume, callbacks=callbacks)
            return run_dir
        with RunLock(run_dir):
            return _train_locked(run_dir, config, previous, world, device, resume=resume, callbacks=callbacks,
                                 progress=progress, evaluate_and_export=evaluate_and_export)
    except BaseException as error:
        distributed.record_failure(error)
        raise
    finally:
        distributed.leave()
        release_freed_memory()


def _unfinished_status(run_dir: Path) -> dict:
    """The run's status; a RunError when it has finished (a finished run is never trained again)."""
    status = Run.of(run_dir).written_status
    if status.get("state") == RunState.FINISHED:
        raise RunError(f"{run_dir.name} has finished: there is nothing to resume (train a new run; "
                       f"`landmark export {run_dir.name}` exports it again)")
    return status


class RunLock:
    """One trainer per run: an exclusive ``flock`` on ``run_dir/LOCK`` held while this process trains it.

    The kernel releases the lock when the process ends however it ends (SIGKILL included), so a lock is never
    stale and never confused by a reused pid; the file keeps the holder's pid for the message.
    """

    def __init__(self, run_dir: Path):
        self.path = Run.of(run_dir).lock_file
        self.handle = None

    def __enter__(self) -> "RunLock":
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunError(f"{self.path.parent.name} is being trained by process {holder}; "
                           f"stop it first (Stop in the app, or: kill {holder})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        # the file stays: unlinking a locked path would let a newcomer lock a different inode of the same name
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _build_engine(run_dir: Path, config: TrainConfig, prepared, world: distributed.World, device: torch.device,
                  writers: Sequence[Callback], callbacks: Sequence[Callback], resume_state: dict | None) -> Engine:
    """The model and the engine with the standard callbacks (``writers``: rank 0's), resumed when asked."""
    if config.separate_familiarity_backbone:  # its weights are needed only by evaluation: missing ones fail now
        familiarity_network(config.separate_familiarity_backbone, len(prepared.classes))
    torch.manual_seed(config.seed)  # initialisation must not depend on what ran earlier in this process
    model = build_model(config.model, len(prepared.classes), pretrained=config.pretrained,
                        weights_path=config.weights_path, **config.model_options)
    engine = Engine(config, model, prepared, device, [
        *writers, CancelOnRequest(run_dir, world),
        *([EarlyStopping(config.early_stopping_patience)] if config.early_stopping_patience else []),
        *callbacks], world=world)
    if resume_state is not None:
        engine.load_state_dict(resume_state)
    return engine


def _train_rank(run_dir: Path, config: TrainConfig, world: distributed.World, device: torch.device, *, resume: bool,
                callbacks: Sequence[Callback]) -> None:
    """A rank other than 0: trains its share of every batch and writes nothing to the run folder."""
    old_handler = signal.signal(signal.SIGTERM, _raise_cancel) if _in_main_thread() else None
    try:
        torch.manual_seed(config.seed)
        resume_state = _resume_state(run_dir, device) if resume else None
        world.barrier()  # rank 0 decodes the photos into the shared cache first
        prepared = prepare_data(config)
        _build_engine(run_dir, config, prepared, world, device, (), callbacks, resume_state).fit()
        distributed.leave(together=True)
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)


def _train_locked(run_dir: Path, config: TrainConfig, previous: dict, world: distributed.World, device: torch.device,
                  *, resume: bool, callbacks, progress, evaluate_and_export: bool) -> Path:
    run = Run(run_dir)
    run.clear_cancel()
    # a killed trainer's half-written checkpoint: the lock keeps other trainers out, but the app that launched this
    # one may be writing the status right now
    remove_unfinished_writes(run_dir, keep=(Run.STATUS,))
    started = time.time()
    # the run's own clock: the sessions before this one, a killed one's up to its last status write
    worked_before = worked_seconds(read_status(run_dir))
    trained_before = non_negative(previous.get("train_seconds")) or 0.0  # the training of earlier, closed sessions
    # the launcher's pid when there is one: Stop signals it, and torchrun stops every rank
    pid = int(os.environ.get("LANDMARK_LAUNCHER_PID") or os.getpid())
    run.mark(RunState.RUNNING, pid=pid, processes=world.size, started=previous.get("started") or now_iso(),
                 error=None, session_started=started, seconds=worked_before, stage=Stage.DECODING.value, decoded=None,
                 batch=0, epoch_started=None, freeze_epochs=config.freeze_epochs)

    def ended(state: RunState, **fields) -> None:
        run.mark(state, finished=now_iso(), seconds=worked_before + time.time() - started,
                     session_started=None, stage=None, **fields)
    _signal_received.clear()
    old_handler = signal.signal(signal.SIGTERM, _raise_cancel) if _in_main_thread() else None
    try:
        torch.manual_seed(config.seed)
        resume_state = _resume_state(run_dir, device) if resume else None  # before decoding: a bad file fails fast
        prepared = prepare_data(config, _reporting_stage(run_dir, progress))
        write_status(run_dir, stage=Stage.TRAINING.value, decoded=None)
        if world.is_distributed:
            data_lib.wait_for_cache_writes()
            world.barrier()
        run.write_split(prepared.split)
        meta = {"classes": prepared.classes, "mean": prepared.mean, "std": prepared.std}
        preprocessing = run_preprocessing(config)
        run.write_preprocessing({**meta, "image_size": config.image_size, "resize_size": preprocessing.resize_size,
                                 "interpolation": preprocessing.interpolation})
        writers = [MetricsLogger(run.metrics_file, config.log_every), Checkpointer(run_dir, config, meta),
                   StatusUpdater(run_dir)]
        engine = _build_engine(run_dir, config, prepared, world, device, writers, callbacks, resume_state)
        if run.metrics_file.exists():
            # records past the checkpoint's epoch are of an epoch trained again; with no checkpoint yet (a trainer
            # killed before its first one) all of them are: kept, they would log epoch 1 twice
            _restrict_metrics(run.metrics_file, engine.epoch)
        engine.fit()
        distributed.leave(together=True)  # evaluation and export need no other rank
        train_seconds = trained_before + time.time() - started
        write_status(run_dir, train_seconds=train_seconds)
        if evaluate_and_export:
            write_status(run_dir, stage=Stage.EVALUATING.value)
            evaluate_run(run_dir, device=device, prepared=prepared)
            write_status(run_dir, stage=Stage.EXPORTING.value)
            export_run(run_dir)
        ended(RunState.FINISHED, train_seconds=train_seconds)
        # a status write of a rank killed before this start (SIGKILL mid-write) left its temporary: older than the
        # run's own writes, so no live writer's
        remove_unfinished_writes(run_dir, keep=(Run.STATUS,), keep_seconds=max(10.0, time.time() - started))
        return run_dir
    except TrainingCancelled as stop:
        if world.is_distributed and not run.cancel_requested:
            stop = TrainingCancelled(f"{stop} (torchrun stops every rank when one fails: its output names the rank)")
        # the Stop button (request_cancel) leaves its flag: a stop the user asked for, not a failure
        ended(RunState.CANCELLED, error=STOPPED_BY_REQUEST if run.cancel_requested else str(stop),
              train_seconds=trained_before + time.time() - started)
        raise
    except KeyboardInterrupt:
        ended(RunState.CANCELLED, error="interrupted (Ctrl-C)", train_seconds=trained_before + time.time() - started)
        raise TrainingCancelled("interrupted (Ctrl-C)") from None
    except Exception as error:
        if _signal_received:  # stopped inside a library that reported the stop as its own failure (ModelError too)
            ended(RunState.CANCELLED, error=STOPPED_BY_REQUEST if run.cancel_requested else
                  f"stopped by signal {_signal_received[-1]}", train_seconds=trained_before + time.time() - started)
            raise TrainingCancelled(f"stopped by signal {_signal_received[-1]}") from None
        if isinstance(error, LandmarkError):
            ended(RunState.FAILED, error=str(error))
            raise
        if isinstance(error, OSError):  # disk full, permissions: fail the run with the reason
            ended(RunState.FAILED, error=f"{error.strerror or error}: {error.filename or ''}".strip(": "))
            raise RunError(f"run failed: {error}") from None
        run.keep_traceback(traceback.format_exc())
        ended(RunState.FAILED, error=f"{type(error).__name__}: {error}")
        raise
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)


def _reporting_stage(run_dir: Path, progress: Callable[[str, int, int], None] | None):
    """Pass decoding progress on, and keep it in the status (at most once a second) so the app can say why the
    first epoch has not started: decoding thousands of photos takes a minute or more the first time."""
    last = [0.0]

    def report(stage: str, done: int, total: int) -> None:
        if progress:
            progress(stage, done, total)
        if done == total or time.time() - last[0] >= 1.0:
            last[0] = time.time()
            write_status(run_dir, stage=Stage.DECODING.value, decoded=[done, total])
    return report


def _resume_state(run_dir: Path, device: torch.device) -> dict | None:
    checkpoint = Run(run_dir).checkpoint("last")
    return load_checkpoint(checkpoint, device) if checkpoint.exists() else None


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def train_distributed(run_dir: Path, processes: int) -> Path:
    """Train ``run_dir`` with ``processes`` ranks on this machine through torchrun (``torch.distributed.run``).

    Each rank runs ``landmark train --run-dir RUN`` (which resumes from the last checkpoint when there is one)
    and :func:`train` does the rest. Blocks until the ranks end. A rank's failure fails the run with that
    rank's error; a request to stop leaves it cancelled and resumable, like a single process.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run as torchrun

    if processes > distributed.process_limit():
        raise LandmarkError(f"{processes} processes asked for; this machine has {distributed.process_limit()} "
                            f"{'GPUs' if torch.cuda.is_available() else 'CPU cores'}")
    _unfinished_status(run_dir)
    with RunLock(run_dir):  # another trainer holds it: say so now, not from inside rank 0
        pass
    # the ranks inherit this process's environment; it is restored afterwards (a caller's later children must not
    # inherit one thread each). torchrun gives each CPU rank one thread unless told otherwise: a share of the cores.
    saved = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "LANDMARK_LAUNCHER_PID",
                                                     "TORCHELASTIC_SIGNALS_TO_HANDLE")}
    # torchrun's agent installs its own handlers (they raise SignalException); this process gets its own back
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)} \
        if _in_main_thread() else {}
    run = Run.of(run_dir)
    run.clear_cancel()  # a stop requested before is not this launch's
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    os.environ["LANDMARK_LAUNCHER_PID"] = str(os.getpid())  # Stop in the app signals the launcher, which stops all
    write_status(run_dir, processes=processes)
    arguments = ["--nnodes", "1", "--nproc-per-node", str(processes), "--rdzv-backend", "c10d",
                 "--rdzv-endpoint", "127.0.0.1:0", "--rdzv-id", f"landmark-{run_dir.name}-{os.getpid()}",
                 "--max-restarts", "0", "--monitor-interval", "0.5", "--module", "landmark_core", "train",
                 "--run-dir", str(run_dir)]
    try:
        torchrun(get_args_parser().parse_args(arguments))
    except SignalException as stop:  # Stop in the app (SIGTERM) or Ctrl-C: torchrun stopped every rank
        raise TrainingCancelled(f"stopped by signal {stop.sigval}") from None
    except ChildFailedError as error:
        if run.cancel_requested:  # every rank stopped on request; rank 0 recorded it
            raise TrainingCancelled("cancelled by request") from None
        reason = distributed.root_cause(error.failures)
        run.mark(RunState.FAILED, error=reason, finished=now_iso())
        raise RunError(f"{run_dir.name} failed: {reason}") from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return run_dir


def train_new(config: TrainConfig, artifacts: Path | None = None, **kwargs) -> Path:
    """Create a run folder for ``config`` and train it in this process."""
    return train(create_run(config, artifacts), **kwargs)
