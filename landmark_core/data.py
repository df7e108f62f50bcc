"""Datasets on disk, the decoded-image cache, batches and batch augmentation.

Layout: ``root/train/NN.Name/*`` and ``root/test/NN.Name/*`` (the
``landmark_images`` layout), or just ``root/NN.Name/*`` in which case a seeded,
stratified test split is taken off. Any file Pillow can read is an image; the
rest are reported, never fatal.

Speed: photos are decoded once, at reduced size (JPEG draft mode), into a
square uint8 array per split that is memory-mapped from a cache folder keyed by
the files' names, sizes and modification times. Every later epoch and every
later run reads pixels straight from that array, and augmentation is done on
whole batches as tensors (on the GPU when there is one) instead of per image in
PIL.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError, ImageError
from .fileio import atomic_path, read_json, write_json_atomic
from .images import load_rgb, load_square, open_image

ProgressFn = Callable[[int, int], None]


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


# --- cache folder ----------------------------------------------------------------------------

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
                 interpolation: str = "bilinear") -> DecodedSplit:
    """Decode ``samples`` to ``side``x``side`` squares, reusing (or writing) a memory-mapped cache."""
    key = content_key(samples, "decoded-v2", side, *([interpolation] if interpolation != "bilinear" else []))
    if cache_dir is not None:
        array_path, meta_path = cache_dir / f"decoded-{key}.npy", cache_dir / f"decoded-{key}.json"
        wait_for_cache_writes(array_path)
        meta = read_json(meta_path)
        if meta is not None and array_path.exists():
            images = np.load(array_path, mmap_mode="r")
            if progress:
                progress(len(samples), len(samples))
            return DecodedSplit(images, np.asarray(meta["labels"], dtype=np.int64), meta["paths"], meta["skipped"])

    images = np.empty((len(samples), side, side, 3), dtype=np.uint8)
    errors: list[str | None] = [None] * len(samples)

    def decode(i: int) -> None:  # each worker writes its own row: no copies through the main thread
        try:
            images[i] = load_square(samples[i].path, side, interpolation)
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


# --- batches and augmentation -----------------------------------------------------------------

def cache_side_for(image_size: int, crop_pct: float = 0.875) -> int:
    """The decode size for a ``crop_pct`` centre crop (the classic Resize(256)/Crop(224) by default)."""
    return int(math.ceil(image_size / crop_pct - 1e-9))  # 224 / 0.875 is 256 even when rounding says 256.00000001


_LUMA = (0.299, 0.587, 0.114)


def augment_batch(batch: torch.Tensor, size: int, strength: float, generator: torch.Generator,
                  normalize: tuple[Sequence[float], Sequence[float]] | None = None) -> torch.Tensor:
    """Random resized crop, flip and colour jitter for a whole float batch (N,3,S,S) in 0-1.

    Returns values in 0-1, or ``(x - mean) / std`` with ``normalize=(mean, std)``
    (folded into the colour matrix, so it costs no extra pass).

    ``strength`` 0 gives the centre crop, 1 the full recipe. Two passes over the
    pixels do everything, which matters on CPUs: one ``grid_sample`` for the
    geometry (crops are axis-aligned, so the sampling grid is built from one
    row and one column per image instead of ``affine_grid``'s per-pixel
    product), and one batched 3x3 matrix per image for brightness, contrast and
    saturation together.
    """
    n, device = batch.shape[0], batch.device

    def uniform(low, high):
        return low + (high - low) * torch.rand(n, generator=generator, device="cpu")

    side = batch.shape[-1]
    base = size / side  # the centre crop's share of the square
    area = uniform(1.0 - 0.6 * strength, 1.0) * base ** 2
    log_ratio = uniform(-0.3 * strength, 0.3 * strength)
    crop_w = torch.clamp(torch.sqrt(area * torch.exp(log_ratio)), max=1.0)
    crop_h = torch.clamp(torch.sqrt(area / torch.exp(log_ratio)), max=1.0)
    travel = min(1.0, 2 * strength)  # how far from the centre a crop may move
    shift_x = (1 - crop_w) * uniform(-1, 1) * travel
    shift_y = (1 - crop_h) * uniform(-1, 1) * travel
    flip = torch.where(uniform(0, 1) < 0.5 * min(1.0, strength * 2), -1.0, 1.0)

    steps = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1  # output pixel centres in [-1, 1]
    xs = (steps[None, :] * (crop_w * flip)[:, None] + shift_x[:, None]).to(device)
    ys = (steps[None, :] * crop_h[:, None] + shift_y[:, None]).to(device)
    grid = torch.stack((xs[:, None, :].expand(n, size, size), ys[:, :, None].expand(n, size, size)), dim=-1)
    out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # brightness b, contrast c around the image mean m, saturation s around luma, as out = M x + v
    jitter = 0.3 * strength
    b, c, s = uniform(1 - jitter, 1 + jitter), uniform(1 - jitter, 1 + jitter), uniform(1 - jitter, 1 + jitter)
    luma = torch.tensor(_LUMA).expand(n, 3, 3)
    saturation = s[:, None, None] * torch.eye(3) + (1 - s)[:, None, None] * luma
    matrix = (saturation * (c * b)[:, None, None]).to(device)
    mean = out.mean(dim=(1, 2, 3)) * b.to(device)
    offset = ((1 - c).to(device) * mean)[:, None, None].expand(n, 3, 1)  # saturation rows sum to 1
    low, high = [0.0] * 3, [1.0] * 3
    if normalize is not None:  # (M x + v - m) / s = (M / s) x + (v - m) / s, clamped to where 0 and 1 land
        channel_mean, channel_std = (torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1) for v in normalize)
        matrix, offset = matrix / channel_std, (offset - channel_mean) / channel_std
        low = [(0 - m) / s for m, s in zip(*normalize)]
        high = [(1 - m) / s for m, s in zip(*normalize)]
    out = torch.baddbmm(offset, matrix, out.reshape(n, 3, -1)).reshape(n, 3, size, size)
    for channel in range(3):  # in place, per channel plane: one cheap pass instead of a broadcast clamp
        out[:, channel].clamp_(low[channel], high[channel])
    return out


def crop_flip_batch(pixels: torch.Tensor, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """The classic recipe on uint8 (N,S,S,3): a random ``size`` crop and a coin-flip mirror per image.

    No resampling, so it is only copies: the cheapest augmentation there is.
    Without a generator it is the centre crop (a view, no copy).
    """
    n, side = pixels.shape[0], pixels.shape[1]
    if generator is None:
        offset = (side - size) // 2
        return pixels[:, offset:offset + size, offset:offset + size]
    offsets = torch.randint(0, side - size + 1, (n, 2), generator=generator).tolist()
    flips = (torch.rand(n, generator=generator) < 0.5).tolist()
    out = torch.empty((n, size, size, 3), dtype=torch.uint8, device=pixels.device)
    for i, ((top, left), flip) in enumerate(zip(offsets, flips)):
        crop = pixels[i, top:top + size, left:left + size]
        out[i] = crop.flip(1) if flip else crop
    return out


#: ``full``: random resized crop, flip and colour jitter, scaled by the strength.
#: ``crop_flip``: the classic random crop + flip, done on uint8 without resampling (fastest on CPUs).
AUGMENTATIONS = ("full", "crop_flip")


class BatchLoader:
    """Batches from a :class:`DecodedSplit`: uint8 → device → (augment) → normalise.

    The order and augmentation of epoch ``e`` depend only on ``(seed, e)``, so a
    resumed run sees exactly the batches the uninterrupted run would have.
    """

    def __init__(self, split: DecodedSplit, *, batch_size: int, image_size: int, mean: Sequence[float],
                 std: Sequence[float], device: torch.device | str = "cpu", shuffle: bool = False,
                 augment: float = 0.0, augmentation: str = "full", seed: int = 0, channels_last: bool = False):
        if augmentation not in AUGMENTATIONS:
            raise DataError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, not {augmentation!r}")
        self.split, self.batch_size, self.image_size = split, batch_size, image_size
        self.device, self.shuffle, self.augment, self.seed = torch.device(device), shuffle, augment, seed
        self.augmentation = augmentation
        self.normalization = ([float(m) for m in mean], [float(s) for s in std])
        mean_t = torch.tensor(self.normalization[0], dtype=torch.float32, device=self.device)
        std_t = torch.tensor(self.normalization[1], dtype=torch.float32, device=self.device)
        # uint8 in HWC order straight to normalised float: x / (255 std) - mean / std, one pass
        self.pixel_scale, self.pixel_shift = 1 / (255 * std_t), -mean_t / std_t
        self.channels_last = channels_last
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.split)
        order = torch.randperm(n, generator=generator).numpy() if self.shuffle else np.arange(n)
        for start in range(0, n, self.batch_size):
            index = np.sort(order[start:start + self.batch_size]) if not self.shuffle else order[start:start + self.batch_size]
            pixels = torch.from_numpy(np.ascontiguousarray(self.split.images[index]))
            labels = torch.from_numpy(self.split.labels[index])
            yield self.prepare(pixels, generator), labels.to(self.device, non_blocking=True)

    def prepare(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 (N,S,S,3) → normalised float (N,3,size,size) on the device."""
        pixels = pixels.to(self.device, non_blocking=True)
        augmenting = self.augment > 0 and generator is not None
        if augmenting and self.augmentation == "full":
            batch = augment_batch(pixels.permute(0, 3, 1, 2).float().div_(255), self.image_size, self.augment, generator,
                                  normalize=self.normalization)
        else:
            crops = crop_flip_batch(pixels, self.image_size, generator if augmenting else None)
            # computed in HWC order, so the NCHW view of the result is already channels-last memory
            batch = torch.addcmul(self.pixel_shift, crops, self.pixel_scale).permute(0, 3, 1, 2)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch.contiguous()


# --- dataset report ----------------------------------------------------------------------------

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
