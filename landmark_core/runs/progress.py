"""Where a run is, in one model: its stage, epoch and batch, the time it has worked and the time it still needs.

The Train page, ``landmark runs`` and the CLI's progress line all describe a run through :func:`run_progress`, so
they never disagree. Time is the run's own clock: the seconds of its finished sessions (``seconds`` in the
status) plus the open session's, so a stop, a pause and a resume neither lose time nor count the pause. The ETA
comes only from times this run measured (its epochs, the batches of the epoch in progress) and is ``None`` while
nothing has been measured or the stage's length is unknown (decoding, evaluating, exporting).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.enums import TextEnum
from .config import MAX_EPOCHS
from .run import Run, count_in, non_negative, worked_seconds
from .states import ACTIVE_STATES, STOPPED_BY_REQUEST, RunState


class Stage(TextEnum):
    """What a running session is doing; written to the status as its value."""
    WAITING = "waiting"
    DECODING = "decoding"
    TRAINING = "training"
    EVALUATING = "evaluating"
    EXPORTING = "exporting"


@dataclass(frozen=True)
class RunProgress:
    state: RunState
    stage: Stage | None  # None once the run has ended
    epoch: int  # epochs completed
    epochs: int | None  # planned; None when the run's config holds no sensible count
    batch: int  # batches done in the epoch in progress (0 between epochs)
    batches: int | None
    decoded: tuple[int, int] | None  # photos decoded / to decode, while decoding
    elapsed: float  # seconds the run has worked, over all its sessions
    train_seconds: float | None  # of a finished run: its training alone (no evaluation or export)
    eta: float | None
    processes: int
    error: str | None

    @property
    def fraction(self) -> float:
        if self.state == RunState.FINISHED or self.stage in (Stage.EVALUATING, Stage.EXPORTING):
            return 1.0
        within = self.batch / self.batches if self.batch and self.batches else 0.0
        return min(1.0, (self.epoch + within) / max(1, self.epochs or self.epoch + 1))

    @property
    def stopped_by_request(self) -> bool:
        return self.state == RunState.CANCELLED and self.error == STOPPED_BY_REQUEST

    @property
    def label(self) -> str:
        """The state in a word, as a user reads it (a run stopped by request is "stopped", not "cancelled")."""
        return "stopped" if self.state == RunState.CANCELLED else str(self.state)

    def describe(self, with_error: bool = True) -> str:
        """One line: what the run does or how it ended, where it is and its times (and the error of a failed run
        unless ``with_error`` is False, for a page that shows it apart)."""
        planned = self.epochs or "?"
        where = f"epoch {self.epoch} of {planned}"
        on = f" on {self.processes} processes" if self.processes > 1 else ""
        worked = f"elapsed {format_seconds(self.elapsed)}"
        if self.state == RunState.RUNNING:
            if self.stage == Stage.DECODING:
                counted = f" {self.decoded[0]:,}/{self.decoded[1]:,}" if self.decoded else ""
                doing = f"decoding photos{counted} (the first time only: they are cached)"
            elif self.stage == Stage.EVALUATING:
                doing = f"evaluating on the test photos (trained {self.epoch} of {planned} epochs)"
            elif self.stage == Stage.EXPORTING:
                doing = "exporting the model"
            elif self.stage == Stage.TRAINING:
                batch = f" · batch {self.batch}/{self.batches}" if self.batch and self.batches else ""
                doing = f"training epoch {min(self.epoch + 1, self.epochs or self.epoch + 1)} of {planned}{batch}"
            else:
                doing = "starting"
            eta = f" · ETA {format_seconds(self.eta)}" if self.eta is not None else ""
            return f"running{on} · {doing} · {worked}{eta}"
        if self.state == RunState.QUEUED:
            return "waiting to start"
        if self.state == RunState.FINISHED:
            trained = f"trained in {format_seconds(self.train_seconds)}, " if self.train_seconds is not None else ""
            return f"finished · {self.epoch} of {planned} epochs · {trained}{format_seconds(self.elapsed)} in all"
        if self.state == RunState.CANCELLED:
            how = "stopped" if self.stopped_by_request else f"stopped ({self.error})" if self.error else "stopped"
            return f"{how} after {where} · {worked} · Resume continues from the last finished epoch"
        if self.state == RunState.INTERRUPTED:
            return (f"interrupted after {where} · {worked} · its process is gone (killed, or the machine restarted); "
                    "Resume continues from the last finished epoch")
        if self.state == RunState.FAILED:
            return f"failed after {where} · {worked}" + (f": {self.error}" if self.error and with_error else "")
        return f"{self.state} · {where}"


def format_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):  # NaN: a missing value in a table
        return "–"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m {seconds % 60:02d}s"


def _epoch_estimate(records: list[dict], frozen: bool) -> float | None:
    """The median measured length of this run's epochs of one kind (backbone frozen or not), or None."""
    seconds = [r["epoch_seconds"] for r in records
               if bool(r.get("backbone_frozen")) == frozen and non_negative(r.get("epoch_seconds")) is not None]
    return statistics.median(seconds[-3:]) if seconds else None


