"""The training side effects, each a callback on the engine's events (see :mod:`.events` for the contract)."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

from ..core.errors import TrainingCancelled
from ..core.fileio import append_jsonl, share_atomic
from ..core.world import SINGLE_PROCESS, World
from ..runs.config import TrainConfig
from ..runs.run import Run, write_status
from ..runs.states import STOPPED_BY_REQUEST
from .checkpoints import save_checkpoint
from .events import Callback


class MetricsLogger(Callback):
    """Appends epoch records, and a batch record every ``every`` batches, to ``metrics.jsonl``."""
    order = 0

    def __init__(self, path: Path, every: int):
        self.path, self.every = path, max(1, every)

    def on_batch_end(self, engine):
        if engine.batch % self.every == 0 or engine.batch == engine.last.batches:
            append_jsonl(self.path, engine.last.to_dict())

    def on_epoch_end(self, engine):
        append_jsonl(self.path, engine.last.to_dict())


class Checkpointer(Callback):
    """Writes ``checkpoint_last.pt`` every epoch and ``checkpoint_best.pt``, the model the run keeps, on a new best
    validation accuracy (or every epoch, when the config keeps the last epoch rather than the best)."""

    order = 20  # after the callbacks whose state it saves (early stopping)

    def __init__(self, run_dir: Path, config: TrainConfig, meta: dict):
        self.run_dir, self.config, self.meta = run_dir, config, meta

    def on_epoch_end(self, engine):
        val_acc = engine.last.score
        val_loss = engine.last.val_loss if engine.last.val_loss is not None else engine.last.train_loss
        # ties in accuracy are common on small validation splits: the lower loss breaks them
        is_best = val_acc > engine.best_val_acc or (val_acc == engine.best_val_acc and val_loss < engine.best_val_loss)
        if is_best:
            engine.best_val_acc, engine.best_val_loss = val_acc, val_loss
        state = {**engine.state_dict(), "config": self.config.to_dict(), **self.meta}
        # early stopping ends a run epochs after its best one: that one is kept, whatever keep_best says
        keeps_last = not self.config.keep_best and not self.config.early_stopping_patience
        run = Run(self.run_dir)
        save_checkpoint(run.checkpoint("last"), state)
        if keeps_last:
            share_atomic(run.checkpoint("last"), run.checkpoint("best"))  # the same bytes: not written twice
        elif is_best:
            save_checkpoint(run.checkpoint("best"), state)


class EarlyStopping(Callback):
    """Ends training after ``patience`` epochs without a better validation accuracy (training loss without
    a validation split). Its counters are saved in checkpoints: a resumed run stops where the uninterrupted
    one would have."""
    order = 10

    def __init__(self, patience: int):
        self.patience, self.best, self.bad_epochs = patience, -math.inf, 0

    def on_epoch_end(self, engine):
        score = engine.last.score
        if score > self.best:
            self.best, self.bad_epochs = score, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                engine.should_stop = True

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])


class StatusUpdater(Callback):
    """Keeps the status's epoch and batch current for the progress line (:mod:`landmark_core.runs.progress`): the epoch's start
    and, at most once every ``every_seconds``, the batch reached (the metrics log has a batch only every
    ``log_every``)."""
    order = 30

    def __init__(self, run_dir: Path, every_seconds: float = 1.0):
        self.run_dir, self.every_seconds, self.written = run_dir, every_seconds, 0.0

    def on_epoch_start(self, engine):
        self.written = time.time()
        write_status(self.run_dir, epoch_started=self.written, batch=0)

    def on_batch_end(self, engine):
        if time.time() - self.written >= self.every_seconds or engine.batch == engine.last.batches:
            self.written = time.time()
            write_status(self.run_dir, batch=engine.batch, batches=engine.last.batches)

    def on_epoch_end(self, engine):
        # the next epoch has not started (its loaders may take a while): its length is not yet being measured
        write_status(self.run_dir, epoch=engine.epoch, epochs=engine.config.epochs, batch=0, epoch_started=None)


class CancelOnRequest(Callback):
    """Raises :class:`TrainingCancelled` when a ``CANCEL`` file appears in the run folder.

    Processes of a distributed run agree after every batch (whichever saw the file first), so all of them
    stop at the same batch and none is left waiting for the others in a collective.
    """

    def __init__(self, run_dir: Path, world: World = SINGLE_PROCESS):
        self.run, self.world = Run.of(run_dir), world

    def on_batch_end(self, engine):
        if self.world.any(self.run.cancel_requested):
            raise TrainingCancelled(STOPPED_BY_REQUEST)


class ConsoleProgress(Callback):
    """A line per epoch; with the run's folder, also the run's elapsed time and ETA from :mod:`landmark_core.runs.progress` (the
    same figures as the Train page and ``landmark runs``)."""
    order = 40  # after StatusUpdater: the status already has this epoch

    def __init__(self, print_fn: Callable[[str], None] = print, run_dir: Path | None = None):
        self.print, self.run_dir = print_fn, run_dir

    def on_epoch_end(self, engine):
        r = engine.last
        val = f"val loss {r.val_loss:.3f} acc {r.val_acc:.3f}" if r.val_acc is not None else "no validation"
        times = ""
        if self.run_dir is not None:
            from ..runs.progress import format_seconds, run_progress
            progress = run_progress(self.run_dir)
            times = f"  elapsed {format_seconds(progress.elapsed)}" + (
                f"  ETA {format_seconds(progress.eta)}" if progress.eta is not None else "")
        self.print(f"epoch {r.epoch}/{r.epochs}  train loss {r.train_loss:.3f} acc {r.train_acc:.3f}  "
                   f"{val}  {r.epoch_seconds:.1f}s{times}")
