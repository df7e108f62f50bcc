"""Renaming and deleting run folders: refused while a run trains, and never half done."""
from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

from ..core.errors import RunError
from .run import Run, refuse_while_training


def delete_run(run_dir: Path) -> None:
    """Remove a run folder for good (refused while it trains). It is renamed away first, so a listing never sees
    half a run, and a trainer that starts meanwhile finds no run rather than a damaged one."""
    run_dir = Path(run_dir)
    if not (run_dir / Run.CONFIG).is_file():
        raise RunError(f"{run_dir} is not a run folder")
    refuse_while_training(run_dir, "delete")
    doomed = run_dir.with_name(f".deleting-{run_dir.name}-{secrets.token_hex(3)}")
    os.rename(run_dir, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def rename_run(run_dir: Path, new_name: str) -> Path:
    """Give a run a new id (its folder name); everything inside stays as it is. Returns the new folder."""
    run_dir = Path(run_dir)
    new_name = new_name.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", new_name):
        raise RunError(f"a run name takes letters, digits, '.', '_' and '-' (up to 100, starting with a letter or "
                       f"digit): {new_name!r}")
    if new_name == run_dir.name:
        return run_dir
    refuse_while_training(run_dir, "rename")
    target = run_dir.with_name(new_name)
    if target.exists():
        raise RunError(f"a run named {new_name} exists already")
    os.rename(run_dir, target)
    return target
