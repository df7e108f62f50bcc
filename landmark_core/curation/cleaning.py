"""Clean a dataset with a trained run: find the training photos most likely mislabelled, move them, undo.

A photo whose own label gets a low probability from a model trained on it (a high loss on its own label) is
the usual sign of a wrong folder, a duplicate of another class or a photo of no landmark (fastai's
``ImageClassifierCleaner`` idea). Photos are moved, never deleted: to another class folder, or out of the
dataset into ``_excluded/`` inside it (folders starting with ``_`` are never read as classes). Every move is
logged in ``_excluded/moves.jsonl`` so it can be undone.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from ..core.fileio import append_jsonl, read_jsonl, write_bytes_atomic
from ..data import UNKNOWN_FOLDERS
from ..runs.run import Run
from ..tagging.predict import Predictor
from ..training.prepare import prepare_data

EXCLUDED = "_excluded"
MOVES_LOG = "moves.jsonl"


def suspect_photos(run_dir: Path, limit: int = 24, batch_size: int = 64) -> list[dict]:
    """The training photos the model puts in another class, with the highest loss on their own label first: path,
    label, loss, the probability of the label, and what the model sees instead."""
    run = Run(run_dir)
    predictor = Predictor(run)
    # the decoded cache's centre squares: the crop the classifier sees (a whole-photo model's familiarity would see
    # only the square, but this reads the probabilities alone)
    prepared = prepare_data(run.config())
    train, dataset_classes = prepared.train, prepared.classes
    trained_on = set(run.split.get("train", []))  # photos the model learned from (not validation, not new ones)
    rows = []
    for start in range(0, len(train), batch_size):
        squares = list(np.asarray(train.images[start:start + batch_size]))
        for offset, result in enumerate(predictor.classify_decoded(squares)):
            if result is None:
                continue
            probabilities = result[0]
            path, label = train.paths[start + offset], dataset_classes[int(train.labels[start + offset])]
            if label not in predictor.classes or (trained_on and path not in trained_on):
                continue
            own = float(probabilities[predictor.classes.index(label)])
            best = int(np.argmax(probabilities))
            if predictor.classes[best] == label:
                continue  # hard, but the model calls it its own class: no sign of a wrong label
            rows.append({"path": path, "label": label, "loss": -math.log(max(own, 1e-12)), "probability": own,
                         "predicted": predictor.classes[best], "predicted_probability": float(probabilities[best])})
    rows.sort(key=lambda row: row["loss"], reverse=True)
    return rows[:limit]


def _training_root(dataset_root: Path) -> Path:
    return dataset_root / "train" if (dataset_root / "train").is_dir() else dataset_root


def free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/stem-1.ext``, ``-2``... when taken: a photo put into a folder never replaces
    one that is there."""
    target, number = folder / name, 1
    while os.path.lexists(target):
        target = folder / f"{Path(name).stem}-{number}{Path(name).suffix}"
        number += 1
    return target


def training_folder(dataset_root: Path, class_name: str) -> Path:
    """The folder of a class's training photos (``train/<class>``, or ``<class>`` in a dataset without splits);
    a DataError for a name that is no folder name (a path, a hidden or private folder, the unknown folder)."""
    name = class_name.strip()
    if not name or name.startswith((".", "_")) or "/" in name or os.sep in name or name.lower() in UNKNOWN_FOLDERS \
            or name != class_name:
        raise DataError(f"{class_name!r} cannot be a class folder name (no slashes, no leading dot or underscore, "
                        "not 'unknown', no spaces around it)")
    return _training_root(dataset_root) / name


def move_photo(dataset_root: str | os.PathLike, photo: str | os.PathLike, to_class: str | None) -> Path:
    """Move a training photo into ``to_class``'s folder, or out of the dataset (``to_class`` None); returns where
    it went. Never overwrites: a name taken at the destination gets a numbered suffix."""
    root, photo = Path(dataset_root).resolve(), Path(photo).resolve()
    if not photo.is_file() or not photo.is_relative_to(root):
        raise DataError(f"{photo} is not a photo of the dataset {root}")
    if to_class is None:
        target_dir = root / EXCLUDED / photo.parent.relative_to(root)
    else:
        target_dir = training_folder(root, to_class) if to_class else root
        if not to_class or not target_dir.is_dir():
            raise DataError(f"{to_class!r} is not a class folder of {root.name}")
    target_dir.mkdir(parents=True, exist_ok=True)
    target = free_name(target_dir, photo.name)
    os.rename(photo, target)
    _log(root, {"from": str(photo.relative_to(root)), "to": str(target.relative_to(root)), "time": time.time()})
    return target


def moves(dataset_root: str | os.PathLike) -> list[dict]:
    """The moves made so far, oldest first."""
    return read_jsonl(Path(dataset_root) / EXCLUDED / MOVES_LOG)


def undo_last_move(dataset_root: str | os.PathLike) -> dict | None:
    """Move the last moved photo back where it was; returns that move, or None when there is nothing to undo."""
    root = Path(dataset_root).resolve()
    history = moves(root)
    if not history:
        return None
    last = history[-1]
    source, destination = root / last["to"], root / last["from"]
    if not source.is_file():
        raise DataError(f"{last['to']} is no longer there: it cannot be moved back")
    if destination.exists():
        raise DataError(f"{last['from']} exists again: move it away first")
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.rename(source, destination)
    write_bytes_atomic(root / EXCLUDED / MOVES_LOG, "".join(json.dumps(m) + "\n" for m in history[:-1]).encode())
    return last


def _log(root: Path, move: dict) -> None:
    (root / EXCLUDED).mkdir(parents=True, exist_ok=True)
    append_jsonl(root / EXCLUDED / MOVES_LOG, move)
