"""Atomic file writes: a reader never sees half a file, a crash never leaves one."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    The temporary file lives in the same folder so the final ``os.replace`` is a
    single atomic rename on POSIX and Windows. On any error the temporary file
    is removed and the old ``path`` (if any) is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


#: Bytes of a file name kept in its temporary's name: a legal 255-byte name plus ``.``, mkstemp's 8 characters and
#: ``.tmp`` would pass the file system's limit (ENAMETOOLONG).
_TEMPORARY_NAME_KEEP = 100


def _temporary_prefix(name: str) -> str:
    encoded = os.fsencode(name)
    if len(encoded) > _TEMPORARY_NAME_KEEP:
        # a cut through a character leaves its first bytes as surrogates: drop them all (never half a character)
        name = re.sub("[\udc80-\udcff]+$", "", os.fsdecode(encoded[:_TEMPORARY_NAME_KEEP]))
    return f".{name}."


def write_user_file(path: str | os.PathLike, data: bytes, like: os.stat_result | None = None, *,
                    keep_times: bool = True) -> None:
    """Write ``data`` to ``path``, a file among the user's own (a tagged copy, a photo tagged in place, a sidecar).

    Atomic like :func:`write_bytes_atomic`, and the user keeps what they had: a replaced file keeps its mode, owner
    and access/modification times (photo managers sort by mtime); a hard-linked one is rewritten in its inode so
    every link sees the change (only once the new bytes are whole in a temporary file beside it); a new file gets
    the mode and times of ``like`` (the original of a tagged copy), or the mode the user's umask gives, never the
    temporary's 0600. ``keep_times=False``: the file gets the time of this write (a sidecar a photo manager must
    see change).
    """
    path = Path(os.path.realpath(path))  # through a link: the file it names changes, the link stays a link
    try:
        before = path.stat()
    except FileNotFoundError:
        before = None
    if before is not None and before.st_nlink > 1:  # os.replace would split the links: rewrite their one inode
        _rewrite_in_place(path, data, before, keep_times)
        return
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        if before is None and like is not None:
            os.chmod(tmp, like.st_mode & 0o777)
            if keep_times:
                os.utime(tmp, ns=(like.st_atime_ns, like.st_mtime_ns))
        elif before is None:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        else:
            _copy_identity(before, path, tmp)
            if keep_times:
                os.utime(tmp, ns=(before.st_atime_ns, before.st_mtime_ns))


def _copy_identity(before: os.stat_result, original: Path, replacement: Path) -> None:
    """Give ``replacement`` the mode, owner, group and extended attributes (desktop tags and ratings, ACLs) of
    ``original`` before it is renamed over it."""
    os.chmod(replacement, before.st_mode & 0o7777)
    try:
        os.chown(replacement, before.st_uid, before.st_gid)
    except PermissionError:  # only root gives a file away; the group, at least, stays where we may keep it
        with contextlib.suppress(PermissionError):
            os.chown(replacement, -1, before.st_gid)
    if hasattr(os, "listxattr"):
        with contextlib.suppress(OSError):
            for name in os.listxattr(original):
                with contextlib.suppress(OSError):
                    os.setxattr(replacement, name, os.getxattr(original, name))


def _rewrite_in_place(path: Path, data: bytes, before: os.stat_result, keep_times: bool) -> None:
    """New bytes into a hard-linked file's one inode, every link seeing them. The bytes are whole on disk in a
    temporary file beside it first; if the rewrite fails that file stays, and the error names it."""
    fd, staged = tempfile.mkstemp(prefix=_temporary_prefix(path.name), suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        with open(path, "r+b") as target:
            target.write(data)
            target.truncate()
            target.flush()
            os.fsync(target.fileno())
    except OSError as error:
        raise OSError(error.errno, f"{error.strerror}; the tagged bytes are kept in {staged}", str(path)) from None
    Path(staged).unlink()
    if keep_times:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def remove_unfinished_writes(folder: str | os.PathLike, keep: tuple[str, ...] = (), keep_seconds: float = 10.0) -> list[str]:
    """Remove the temporary files of :func:`atomic_path` writes whose process was killed before it could clean up
    (SIGKILL, or a signal that arrived mid-write). Only for files no other process may be writing at the time:
    ``keep`` names the files others may still write, whose temporaries go only once ``keep_seconds`` old (a write
    takes milliseconds: an older one belongs to a dead process). Returns the names removed."""
    removed, now = [], time.time()
    for stale in Path(folder).glob(".*.tmp"):
        if stale.name.startswith(tuple(f".{name}." for name in keep)):
            try:
                if now - stale.stat().st_mtime < keep_seconds:
                    continue
            except OSError:
                continue
        stale.unlink(missing_ok=True)
        removed.append(stale.name)
    return removed


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def save_atomic(path: str | os.PathLike, saver: Callable[[Path], None]) -> None:
    """Run ``saver(tmp_path)`` (e.g. ``torch.save``) and move the result into place."""
    with atomic_path(path) as tmp:
        saver(tmp)


def share_atomic(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make ``path`` hold ``source``'s bytes, atomically: a hard link where the file system has them (no second
    write), a copy otherwise. Writers replace files by renaming (:func:`atomic_path`), never in place, so the two
    names part when either is written again."""
    with atomic_path(path) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and flush it so another process can follow the file live."""
    line = json.dumps(record, default=_json_default) + "\n"
    with open(path, "a+b") as handle:
        if handle.seek(0, os.SEEK_END) > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":  # a writer killed mid-line left it torn: this record starts its own line
                line = "\n" + line
        handle.write(line.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read complete JSON lines; a torn last line (writer killed mid-write) is ignored."""
    records = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return records


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def process_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists and has not exited (a zombie has)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours has exited even though kill(0) succeeds
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True
