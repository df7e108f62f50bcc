"""Starting a run's training in its own background process."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .run import Run, read_status, worked_seconds, write_status
from .states import RunState

BACKGROUND_NICENESS = 10


def launch_background(run_dir: Path, *, resume: bool = False, processes: int | None = None) -> int:
    """Start ``landmark train`` for a prepared run folder in its own process session.

    The child outlives the caller (a Streamlit page, a closed tab); its output
    goes to ``log.txt`` in the run folder. With ``processes`` above 1 the child is
    the torchrun launcher of that many ranks (by default, as many as the run trained with). Returns the
    child's pid.
    """
    processes = processes or int(read_status(run_dir).get("processes") or 1)
    args = [sys.executable, "-m", "landmark_core", "train", "--resume" if resume else "--run-dir", str(run_dir),
            "--nproc-per-node", str(processes)]
    # A lower CPU priority keeps the dashboard that launched the run responsive; with nothing
    # else competing for the cores, training runs at full speed all the same.
    if shutil.which("nice"):
        args = ["nice", "-n", str(BACKGROUND_NICENESS), *args]
    log = open(run_dir / Run.LOG, "ab")
    try:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, cwd=os.getcwd(), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        log.close()
    # queued until the trainer says running: a resumed run must not go on showing "cancelled" meanwhile. A killed
    # session's time is closed first, up to its last write: this write would otherwise move that moment to now
    write_status(run_dir, state=RunState.QUEUED, error=None, pid=process.pid, launched=True, processes=processes,
                 seconds=worked_seconds(read_status(run_dir)), session_started=None)
    return process.pid
