"""Run folders: creation, status, listing and launching in the background.

A run lives in ``<artifacts>/runs/<run_id>/`` and holds everything needed to
rebuild it: ``config.json``, ``status.json``, ``metrics.jsonl``, ``split.json``,
checkpoints, ``evaluation.json`` and the exported model.
"""
from __future__ import annotations

import datetime as dt
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import RunError
from .fileio import process_alive, read_json, read_jsonl, write_json_atomic

STATES = ("queued", "running", "finished", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running")


def artifacts_dir() -> Path:
    """``$LANDMARK_ARTIFACTS`` or ``./artifacts``."""
    return Path(os.environ.get("LANDMARK_ARTIFACTS", "artifacts")).expanduser()


def runs_dir(artifacts: Path | None = None) -> Path:
    return (artifacts or artifacts_dir()) / "runs"


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


def resolve_run(run: str | os.PathLike, artifacts: Path | None = None) -> Path:
    """Accept a run folder path or a run id."""
    path = Path(run).expanduser()
    if not path.is_dir():
        candidate = runs_dir(artifacts) / str(run)
        if candidate.is_dir():
            path = candidate
    if not (path / "config.json").is_file():
        raise RunError(f"not a run folder (no config.json): {run}")
    return path


def read_status(run_dir: Path) -> dict:
    """``status.json`` with ``state`` corrected to "interrupted" when its process is gone."""
    status = read_json(run_dir / "status.json", default={"state": "queued"}) or {"state": "queued"}
    if status.get("state") in ACTIVE_STATES and not process_alive(status.get("pid")):
        if status.get("state") == "running" or status.get("launched"):
            status = {**status, "state": "interrupted"}
    return status


def write_status(run_dir: Path, **fields) -> dict:
    status = read_json(run_dir / "status.json", default={}) or {}
    status.update(fields, updated=now_iso())
    write_json_atomic(run_dir / "status.json", status)
    return status


@dataclass
class RunSummary:
    run_id: str
    path: Path
    state: str
    model: str
    data: str
    epochs: int
    epoch: int
    best_val_acc: float | None
    test_acc: float | None
    duration_s: float | None
    created: str | None
    error: str | None


def _readable(path: Path, default):
    """A run file's JSON, or ``default`` when it is missing or damaged (listing runs must never fail on one)."""
    try:
        value = read_json(path, default=default)
    except (ValueError, OSError):
        return default
    return value if isinstance(value, type(default)) or default is None else default


def summarize(run_dir: Path) -> RunSummary:
    config = _readable(run_dir / "config.json", {})
    try:
        status = read_status(run_dir)
    except (ValueError, OSError):
        status = {"state": "damaged", "error": "status.json is damaged"}
    evaluation = _readable(run_dir / "evaluation.json", None)
    evaluation = evaluation if isinstance(evaluation, dict) else None
    epochs = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "epoch"]
    best = max((r["val_acc"] for r in epochs if r.get("val_acc") is not None), default=None)
    return RunSummary(
        run_id=run_dir.name, path=run_dir, state=status.get("state", "queued"), model=config.get("model", "?"),
        data=config.get("data", ""), epochs=int(config.get("epochs") or 0), epoch=len(epochs), best_val_acc=best,
        test_acc=(evaluation or {}).get("top1"), duration_s=status.get("train_seconds"),
        created=status.get("created"), error=status.get("error"))


def list_runs(artifacts: Path | None = None) -> list[RunSummary]:
    parent = runs_dir(artifacts)
    if not parent.is_dir():
        return []
    runs = [summarize(p) for p in parent.iterdir() if (p / "config.json").is_file()]
    return sorted(runs, key=lambda r: r.run_id, reverse=True)


def launch_background(run_dir: Path, *, resume: bool = False) -> int:
    """Start ``landmark train`` for a prepared run folder in its own process session.

    The child outlives the caller (a Streamlit page, a closed tab); its output
    goes to ``log.txt`` in the run folder. Returns the child's pid.
    """
    args = [sys.executable, "-m", "landmark_core", "train", "--resume" if resume else "--run-dir", str(run_dir)]
    log = open(run_dir / "log.txt", "ab")
    try:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, cwd=os.getcwd(), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        log.close()
    write_status(run_dir, pid=process.pid, launched=True)
    return process.pid


def request_cancel(run_dir: Path) -> None:
    """Ask a running training process to stop after the current batch."""
    (run_dir / "CANCEL").touch()
    pid = read_status(run_dir).get("pid")
    if pid and process_alive(pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
