"""Datasets on disk: classes, the train/test split and photos of other places.

Layout: ``root/train/NN.Name/*`` and ``root/test/NN.Name/*`` (the
``landmark_images`` layout), or just ``root/NN.Name/*`` in which case a seeded,
stratified test split is taken off. Any file Pillow can read is an image; the
rest are reported, never fatal.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.errors import DataError


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


@dataclass
class Dataset:
    root: Path
    classes: list[str]
    train: list[Sample]
    test: list[Sample]
    test_taken_from_train: bool = False
    #: Photos of places that are none of the classes (``unknown/`` folders): they calibrate and evaluate the
    #: open-set decision and are never a class.
    unknown_calibration: list[str] = field(default_factory=list)
    unknown_evaluation: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _visible(entries) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith((".", "_")))


#: Folder names (any case, ``_`` prefix allowed) holding photos of other places rather than a class.
UNKNOWN_FOLDERS = ("unknown", "_unknown")


def _is_unknown_folder(path: Path) -> bool:
    return path.name.lower() in UNKNOWN_FOLDERS


def _class_folders(folder: Path) -> list[Path]:
    return [p for p in _visible(folder.iterdir()) if p.is_dir() and not _is_unknown_folder(p)]


def _unknown_files(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _is_unknown_folder(p)]
    return [str(f) for unknown in sorted(found) for f in _files(unknown)]


def _unknown_photos(root: Path, train_dir: Path, test_dir: Path) -> tuple[list[str], list[str]]:
    """(calibration, evaluation) unknown photos: train/unknown calibrates, test/unknown evaluates, and a
    root-level unknown/ is halved by a hash of each file's name (stable however the folder grows)."""
    calibration, evaluation = _unknown_files(train_dir), _unknown_files(test_dir)
    for path in _unknown_files(root):
        half = hashlib.sha1(Path(path).relative_to(root).as_posix().encode()).digest()[0] % 2
        (calibration if half == 0 else evaluation).append(path)
    return calibration, evaluation


def _files(class_folder: Path) -> list[Path]:
    return [p for p in _visible(class_folder.rglob("*")) if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(class_folder).parts)]


def stratified_split(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split off ``fraction`` of each class (at least one image of any class with two or more)."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    by_label: dict[int, list[Sample]] = {}
    for sample in samples:
        by_label.setdefault(sample.label, []).append(sample)
    for label in sorted(by_label):
        group = by_label[label]
        order = rng.permutation(len(group))
        n_held = min(len(group) - 1, max(1, round(len(group) * fraction))) if len(group) > 1 else 0
        held += [group[i] for i in order[:n_held]]
        keep += [group[i] for i in order[n_held:]]
    return keep, held


def scan_dataset(root: str | os.PathLike, *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Index a dataset folder; raise DataError with the reason when the layout is wrong."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    real = Path(os.path.realpath(root))
    if real.parent == real or real in _SYSTEM_FOLDERS:  # a link to / would walk the whole file system
        raise DataError(f"{root} is {real}, a system folder, not a dataset (expected train/ and test/ with one "
                        "folder per class)")
    try:
        return _scan(root, test_fraction, seed)
    except PermissionError as error:
        raise DataError(f"cannot read {error.filename}: permission denied (is {root} the dataset folder?)") from None


#: Folders that are never datasets: walking them reads the machine, not photos.
_SYSTEM_FOLDERS = {Path(p) for p in ("/proc", "/sys", "/dev", "/run", "/etc", "/usr", "/bin", "/sbin", "/lib",
                                     "/lib64", "/boot", "/var")}


def _scan(root: Path, test_fraction: float, seed: int) -> Dataset:
    train_dir, test_dir = root / "train", root / "test"
    if test_dir.is_dir() and not train_dir.is_dir():
        raise DataError(f"{root} has test/ but no train/ (expected train/ and test/ with one folder per class, "
                        "or class folders directly)")
    base = train_dir if train_dir.is_dir() else root
    class_dirs = _class_folders(base)
    for class_dir in class_dirs:  # a class folder linked to its own split folder (or above) would hold every photo
        if base.resolve().is_relative_to(class_dir.resolve()):
            raise DataError(f"{class_dir} links back to {class_dir.resolve()}, which contains the dataset itself")
    if not class_dirs:
        raise DataError(f"{base} has no class folders (expected train/ and test/ with one folder per class, "
                        "like 00.Haleakala_National_Park, or class folders directly)")
    classes = [p.name for p in class_dirs]
    index = {name: i for i, name in enumerate(classes)}

    def collect(folder: Path) -> list[Sample]:
        samples = []
        for class_dir in _class_folders(folder):
            if class_dir.name not in index:
                raise DataError(f"{class_dir} is a class that train/ does not have")
            samples += [Sample(str(p), index[class_dir.name]) for p in _files(class_dir)]
        return samples

    train = collect(base)
    if not train:
        raise DataError(f"{base} has class folders but no files in them")
    unknown_calibration, unknown_evaluation = _unknown_photos(root, train_dir, test_dir)
    if base is train_dir and test_dir.is_dir():
        return Dataset(root, classes, train, collect(test_dir), False, unknown_calibration, unknown_evaluation)
    train, test = stratified_split(train, test_fraction, seed)
    return Dataset(root, classes, train, test, True, unknown_calibration, unknown_evaluation)
