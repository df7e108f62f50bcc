"""Run folders: the Run handle on one, its status, and the listing of all of them.

A run lives in ``<artifacts>/runs/<run_id>/`` and holds everything needed to
rebuild it: ``config.json``, ``status.json``, ``metrics.jsonl``, ``split.json``,
checkpoints, ``evaluation.json`` and the exported model.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import RunError
from ..core.fileio import process_alive, read_json, read_jsonl, write_json_atomic
from ..core.locations import runs_dir
from .config import MAX_EPOCHS
from .states import ACTIVE_STATES, RunState


@dataclass(frozen=True)
class Run:
    """A run folder: the one place that names its files and reads them.

    Everything a run is lives in its folder (see the module docstring); code elsewhere asks a ``Run`` for a
    file or its content instead of spelling file names.
    """
    path: Path

    CONFIG = "config.json"
    STATUS = "status.json"
    METRICS = "metrics.jsonl"
    SPLIT = "split.json"
    PREPROCESSING = "preprocessing.json"
    EVALUATION = "evaluation.json"
    PREDICTIONS = "predictions.json"
    CALIBRATION = "calibration.json"
    EXPORT_META = "export.json"
    MODEL = "model.ts"
    ONNX_MODEL = "model.onnx"
    ONNX_INT8_MODEL = "model-int8.onnx"
    LOG = "log.txt"
    ERROR = "error.txt"
    CANCEL = "CANCEL"
    LOCK = "LOCK"

    @classmethod
    def open(cls, run: "str | os.PathLike | Run", artifacts: Path | None = None) -> "Run":
        """A run from its folder or its id; RunError when it is not a run folder."""
        return run if isinstance(run, Run) else cls(resolve_run(run, artifacts))

    @classmethod
    def of(cls, run: "str | os.PathLike | Run") -> "Run":
        """The handle on a run folder given as a ``Run`` or its path (not checked: it may be being created)."""
        return run if isinstance(run, Run) else cls(Path(run))

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def id(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    def checkpoint(self, kind: str = "best") -> Path:
        """``checkpoint_best.pt`` (best validation epoch) or ``checkpoint_last.pt`` (what a resume continues)."""
        return self.path / f"checkpoint_{kind}.pt"

    def feature_bank(self, checkpoint: str = "best") -> Path:
        """Normalised training features of a checkpoint: what familiarity compares photos against."""
        return self.path / f"feature_bank_{checkpoint}.pt"

    # -- contents (missing files read as empty; damaged ones as described on each)
    @property
    def config_values(self) -> dict:
        """``config.json`` as saved ({} when missing or damaged); :meth:`config` for the resolved TrainConfig."""
        values = _readable(self.file(self.CONFIG), {})
        return values if isinstance(values, dict) else {}

    def config(self):
        """The run's resolved :class:`~landmark_core.runs.config.TrainConfig`, or a RunError saying the file is damaged."""
        from ..core.errors import LandmarkError
        from .config import TrainConfig  # the config resolves models: torch, which listing runs does not need
        try:
            values = read_json(self.file(self.CONFIG))
            if not isinstance(values, dict):
                raise ValueError("not a JSON object")
            return TrainConfig.from_dict(values).resolved()
        except LandmarkError:
            raise
        except (ValueError, TypeError) as error:
            raise RunError(f"{self.id}/{self.CONFIG} is damaged ({error}); the run cannot be rebuilt from it") from None

    @property
    def status(self) -> dict:
        return read_status(self.path)

    @property
    def state(self) -> RunState:
        try:
            return state_of(self.status)
        except (ValueError, OSError):
            return RunState.DAMAGED

    @property
    def evaluation(self) -> dict | None:
        value = _readable(self.file(self.EVALUATION), None)
        return value if isinstance(value, dict) else None

    @property
    def predictions(self) -> list:
        value = _readable(self.file(self.PREDICTIONS), [])
        return value if isinstance(value, list) else []

    @property
    def split(self) -> dict:
        value = _readable(self.file(self.SPLIT), {})
        return value if isinstance(value, dict) else {}

    @property
    def metrics(self) -> list[dict]:
        """The metrics log's records (a line that is no JSON object, hand-edited or torn, is left out)."""
        return [record for record in read_jsonl(self.file(self.METRICS)) if isinstance(record, dict)]

    @property
    def epochs(self) -> list[dict]:
        """The finished epochs' records."""
        return [record for record in self.metrics if record.get("kind") == "epoch"]

    @property
    def export_meta(self) -> dict | None:
        """``export.json`` (unverified: :func:`landmark_core.export.exporter.load_exported` checks its signature)."""
        value = _readable(self.file(self.EXPORT_META), None)
        return value if isinstance(value, dict) else None

    @property
    def exported(self) -> bool:
        """Whether the run has an exported model (the file its ``export.json`` names)."""
        return self.export_meta is not None and self.exported_model_file.exists()

    @property
    def default_threshold(self) -> float:
        """The probability threshold the run tags with: the exported model's, else evaluation's, else 0.5."""
        carried = (self.export_meta or {}).get("probability_threshold")
        if carried is not None:
            return float(carried)
        return float((self.evaluation or {}).get("default_threshold", 0.5))

    @property
    def dataset(self) -> Path | None:
        """The folder the run was trained on, if it is still there."""
        root = self.config_values.get("data")
        return Path(root) if root and Path(root).is_dir() else None

    def write_status(self, **fields) -> dict:
        return write_status(self.path, **fields)

    @property
    def written_status(self) -> dict:
        """``status.json`` as its last writer left it (no correction for a process that is gone)."""
        return read_json(self.file(self.STATUS), default={}) or {}

    def mark(self, state: RunState, **fields) -> dict:
        """Record a new state (and what goes with it: an error, times) in ``status.json``."""
        return write_status(self.path, state=RunState(state), **fields)

    # -- files the training process writes
    def write_config(self, values: dict) -> None:
        write_json_atomic(self.file(self.CONFIG), values)

    def write_split(self, split: dict) -> None:
        write_json_atomic(self.file(self.SPLIT), split)

    def write_preprocessing(self, values: dict) -> None:
        write_json_atomic(self.file(self.PREPROCESSING), values)

    @property
    def metrics_file(self) -> Path:
        return self.file(self.METRICS)

    @property
    def lock_file(self) -> Path:
        return self.file(self.LOCK)

    def keep_traceback(self, text: str) -> None:
        """An unexpected failure's traceback, for a bug report (the status keeps its one-line reason)."""
        self.file(self.ERROR).write_text(text)

    # -- a request to stop (the Stop button): a flag file, seen by every rank
    @property
    def cancel_requested(self) -> bool:
        return self.file(self.CANCEL).exists()

    def request_cancel(self) -> None:
        request_cancel(self.path)

    def clear_cancel(self) -> None:
        """Forget an earlier request to stop: it was not this session's."""
        self.file(self.CANCEL).unlink(missing_ok=True)

    # -- evaluation's files
    @property
    def calibrations(self) -> dict:
        """``calibration.json``: temperature and both tag thresholds per checkpoint ({} before evaluation); a
        RunError when it is damaged (an export without them would tag at other thresholds than evaluation chose)."""
        try:
            value = read_json(self.file(self.CALIBRATION), default={})
        except (ValueError, OSError):
            value = None
        if not isinstance(value, dict):
            raise RunError(f"{self.id}/{self.CALIBRATION} is damaged; evaluate the run again: landmark evaluate {self.id}")
        return value

    def calibration(self, checkpoint: str = "best") -> dict:
        return self.calibrations.get(checkpoint) or {}

    def write_evaluation(self, summary: dict, predictions: list, calibration: dict, checkpoint: str = "best") -> None:
        """Evaluation's results: the checkpoint's calibration (beside the others'), every prediction, the summary
        last (its presence says the evaluation is whole)."""
        others = _readable(self.file(self.CALIBRATION), {})  # a damaged file is what evaluating again repairs
        write_json_atomic(self.file(self.CALIBRATION), {**others, checkpoint: calibration})
        write_json_atomic(self.file(self.PREDICTIONS), predictions)
        write_json_atomic(self.file(self.EVALUATION), summary)

    # -- the exported model
    EXPORT_FILES = {"torchscript": MODEL, "onnx": ONNX_MODEL, "onnx-int8": ONNX_INT8_MODEL}

    def model_file(self, format: str = "torchscript") -> Path:
        """The file an export of ``format`` writes."""
        return self.file(self.EXPORT_FILES[format])

    @property
    def exported_model_file(self) -> Path:
        """The file ``export.json`` names (TorchScript when it names none)."""
        return self.file(self.EXPORT_FILES.get((self.export_meta or {}).get("format"), self.MODEL))

    def write_export_meta(self, meta: dict) -> None:
        write_json_atomic(self.file(self.EXPORT_META), meta)

    @property
    def export_stamp(self) -> float:
        """When the model was last exported (``export.json``'s modification time): caches of a loaded model key on
        it, so a re-export is loaded again."""
        return self.file(self.EXPORT_META).stat().st_mtime


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_dir(model: str, artifacts: Path | None = None) -> Path:
    """Create a fresh, uniquely named run folder (``mkdir`` is exclusive, so runs never share one)."""
    parent = runs_dir(artifacts)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    while True:
        path = parent / f"{stamp}-{model}-{secrets.token_hex(2)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def artifacts_of(run_dir: Path) -> Path | None:
    """The artifacts folder a run lives in (``<artifacts>/runs/<id>``), or None for a run folder kept elsewhere."""
    run_dir = Path(run_dir).resolve()
    return run_dir.parent.parent if run_dir.parent.name == "runs" else None  # see runs_dir


