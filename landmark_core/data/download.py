"""Download the real 50-class dataset: resumable HTTP, zip checks, safe extraction.

``download_file`` keeps a ``.part`` file and continues it with an HTTP Range
request after a dropped connection (or a new call after an interrupted one).
``safe_extract`` refuses path escapes, links and zip bombs before writing
anything, extracts into a temporary folder and renames it into place, so a
failed extraction never leaves a half-written dataset.
"""
from __future__ import annotations

import http.client
import os
import re
import shutil
import stat
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from ..core.errors import ArchiveError, DataError, DownloadError, ImageError, LandmarkError
from ..core.fileio import process_alive
from . import Dataset, scan_dataset

DATASET_URL = "https://udacity-dlnfd.s3-us-west-1.amazonaws.com/datasets/landmark_images.zip"
DATASET_NAME = "landmark_images"
EXPECTED_COUNTS = {"classes": 50, "train": 4996, "test": 1250}

ProgressFn = Callable[[int, int | None], None]


def download_file(url: str, dest: str | os.PathLike, *, progress: ProgressFn | None = None, retries: int = 5,
                  timeout: float = 30.0, chunk_size: int = 1 << 16, backoff: float = 0.5) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` with HTTP Range after any interruption.

    ``progress(done_bytes, total_bytes_or_None)`` is called as data arrives; an
    exception raised by it (e.g. the user cancelled) propagates and keeps the
    ``.part`` file for a later resume.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if have and response.status == 206:
                    mode, done = "ab", have
                    match = re.search(r"/(\d+)$", response.headers.get("Content-Range", ""))
                    total = int(match.group(1)) if match else None
                else:  # the server ignored the range (or this is the first try): start over
                    mode, done = "wb", 0
                    length = response.headers.get("Content-Length")
                    total = int(length) if length else None
                with open(part, mode) as handle:
                    while True:
                        chunk = response.read(chunk_size)
                        if not chunk:
                            break
                        handle.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
                if total is not None and done < total:
                    raise http.client.IncompleteRead(b"", total - done)
            os.replace(part, dest)
            return dest
        except urllib.error.HTTPError as error:
            if error.code == 416 and have:  # nothing left to fetch: the part file is complete
                os.replace(part, dest)
                return dest
            if 400 <= error.code < 500:
                raise DownloadError(f"download failed: HTTP {error.code} {error.reason} for {url}") from None
            last_error = error
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as error:
            if isinstance(error, OSError) and error.errno == 28:  # ENOSPC: retrying cannot help
                raise DownloadError(f"download failed: disk full while writing {part}") from None
            last_error = error
        time.sleep(backoff * (2 ** attempt))
    reason = getattr(last_error, "reason", None) or last_error
    raise DownloadError(f"download failed after {retries + 1} attempts: {reason} ({url}); "
                        f"run the same command again to resume from {part.stat().st_size if part.exists() else 0} bytes")


@dataclass(frozen=True)
class ArchiveLimits:
    max_total_bytes: int = 8 << 30       # the real set is ~1.1 GB unpacked
    max_entries: int = 100_000
    max_ratio: float = 200.0            # JPEGs barely compress; text compresses ~10x; bombs ~1000x
    ratio_floor_bytes: int = 1 << 20    # small entries may compress well without suspicion
    total_ratio_floor_bytes: int = 16 << 20  # so may a small archive as a whole


def _check_member(info: zipfile.ZipInfo) -> str | None:
    """Why this entry is refused, or None."""
    name = info.filename
    mode = (info.external_attr >> 16) & 0xFFFF
    if stat.S_ISLNK(mode):
        return f"{name!r} is a symbolic link"
    if "\\" in name or "\x00" in name:
        return f"{name!r} has a backslash or NUL in its name"
    path = PurePosixPath(name)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", name):
        return f"{name!r} is an absolute path"
    if ".." in path.parts:
        return f"{name!r} escapes the target folder"
    return None


def check_archive(zip_path: str | os.PathLike, limits: ArchiveLimits = ArchiveLimits()) -> list[zipfile.ZipInfo]:
    """Validate every entry before anything is written; return the entries."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ArchiveError(f"{Path(zip_path).name}: not a valid zip file ({error})") from None
    if len(members) > limits.max_entries:
        raise ArchiveError(f"archive has {len(members):,} entries (limit {limits.max_entries:,})")
    total = 0
    for info in members:
        problem = _check_member(info)
        if problem:
            raise ArchiveError(f"archive refused: {problem}")
        total += info.file_size
        if info.file_size > limits.ratio_floor_bytes and info.file_size > limits.max_ratio * max(1, info.compress_size):
            raise ArchiveError(f"archive refused: {info.filename!r} expands {info.file_size / max(1, info.compress_size):.0f}x "
                               f"(limit {limits.max_ratio:.0f}x), a zip bomb")
    if total > limits.max_total_bytes:
        raise ArchiveError(f"archive refused: it would unpack to {total / 2**30:.1f} GiB "
                           f"(limit {limits.max_total_bytes / 2**30:.1f} GiB)")
    compressed = sum(info.compress_size for info in members)
    if total > limits.total_ratio_floor_bytes and total > limits.max_ratio * max(1, compressed):
        # many small entries each under the per-entry floor can still be a bomb together
        raise ArchiveError(f"archive refused: it expands {total / max(1, compressed):.0f}x overall "
                           f"(limit {limits.max_ratio:.0f}x), a zip bomb")
    return members


def safe_extract(zip_path: str | os.PathLike, target: str | os.PathLike, limits: ArchiveLimits = ArchiveLimits()) -> Path:
    """Extract into ``target`` (which must not exist yet) all or nothing."""
    target = Path(target)
    if target.exists():
        raise ArchiveError(f"{target} already exists; remove it first")
    members = check_archive(zip_path, limits)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=target.parent))
    written = 0
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for info in members:
                out = staging.joinpath(*PurePosixPath(info.filename).parts)
                if not out.resolve().is_relative_to(staging.resolve()):
                    raise ArchiveError(f"archive refused: {info.filename!r} escapes the target folder")
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(out, "wb") as sink:
                    while chunk := source.read(1 << 20):
                        written += len(chunk)
                        if written > limits.max_total_bytes:  # headers can lie about sizes
                            raise ArchiveError("archive refused: it unpacks to more than its headers say")
                        sink.write(chunk)
        os.replace(staging, target)
        return target
    except (zipfile.BadZipFile, EOFError, zlib_error()) as error:
        raise ArchiveError(f"{Path(zip_path).name}: corrupt zip ({error})") from None
    except OSError as error:
        raise ArchiveError(f"extraction failed: {error.strerror or error}") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def remove_stale_partials(folder: Path) -> list[Path]:
    """Remove half-extracted folders (``.NAME.partial-PID-*``) whose extracting process is gone (killed)."""
    removed = []
    for path in folder.glob(".*.partial-*"):
        match = re.search(r"\.partial-(\d+)-", path.name)
        if path.is_dir() and match and not process_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def dataset_folder_name(name: str) -> str:
    """A name for a folder under the data folder: one plain path component, or a clear error."""
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name or "\x00" in name \
            or os.path.isabs(name):
        raise DataError(f"--name {name!r} must be a plain folder name (no slashes, not starting with a dot)")
    return name


def import_dataset(zip_path: str | os.PathLike, data_dir: str | os.PathLike, name: str | None = None,
                   limits: ArchiveLimits = ArchiveLimits()) -> tuple[Path, Dataset]:
    """Unpack a zip of photos (``train/`` + ``test/`` or class folders) safely into ``data_dir/name``.

    Returns (dataset root, its index). An archive that is not a dataset of
    images leaves nothing behind.
    """
    from ..core.images import open_image

    archive = Path(zip_path)
    if not archive.is_file():
        raise DataError(f"no such file: {archive}")
    target = Path(data_dir) / dataset_folder_name(name or archive.stem)
    safe_extract(archive, target, limits)
    try:
        try:
            root = find_dataset_root(target)
        except DataError:  # no train/: class folders directly
            root = target
        dataset = scan_dataset(root)
        readable = 0
        for sample in (dataset.train + dataset.test)[:50]:
            try:
                open_image(sample.path)
                readable += 1
            except ImageError:
                continue
        if readable == 0:
            raise DataError(f"{archive.name} holds no images Pillow can read (checked "
                            f"{min(50, len(dataset.train) + len(dataset.test))} files)")
    except LandmarkError:
        shutil.rmtree(target, ignore_errors=True)  # not a dataset: leave nothing behind
        raise
    return root, dataset


def zlib_error():
    import zlib
    return zlib.error


def find_dataset_root(folder: Path) -> Path:
    """The folder holding ``train/`` (the zip wraps it in ``landmark_images/``)."""
    if (folder / "train").is_dir():
        return folder
    for child in sorted(folder.iterdir()):
        if child.is_dir() and (child / "train").is_dir():
            return child
    raise DataError(f"no train/ folder inside {folder}")


def check_counts(root: Path, expected: dict) -> dict:
    dataset = scan_dataset(root)
    found = {"classes": dataset.num_classes, "train": len(dataset.train), "test": len(dataset.test)}
    wrong = [f"{key} {found[key]} (expected {value})" for key, value in expected.items() if found.get(key) != value]
    if wrong:
        raise DataError(f"downloaded dataset has unexpected counts: {', '.join(wrong)}")
    return found


def download_dataset(data_dir: str | os.PathLike, *, url: str = DATASET_URL, name: str = DATASET_NAME,
                     expected: dict | None = EXPECTED_COUNTS, progress: ProgressFn | None = None,
                     limits: ArchiveLimits = ArchiveLimits(), keep_zip: bool = False, **download_options) -> Path:
    """Download, check, extract and verify the dataset; return its root (``data_dir/name``).

    Already there and complete: returns at once. The zip is removed after a
    successful extraction unless ``keep_zip``.
    """
    data_dir = Path(data_dir)
    final = data_dir / name
    if final.exists():
        root = find_dataset_root(final)
        if expected:
            check_counts(root, expected)
        return root
    zip_path = download_file(url, data_dir / f"{name}.zip", progress=progress, **download_options)
    staging = data_dir / f".{name}.extracting"
    if staging.exists():
        shutil.rmtree(staging)
    safe_extract(zip_path, staging, limits)
    try:
        root = find_dataset_root(staging)
        if expected:
            check_counts(root, expected)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.replace(staging, final)
    if not keep_zip:
        zip_path.unlink(missing_ok=True)
    return find_dataset_root(final)
