"""The dataset report: counts, sizes, unreadable files, duplicates and train/test leaks."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..core.errors import ImageError
from ..core.fileio import read_json, write_json_atomic
from ..core.images import load_rgb, open_image
from .decode import ProgressFn, cache_dir_for, content_key
from .index import Dataset

#: Perceptual hashes (64-bit pHash) this many bits apart or closer may be the same photo re-encoded,
#: resized or lightly edited. Measured over every pair of the two real development sets (7 wonders,
#: Vietnamese landmarks; 694 photos): copies and re-encodes (JPEG vs PNG) differ by 0-2 bits, and no
#: pair falls between 3 and 9; the closest different photos are 10 bits apart, most 14 or more.
NEAR_DUPLICATE_BITS = 6
#: ...and their 16x16 colour thumbnails differ by at most this much (mean absolute difference, 0-255).
#: Smooth, low-detail pictures can share a pHash (two different drawn demo scenes were 4 bits apart, with
#: thumbnails 90 apart); the real near-duplicates above differ by 0.8-8.7.
NEAR_DUPLICATE_THUMBNAIL_DIFFERENCE = 24.0


def perceptual_hash(image) -> int:
    """64-bit DCT hash (imagehash.phash) of an RGB image: stable under re-encoding, resizing and small edits."""
    import imagehash  # here, not at the top: it pulls in scipy, which most commands never need

    bits = imagehash.phash(image).hash.flatten()
    return int("".join("1" if bit else "0" for bit in bits), 2)


def thumbnail(source) -> np.ndarray:
    return np.asarray(load_rgb(source, min_side=64).resize((16, 16)), dtype=np.float32)


def look_alike(first: str, second: str) -> bool:
    """Whether two photos with close perceptual hashes also look the same in colour (see the constants above)."""
    try:
        difference = float(np.abs(thumbnail(first) - thumbnail(second)).mean())
    except ImageError:
        return False
    return difference <= NEAR_DUPLICATE_THUMBNAIL_DIFFERENCE


def find_leaks(train: Sequence[tuple[str, str, int | None]], test: Sequence[tuple[str, str, int | None]],
               max_distance: int = NEAR_DUPLICATE_BITS,
               confirm: Callable[[str, str], bool] | None = look_alike) -> list[dict]:
    """Test photos that are also training photos: identical bytes, or near-duplicates.

    Each item is ``(path, sha1, phash)``. A near-duplicate has a perceptual hash
    within ``max_distance`` bits of a training photo's and passes ``confirm``.
    A leaked test photo makes test accuracy measure memory rather than
    recognition, so every such pair is reported.
    """
    leaks: list[dict] = []
    by_sha = {}
    for path, sha, _ in train:
        by_sha.setdefault(sha, path)
    hashed = [(path, h) for path, _, h in train if h is not None]
    train_hashes = np.array([h for _, h in hashed], dtype=np.uint64)
    for path, sha, phash in test:
        if sha in by_sha:
            leaks.append({"test": path, "train": by_sha[sha], "kind": "identical", "distance": 0})
            continue
        if phash is None or not len(train_hashes):
            continue
        distance = np.unpackbits((train_hashes ^ np.uint64(phash)).view(np.uint8).reshape(-1, 8), axis=1).sum(1)
        for candidate in np.argsort(distance, kind="stable"):
            if distance[candidate] > max_distance:
                break
            if confirm is None or confirm(path, hashed[candidate][0]):
                leaks.append({"test": path, "train": hashed[candidate][0], "kind": "near-duplicate",
                              "distance": int(distance[candidate])})
                break
    return leaks


def dataset_report(dataset: Dataset, *, progress: ProgressFn | None = None) -> dict:
    """Counts per class and split, image sizes, unreadable files, exact duplicates and train/test leaks.

    Decodes each photo only at thumbnail size (JPEG DCT scaling) for its
    perceptual hash, so it is quick even for thousands of photos; the result is
    cached by content in the cache folder.
    """
    all_samples = [("train", s) for s in dataset.train] + [("test", s) for s in dataset.test]
    cache_dir = cache_dir_for(dataset.root)
    key = content_key([s for _, s in all_samples], "report-v3", dataset.test_taken_from_train)
    cached = read_json(cache_dir / f"report-{key}.json")
    if cached:
        return cached
    import imagehash  # noqa: F401  a missing install must fail here, not mark every photo unreadable

    rows, unreadable, by_hash = [], {}, {}
    hashes: dict[str, list[tuple[str, str, int | None]]] = {"train": [], "test": []}
    for i, (split, sample) in enumerate(all_samples):
        row = {"split": split, "class": dataset.classes[sample.label], "path": sample.path,
               "bytes": os.path.getsize(sample.path), "width": None, "height": None, "format": None}
        sha, phash = None, None
        try:
            with open(sample.path, "rb") as handle:
                data = handle.read()
            sha = hashlib.sha1(data).hexdigest()
            by_hash.setdefault(sha, []).append(sample.path)
            image = open_image(data)
            row.update(width=image.size[0], height=image.size[1], format=image.format)
            phash = perceptual_hash(load_rgb(data, min_side=64))  # a real (reduced) decode: finds truncated files too
        except ImageError as error:
            unreadable[sample.path] = str(error).replace("image: ", f"{Path(sample.path).name}: ", 1)
        except Exception as error:  # decoders raise many kinds; all mean "unreadable"
            unreadable[sample.path] = f"{Path(sample.path).name}: corrupt image ({error})"
        if sha is not None:
            hashes[split].append((sample.path, sha, phash))
        rows.append(row)
        if progress and (i % 64 == 63 or i == len(all_samples) - 1):
            progress(i + 1, len(all_samples))
    report = {
        "root": str(dataset.root),
        "classes": dataset.classes,
        "test_taken_from_train": dataset.test_taken_from_train,
        "images": rows,
        "unreadable": unreadable,
        "duplicates": [paths for paths in by_hash.values() if len(paths) > 1],
        "leaks": find_leaks(hashes["train"], hashes["test"]),
    }
    try:
        write_json_atomic(cache_dir / f"report-{key}.json", report)
    except OSError:
        pass
    return report