def resolve_run(run: str | os.PathLike, artifacts: Path | None = None) -> Path:
    """Accept a run folder path or a run id."""
    path = Path(run).expanduser()
    if not path.is_dir():
        candidate = runs_dir(artifacts) / str(run)
        if candidate.is_dir():
            path = candidate
    if not (path / Run.CONFIG).is_file():
        raise RunError(f"not a run folder (no config.json): {run}")
    return path


def read_status(run_dir: Path) -> dict:
    """``status.json`` with ``state`` corrected to "interrupted" when its process is gone."""
    status = read_json(run_dir / Run.STATUS, default={"state": RunState.QUEUED}) or {"state": RunState.QUEUED}
    if not isinstance(status, dict):  # valid JSON, but not what this app writes
        return {"state": RunState.DAMAGED.value, "error": f"{Run.STATUS} is damaged"}
    pid = status.get("pid")
    if status.get("state") in ACTIVE_STATES and not (isinstance(pid, int) and process_alive(pid)):
        if status.get("state") == RunState.RUNNING or status.get("launched"):
            status = {**status, "state": RunState.INTERRUPTED}
    return status


def state_of(status: dict) -> RunState:
    """The state a status record holds (a value no version of this app writes reads as damaged)."""
    try:
        return RunState(status.get("state", RunState.QUEUED))
    except ValueError:
        return RunState.DAMAGED


