"""Which files a tagging run handles: the walk over folders, shards, and the photos decoded on threads
ahead of the model."""
from __future__ import annotations

import errno
import os
import stat
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..core.errors import ImageError, LandmarkError
from ..core.images import MAX_PHOTO_BYTES, read_photo
from .metadata import read_gps_checked


@dataclass(frozen=True)
class WalkEntry:
    """A file to tag, the folder it was found under (its relative path there is its copy's), and why it cannot
    be read when that is known before reading (a broken or looping link, a FIFO or device, a vanished file)."""
    path: Path
    base: Path
    error: str | None = None


def _problem(path: Path) -> str | None:
    """Why ``path`` is no photo file, or None for a regular file (links followed)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "a symbolic link to nothing" if os.path.islink(path) else "the file disappeared"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symbolic link loop"
        return f"cannot read it ({error.strerror or error})"
    if not stat.S_ISREG(info.st_mode):
        kind = ("a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
        return f"not a photo file: {kind}"
    if info.st_size > MAX_PHOTO_BYTES:
        return f"{info.st_size / 2**20:,.0f} MiB is over the {MAX_PHOTO_BYTES / 2**20:.0f} MiB limit for a photo"
    return None


def iter_files(paths: Iterable[str | os.PathLike], exclude: Iterable[Path] = ()) -> Iterator[WalkEntry]:
    """Every file under the files and folders given, once, walking folders lazily in sorted order.

    Only regular files are photos: links are followed once (a link to a file already seen is the same photo and
    is not yielded again; links to folders are not walked, so no loop), and a FIFO, device, broken link, link
    loop or a file that disappears comes with its ``error`` instead of hanging or stopping the walk. Odd names
    (not UTF-8, control characters) pass through as the OS gives them.

    ``exclude``: files and folders to leave out (the tagged copies and the report, when they are written inside
    a folder being tagged: otherwise a re-run would tag its own output).
    """
    excluded = {os.path.realpath(p) for p in exclude}
    seen: set[str] = set()

    def entry(path: Path, base: Path) -> WalkEntry | None:
        real = os.path.realpath(path)
        if real in excluded or real in seen:
            return None
        seen.add(real)
        return WalkEntry(path, base, _problem(path))

    for given in paths:
        given = Path(given)
        if os.path.isdir(given):
            for folder, dirs, files in os.walk(given):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and os.path.realpath(Path(folder) / d) not in excluded)
                for name in sorted(files):
                    if not name.startswith(".") and not name.endswith(".xmp") and (found := entry(Path(folder) / name, given)):
                        yield found
        elif os.path.lexists(given):
            if found := entry(given, given.parent):
                yield found
        else:
            raise LandmarkError(f"no such file or folder: {given}")


def in_shard(path: Path, base: Path, shard: tuple[int, int] | None) -> bool:
    """Whether ``path`` belongs to shard ``(k, n)`` (1-based): a stable hash of its path under the folder given,
    so every process that tags the same library with the same ``n`` agrees, and no file is in two shards."""
    if shard is None:
        return True
    k, n = shard
    try:
        name = path.relative_to(base).as_posix()
    except ValueError:
        name = path.name
    return zlib.crc32(name.encode("utf-8", "surrogateescape")) % n == k - 1


@dataclass
class DecodedPhoto:
    path: Path
    base: Path
    size: int = 0
    mtime_ns: int = 0
    square: object = None  # uint8 H x W x 3, as Predictor.decode gives it; dropped once classified
    gps: tuple[float, float] | None = None
    gps_problem: str = ""
    error: str | None = None
    assessment: object = None
    output: str = ""
    added: dict | None = None  # what the tag written added to the file (see EarlierTag)


def decode_one(predictor, entry: WalkEntry) -> DecodedPhoto:
    """Read, decode and look for GPS in one file (a worker thread: Pillow and torch release the GIL)."""
    item = DecodedPhoto(entry.path, entry.base, error=entry.error)
    if item.error is not None:
        return item
    try:
        info = entry.path.stat()
        item.size, item.mtime_ns = info.st_size, info.st_mtime_ns
        data = read_photo(entry.path)
        with warnings.catch_warnings():  # Pillow's multi-line "Corrupt EXIF data": this row's business only
            warnings.simplefilter("ignore")
            item.square = predictor.decode(data)
            item.gps, item.gps_problem = read_gps_checked(data)
    except ImageError as error:
        item.error = str(error)
    except OSError as error:  # vanished, unreadable: this photo's row, not the run's end
        item.error = f"cannot read it ({error.strerror or error})"
    return item


def batched(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def file_key(path: Path) -> str:
    """A file's name in the report: its real path (links resolved; never raises on loops)."""
    return os.path.realpath(path)
