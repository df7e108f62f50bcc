"""Where things live on disk: the artifacts folder, its datasets and runs, and what ``demo`` means as a dataset."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

#: Names a user may give instead of a folder for the built-in demo set.
DEMO_ALIASES = ("demo",)


def artifacts_dir() -> Path:
    """``$LANDMARK_ARTIFACTS`` or ``./artifacts``."""
    return Path(os.environ.get("LANDMARK_ARTIFACTS", "artifacts")).expanduser()


def runs_dir(artifacts: Path | None = None) -> Path:
    return (artifacts or artifacts_dir()) / "runs"


def data_dir(artifacts: Path | None = None) -> Path:
    """Datasets the app downloads, imports or draws."""
    return (artifacts or artifacts_dir()) / "data"


def demo_dir(artifacts: Path | None = None) -> Path:
    return data_dir(artifacts) / "demo"


def dataset_folder_argument(folder: str | Path) -> str:
    """A dataset folder as given to a child ``landmark`` process: absolute, so that a relative folder named like
    one of :data:`DEMO_ALIASES` stays that folder, and one whose name starts with "-" is not read as an option."""
    return str(Path(folder).expanduser().resolve())


def resolve_dataset(value: str, progress: Callable[[int, int], None] | None = None) -> str:
    """``demo`` means the built-in demo set, drawn on first use (``progress`` hears of it); anything else is a
    folder, returned as given."""
    if value not in DEMO_ALIASES:
        return value
    from .demo import generate_demo_dataset, is_complete_demo  # drawing needs numpy and Pillow; naming does not
    if not is_complete_demo(demo_dir()):
        generate_demo_dataset(demo_dir(), progress=progress)
    return str(demo_dir())