def write_status(run_dir: Path, **fields) -> dict:
    status = read_json(run_dir / Run.STATUS, default={}) or {}
    status.update(fields, updated=now_iso())
    write_json_atomic(run_dir / Run.STATUS, status)
    return status


def _timestamp(text) -> float | None:
    try:
        return dt.datetime.fromisoformat(text).timestamp() if text else None
    except (TypeError, ValueError):
        return None


def non_negative(value) -> float | None:
    """A finite number of at least 0 from a run file, else None (a hand-edited string, -1 or Infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def worked_seconds(status: dict, now: float | None = None) -> float:
    """The seconds a run has worked: its closed sessions' (``seconds``; older runs kept ``train_seconds``) plus the
    open session's: to now while its process runs, to its last status write when the process is gone."""
    closed = non_negative(status.get("seconds"))
    if closed is None:
        closed = non_negative(status.get("train_seconds")) or 0.0
    opened = non_negative(status.get("session_started"))
    if opened is None:
        return closed
    if status.get("state") == RunState.RUNNING:
        until = now if now is not None else time.time()
    else:  # interrupted: the process died; its last write is the last moment it is known to have worked
        until = _timestamp(status.get("updated")) or opened
    return closed + max(0.0, until - opened)


@dataclass
class RunSummary:
    run_id: str
    path: Path
    state: RunState
    model: str
    data: str
    epochs: int
    epoch: int
    best_val_acc: float | None
    test_acc: float | None
    duration_s: float | None
    created: str | None
    error: str | None
    processes: int = 1  # data-parallel training processes (torchrun ranks)

    @property
    def run(self) -> Run:
        return Run(self.path)