def _eta(status: dict, epochs_done: list[dict], batch: int, batches: int | None, total: int,
         now: float) -> float | None:
    """Seconds until the last epoch ends, from what this run measured; None when any remaining epoch's length is
    unknown."""
    freeze = status.get("freeze_epochs")
    freeze = freeze if isinstance(freeze, int) and not isinstance(freeze, bool) else None
    started = non_negative(status.get("epoch_started"))
    in_epoch = max(0.0, now - started) if started is not None else 0.0
    current = len(epochs_done) + 1  # 1-based number of the epoch in progress
    current_frozen = freeze is not None and current <= freeze
    # the epoch in progress, projected from its own batches once a few have passed
    projected = in_epoch * batches / batch if batch >= 2 and batches and in_epoch > 0 else None

    def length(epoch: int) -> float | None:
        frozen = freeze is not None and epoch <= freeze
        measured = _epoch_estimate(epochs_done, frozen)
        if frozen == current_frozen and projected is not None:
            return projected if measured is None else (projected + measured) / 2
        return measured

    now_length = length(current)
    if now_length is None:
        return None
    remaining = max(0.0, now_length - in_epoch)
    for epoch in range(current + 1, total + 1):
        later = length(epoch)
        if later is None:
            return None
        remaining += later
    return remaining


def run_progress(run_dir: Path, now: float | None = None) -> RunProgress:
    """Where the run is now. Never fails on what its files hold (a hand-edited or half-written value counts as
    missing): listing runs must show every run."""
    run = Run(run_dir)
    now = time.time() if now is None else now
    try:
        status = run.status
    except (ValueError, OSError):
        status = {"state": RunState.DAMAGED.value}
    if not isinstance(status, dict):
        status = {"state": RunState.DAMAGED.value}
    config = run.config_values
    epochs_done = [r for r in run.epochs if isinstance(r, dict)]
    try:
        state = RunState(status.get("state", "queued"))
    except (ValueError, TypeError):
        state = RunState.DAMAGED
    # the config is the plan: an absurd count there is no count (a status's copy of it is not the plan)
    planned = config.get("epochs")
    total = count_in(planned, MAX_EPOCHS) if planned is not None else count_in(status.get("epochs"), MAX_EPOCHS)
    total = total or None
    running = state == RunState.RUNNING
    try:
        stage = Stage(status.get("stage")) if running and status.get("stage") else (Stage.WAITING if running else None)
    except (ValueError, TypeError):
        stage = Stage.TRAINING if running else None
    logged = next((r.get("batches") for r in reversed(run.metrics) if isinstance(r, dict) and r.get("kind") == "batch"), None)
    batches = count_in(status.get("batches"), 10**9) or count_in(logged, 10**9) or None
    batch = min(count_in(status.get("batch"), 10**9), batches or 0) if running and stage == Stage.TRAINING else 0
    decoded = status.get("decoded")
    decoded = (tuple(count_in(n, 10**12) for n in decoded) if stage == Stage.DECODING and isinstance(decoded, list)
               and len(decoded) == 2 else None)
    eta = (_eta(status, epochs_done, batch, batches, total, now)
           if running and stage == Stage.TRAINING and total else None)
    return RunProgress(
        state=state, stage=stage if state in ACTIVE_STATES else None, epoch=min(len(epochs_done), total or MAX_EPOCHS),
        epochs=total,
        batch=batch, batches=batches, decoded=decoded, elapsed=worked_seconds(status, now),
        train_seconds=non_negative(status.get("train_seconds")) if state == RunState.FINISHED else None,
        eta=eta, processes=count_in(status.get("processes"), 1024) or 1,
        error=str(status["error"]) if status.get("error") is not None else None)
