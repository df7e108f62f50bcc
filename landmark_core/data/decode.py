"""The decoded-image cache: photos decoded once into square uint8 arrays.

Photos are decoded at reduced size (JPEG draft mode) into a square uint8 array
per split that is memory-mapped from a cache folder keyed by the files' names,
sizes and modification times. Every later epoch and every later run reads
pixels straight from that array.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..core.errors import DataError, ImageError
from ..core.fileio import atomic_path, read_json, write_json_atomic
from ..core.images import load_square, load_squashed
from .index import Sample

ProgressFn = Callable[[int, int], None]


def cache_dir_for(root: str | os.PathLike) -> Path:
    """The decoded-image cache of a dataset: a folder per dataset in the user cache, never in the photos' folder.

    ``$LANDMARK_CACHE``, else ``$XDG_CACHE_HOME/landmark_core``, else ``~/.cache/landmark_core``.
    """
    root = Path(root).resolve()
    base = os.environ.get("LANDMARK_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "landmark_core"
    folder = Path(base) / (re.sub(r"[^A-Za-z0-9_.-]", "_", root.name)[:40] + "-" + hashlib.sha1(str(root).encode()).hexdigest()[:16])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def content_key(samples: Sequence[Sample], *extra) -> str:
    """A key that changes when any file is added, removed, renamed, resized or touched."""
    digest = hashlib.sha1(json.dumps(extra).encode())
    for sample in samples:
        try:
            stat = os.stat(sample.path)
            digest.update(f"{sample.path}\0{sample.label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{sample.path}\0missing\n".encode())
    return digest.hexdigest()[:20]


# --- decoded splits ---------------------------------------------------------------------------

@dataclass
class DecodedSplit:
    """Square uint8 images (N, S, S, 3) of the readable samples, their labels, and what was skipped."""
    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    skipped: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def side(self) -> int:
        return int(self.images.shape[1])


_pending_cache_writes: dict[Path, threading.Thread] = {}
_pending_lock = threading.Lock()


def _write_cache(array_path: Path, meta_path: Path, split: "DecodedSplit") -> None:
    try:
        with atomic_path(array_path) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, split.images)
        write_json_atomic(meta_path, {"labels": split.labels.tolist(), "paths": split.paths, "skipped": split.skipped})
    except OSError:
        pass  # a cache we cannot write only costs speed next time
    finally:
        with _pending_lock:
            if _pending_cache_writes.get(array_path) is threading.current_thread():
                del _pending_cache_writes[array_path]


def _write_cache_in_background(array_path: Path, meta_path: Path, split: "DecodedSplit") -> None:
    """Write (and fsync) the cache while training already uses the decoded array.

    Not a daemon thread: the interpreter waits for it at exit, so a finished
    write is never cut off; readers of the same file wait for it too.
    """
    thread = threading.Thread(target=_write_cache, args=(array_path, meta_path, split), name="landmark-cache-write")
    with _pending_lock:
        _pending_cache_writes[array_path] = thread
    thread.start()


def wait_for_cache_writes(array_path: Path | None = None) -> None:
    with _pending_lock:
        threads = [t for p, t in _pending_cache_writes.items() if array_path is None or p == array_path]
    for thread in threads:
        thread.join()


def decode_split(samples: Sequence[Sample], side: int, *, cache_dir: Path | None = None,
                 workers: int | None = None, progress: ProgressFn | None = None,
                 interpolation: str = "bilinear", squashed_size: int | None = None) -> DecodedSplit:
    """Decode ``samples`` to ``side``x``side`` squares, reusing (or writing) a memory-mapped cache.

    With ``squashed_size``, each photo is instead resized to a short side of ``side`` and then, whole, to
    ``squashed_size`` square (the familiarity check's whole-photo view, :func:`load_squashed`)."""
    key = content_key(samples, "decoded-v2", side, *([interpolation] if interpolation != "bilinear" else []),
                      *(["whole", squashed_size] if squashed_size else []))
    if cache_dir is not None:
        array_path, meta_path = cache_dir / f"decoded-{key}.npy", cache_dir / f"decoded-{key}.json"
        wait_for_cache_writes(array_path)
        meta = read_json(meta_path)
        if meta is not None and array_path.exists():
            images = np.load(array_path, mmap_mode="r")
            if progress:
                progress(len(samples), len(samples))
            return DecodedSplit(images, np.asarray(meta["labels"], dtype=np.int64), meta["paths"], meta["skipped"])

    images = np.empty((len(samples), squashed_size or side, squashed_size or side, 3), dtype=np.uint8)
    errors: list[str | None] = [None] * len(samples)

    def decode(i: int) -> None:  # each worker writes its own row: no copies through the main thread
        try:
            images[i] = (load_squashed(samples[i].path, side, squashed_size, interpolation) if squashed_size
                         else load_square(samples[i].path, side, interpolation))
        except ImageError as error:
            errors[i] = str(error)

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow and torch release the GIL while resampling
        for done, _ in enumerate(pool.map(decode, range(len(samples)), chunksize=16), start=1):
            if progress and (done % 32 == 0 or done == len(samples)):
                progress(done, len(samples))
    ok = np.array([error is None for error in errors], dtype=bool)
    if not ok.all():
        images = images[ok]
    split = DecodedSplit(images, np.array([s.label for s, good in zip(samples, ok) if good], dtype=np.int64),
                         [s.path for s, good in zip(samples, ok) if good],
                         {s.path: error for s, error in zip(samples, errors) if error is not None})
    if cache_dir is not None:
        _write_cache_in_background(array_path, meta_path, split)
    return split


def channel_stats(split: DecodedSplit, cache_dir: Path | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0-1 scale) of a decoded split, cached by its content."""
    key = hashlib.sha1(json.dumps(split.paths).encode() + str(split.images.shape).encode()).hexdigest()[:20]
    path = cache_dir / f"stats-{key}.json" if cache_dir else None
    cached = read_json(path) if path else None
    if cached:
        return cached["mean"], cached["std"]
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for start in range(0, len(split), 256):
        chunk = np.asarray(split.images[start:start + 256], dtype=np.float64) / 255.0
        total += chunk.sum(axis=(0, 1, 2))
        total_sq += (chunk ** 2).sum(axis=(0, 1, 2))
        count += chunk.shape[0] * chunk.shape[1] * chunk.shape[2]
    if count == 0:
        raise DataError("no readable training images to compute statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
    result = {"mean": mean.round(6).tolist(), "std": std.round(6).tolist()}
    if path:
        try:
            write_json_atomic(path, result)
        except OSError:
            pass
    return result["mean"], result["std"]