def _readable(path: Path, default):
    """A run file's JSON, or ``default`` when it is missing or damaged (listing runs must never fail on one)."""
    try:
        value = read_json(path, default=default)
    except (ValueError, OSError):
        return default
    return value if isinstance(value, type(default)) or default is None else default


def count_in(value, high: int) -> int:
    """A count from a run file, 0 when it is no whole number from 0 to ``high`` (a hand-edited ``1e308``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0
    return int(value) if 0 <= value <= high and value == int(value) else 0


def summarize(run_dir: Path) -> RunSummary:
    run = Run(run_dir)
    config = run.config_values
    try:
        status = run.status
    except (ValueError, OSError):
        status = {"state": RunState.DAMAGED.value, "error": f"{Run.STATUS} is damaged"}
    evaluation = run.evaluation
    epochs = run.epochs
    best = max((r["val_acc"] for r in epochs if r.get("val_acc") is not None), default=None)
    return RunSummary(
        run_id=run_dir.name, path=run_dir, state=state_of(status), model=config.get("model", "?"),
        data=config.get("data", ""), epochs=count_in(config.get("epochs"), MAX_EPOCHS), epoch=len(epochs), best_val_acc=best,
        test_acc=(evaluation or {}).get("top1"), duration_s=status.get("train_seconds"),
        created=status.get("created"), error=status.get("error"), processes=count_in(status.get("processes"), 1024) or 1)


def list_runs(artifacts: Path | None = None) -> list[RunSummary]:
    parent = runs_dir(artifacts)
    if not parent.is_dir():
        return []
    # a name starting with a dot is a run being deleted (delete_run renames it away first)
    runs = [summarize(p) for p in parent.iterdir() if not p.name.startswith(".") and (p / Run.CONFIG).is_file()]
    return sorted(runs, key=lambda r: r.run_id, reverse=True)


def request_cancel(run_dir: Path) -> None:
    """Ask a running training process to stop after the current batch."""
    (run_dir / Run.CANCEL).touch()
    pid = read_status(run_dir).get("pid")
    if pid and process_alive(pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass


def is_training(run_dir: Path) -> bool:
    """A process is training the run, or was launched to (a queued run nobody launched is not)."""
    status = read_status(run_dir)
    return status.get("state") == RunState.RUNNING or (status.get("state") == RunState.QUEUED and bool(status.get("launched")))


def refuse_while_training(run_dir: Path, action: str) -> None:
    """RunError when a process trains the run: its checkpoints and exports are half-made until it ends."""
    if is_training(run_dir):
        pid = read_status(run_dir).get("pid")
        by = f" by process {pid}" if pid else ""
        raise RunError(f"{run_dir.name} is being trained{by}; wait for it to finish or stop it before you {action} it")
