"""Tag a library: photos decoded on threads, predicted in batches, decided, written and reported, one
tagger per report, resumable after any interruption."""
from __future__ import annotations

import collections
import contextlib
import csv
import errno
import fcntl
import math
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from ..core.errors import ImageError, LandmarkError
from ..core.fileio import write_json_atomic
from ..core.images import open_image, read_photo
from .decision import STATUS_MEANINGS, STATUSES, TagDecision, TagStatus, decide_for, reviewed_decision
from .metadata import EarlierTag, same_position, xmp_gps
from .report import (check_report_path, done_before, earlier_tag, read_summary, repair_torn_tail, report_counts,
                     report_fields, report_row, report_rows)
from .walk import DecodedPhoto, WalkEntry, batched, decode_one, file_key, in_shard, iter_files
from .writing import SIDECAR_NAMINGS, sidecar_path_of, write_sidecar, write_tagged


@dataclass
class TagProgress:
    """Where a tagging run is: files handled (tagged, skipped or failed) of ``total``, and the recent rate."""
    done: int
    total: int | None
    counts: dict
    files_per_second: float

    @property
    def eta_seconds(self) -> float | None:
        if self.total is None or self.files_per_second <= 0:
            return None
        return max(0.0, (self.total - self.done) / self.files_per_second)


class _ReportLock:
    """One tagger per report: two processes appending to one CSV would interleave rows."""

    def __init__(self, report_path: Path):
        self.path = report_path.with_name(report_path.name + ".lock")

    def __enter__(self):
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise LandmarkError(f"another process is writing {self.path.name[:-5]}; give each tagging process its "
                                "own --report (shards get their own by default)") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def tagging_defaults(predictor, workers: int | None, batch_size: int | None) -> tuple[int, int]:
    """Decoding threads and batch size, where unset, for the predictor's device.

    Measured on 2 CPU cores with efficientnet_lite2 on photo-sized JPEGs (photos/s, 1,000 photos): 1 thread and
    batch 1 19.7, batch 8 22.1, batch 32 16.3; 2 threads and batch 8 19.5 (the decoders then compete with the
    model's own threads for the cores). So CPUs get one decoder per two cores and batches of 8; accelerators,
    whose throughput needs large batches while the CPU only decodes, a decoder per core and batches of 64.
    """
    accelerated = getattr(predictor, "device", None) is not None and predictor.device.type != "cpu"
    cores = os.cpu_count() or 1
    default_workers = min(8, cores) if accelerated else max(1, min(8, cores // 2))
    return (default_workers if workers is None else workers,
            (64 if accelerated else 8) if batch_size is None else batch_size)


def tag_files(predictor, paths: Iterable[str | os.PathLike], *, out_dir: Path | None, threshold: float | None = None,
              in_place: bool = False, overwrite_gps: bool = False, report_path: Path, open_set: bool = True,
              progress: Callable[[TagProgress], None] | None = None, workers: int | None = None,
              batch_size: int | None = None, shard: tuple[int, int] | None = None, count_first: bool = True,
              sidecars: bool = False, sidecar_naming: str = "ext", sidecar_dir: Path | None = None,
              redo: Iterable[str] | None = None, verdicts: Mapping[str, tuple[str, str | None]] | None = None) -> dict:
    """Tag every photo under ``paths`` (or this process's ``shard`` of them); stream one CSV row per file to
    ``report_path``.

    Where the tags go: tagged copies in ``out_dir``; the originals themselves (``in_place``); or, with
    ``sidecars``, XMP sidecars beside the photos (``sidecar_naming`` "ext": ``photo.jpg.xmp``, "stem":
    ``photo.xmp``), or under ``sidecar_dir`` in a mirror of the library's tree, the photos never touched (an
    existing sidecar is merged into).

    Files stream from a lazy walk through a bounded window: ``workers`` threads decode them while the model
    classifies whole batches, so memory stays flat however large the library is. ``threshold`` overrides the
    run's probability threshold; ``open_set=False`` tags photos the model finds unfamiliar too. Files already
    in the report with the same size and modification time are skipped, so an interrupted or repeated run only
    does the new work (a row cut short by a kill is dropped and redone). A file that cannot be read or tagged is
    a row with its reason, and the run goes on. Returns counts per status (plus ``skipped`` and
    ``tagged_without_place``) and writes them to ``report.json`` beside the CSV, also when stopped by SIGTERM or
    Ctrl-C (then with ``"stopped": true``), with the run, the paths and where the tags went (what a review needs).

    ``redo`` (files as the report names them) re-tags only those photos, done or not: the tag each got before is
    taken back out first (see :func:`_retract`). ``verdicts`` are a reviewer's: a file's (verdict, class), the class
    None for "not a landmark"; they decide over the model (its own view goes into the row's note).
    """
    if sum((in_place, out_dir is not None, sidecars)) != 1:
        raise LandmarkError("choose where the tags go: an output folder for tagged copies (--out DIR), the originals "
                            "(--overwrite) or XMP sidecars beside them (--sidecars)")
    if sidecar_naming not in SIDECAR_NAMINGS:
        raise LandmarkError(f"a sidecar is named {' or '.join(SIDECAR_NAMINGS)} (got {sidecar_naming!r})")
    if shard is not None and not (len(shard) == 2 and 1 <= shard[0] <= shard[1]):
        raise LandmarkError(f"a shard is K/N with 1 <= K <= N (got {shard})")
    if threshold is not None and not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise LandmarkError(f"the probability threshold must be a number of at least 0 (got {threshold})")
    workers, batch_size = tagging_defaults(predictor, workers, batch_size)
    if batch_size < 1 or workers < 1:
        raise LandmarkError(f"the batch size and the workers must be at least 1 (got {batch_size} and {workers})")
    paths = list(paths)  # walked twice (count, then tag): a generator would be empty the second time
    out_dir = out_dir.resolve() if out_dir is not None else None
    sidecar_dir = sidecar_dir.resolve() if sidecar_dir is not None else None
    report_path = report_path.resolve()
    check_report_path(report_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    own_output = [p for p in (out_dir, sidecar_dir, report_path, report_path.with_suffix(".json"),
                              report_path.with_name(report_path.name + ".lock")) if p is not None]

    redo = None if redo is None else set(redo)

    def files() -> Iterator[WalkEntry]:
        return (entry for entry in iter_files(paths, exclude=own_output) if in_shard(entry.path, entry.base, shard)
                and (redo is None or file_key(entry.path) in redo))

    counts = {status: 0 for status in STATUSES} | {"skipped": 0, "tagged_without_place": 0}
    summary = {"report": str(report_path), "counts": counts, "meanings": STATUS_MEANINGS,
               "shard": list(shard) if shard else None,
               "probability_threshold": predictor.probability_threshold if threshold is None else threshold,
               "familiarity_threshold": predictor.familiarity_threshold if open_set else None}
    where = _Destination(in_place, out_dir, sidecars, sidecar_naming, sidecar_dir)
    summary |= {"run": str(predictor.run_dir), "paths": [os.path.abspath(path) for path in paths],
                "destination": where.as_dict(), "overwrite_gps": overwrite_gps, "open_set": open_set,
                "threshold": threshold}
    if redo is not None:  # a re-tag of some photos: the summary stays the whole report's
        summary["shard"] = read_summary(report_path).get("shard")
    with _ReportLock(report_path), _sigterm_between_photos() as stop:
        try:
            _tag_locked(predictor, files, report_path, counts, stop, threshold=threshold, where=where,
                        overwrite_gps=overwrite_gps, open_set=open_set, progress=progress,
                        workers=workers, batch_size=batch_size, count_first=count_first, redo=redo,
                        verdicts=verdicts or {})
        except KeyboardInterrupt:  # the rows so far are in the report; say how far it got, then stop
            write_json_atomic(report_path.with_suffix(".json"), _whole(summary, report_path, redo) | {"stopped": True})
            raise
    write_json_atomic(report_path.with_suffix(".json"), _whole(summary, report_path, redo))
    return counts


def _whole(summary: dict, report_path: Path, redo: set[str] | None) -> dict:
    """A re-tag's summary counts every photo of the report, with how many were re-tagged."""
    if redo is None:
        return summary
    counts = report_counts(report_rows(report_path))
    return summary | {"counts": counts | {"skipped": 0, "retagged": sum(summary["counts"][s] for s in STATUSES)}}


@dataclass(frozen=True)
class _Destination:
    """Where a run's tags go (see :func:`tag_files`)."""
    in_place: bool
    out_dir: Path | None
    sidecars: bool
    sidecar_naming: str
    sidecar_dir: Path | None

    def as_dict(self) -> dict:
        """The keyword arguments of :func:`tag_files` that say it (kept in the report's summary)."""
        return {"in_place": self.in_place, "out_dir": str(self.out_dir) if self.out_dir else None,
                "sidecars": self.sidecars, "sidecar_naming": self.sidecar_naming,
                "sidecar_dir": str(self.sidecar_dir) if self.sidecar_dir else None}


def destination_arguments(summary: Mapping) -> dict:
    """``tag_files``'s keyword arguments for where a report's tags went, from its summary."""
    where = summary.get("destination")
    if not isinstance(where, dict):
        raise LandmarkError(f"{summary.get('report', 'the report')} does not say where its tags went (it was written "
                            "before reviews existed): tag the photos again to review them")
    return {"in_place": bool(where.get("in_place")), "out_dir": Path(where["out_dir"]) if where.get("out_dir") else None,
            "sidecars": bool(where.get("sidecars")), "sidecar_naming": where.get("sidecar_naming") or "ext",
            "sidecar_dir": Path(where["sidecar_dir"]) if where.get("sidecar_dir") else None}


def _remove_stale_copy(earlier_row: Mapping[str, str], where: _Destination) -> None:
    """Delete the tagged copy an earlier run of this report wrote for a photo that is no longer tagged: only a file
    the report names, inside --out (and the sidecar beside it only when we wrote one: a copy that is no JPEG)."""
    output = earlier_row.get("output", "")
    if not output or where.out_dir is None or not os.path.isfile(output):
        return
    copy = Path(output)
    if not copy.resolve().is_relative_to(where.out_dir):
        return
    try:
        is_jpeg = open_image(read_photo(copy)).format == "JPEG"
    except (ImageError, OSError):
        is_jpeg = True  # not knowing, leave any sidecar beside it alone
    if not is_jpeg and sidecar_path_of(copy).is_file():
        sidecar_path_of(copy).unlink()
    copy.unlink()


def _tag_locked(predictor, files, report_path: Path, counts: dict, stop: threading.Event, *, threshold,
                where: _Destination, overwrite_gps, open_set, progress, workers, batch_size, count_first,
                redo: set[str] | None, verdicts: Mapping[str, tuple[str, str | None]]) -> None:
    repair_torn_tail(report_path)
    done, outputs = done_before(report_path)
    earlier_rows = {file: row for file, row in report_rows(report_path).items() if file in redo} if redo else {}
    total = sum(1 for _ in files()) if count_first else None  # a walk: cheap next to decoding
    fields = report_fields(report_path)
    new_file = not report_path.exists() or report_path.stat().st_size == 0
    started, handled = time.monotonic(), 0

    def pending() -> Iterator[WalkEntry]:
        nonlocal handled
        for entry in files():
            if entry.error is None:
                try:
                    info = entry.path.stat()
                except OSError:
                    entry = WalkEntry(entry.path, entry.base, "the file disappeared")
                else:
                    if redo is None and done.get(file_key(entry.path)) == (info.st_size, info.st_mtime_ns):
                        counts["skipped"] += 1
                        handled += 1
                        continue
            yield entry

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="landmark-decode")
    # the report keeps a file name's exact bytes, as the OS gives them (surrogateescape: names need not be UTF-8)
    with open(report_path, "a", newline="", encoding="utf-8", errors="surrogateescape") as handle, _cancelling(pool):
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        if new_file:
            writer.writeheader()
        window: collections.deque = collections.deque()  # batches being decoded: at most ``workers`` + 1
        batches = batched(pending(), batch_size)
        while True:
            while len(window) <= workers and (batch := next(batches, None)) is not None:
                window.append([pool.submit(decode_one, predictor, entry) for entry in batch])
            if not window:
                break
            decoded = [future.result() for future in window.popleft()]
            readable = [item for item in decoded if item.error is None]
            for item, assessment in zip(readable, predictor.assess_batch([item.square for item in readable], 1)):
                item.square, item.assessment = None, assessment  # the pixels are done with: memory stays flat
                if assessment is None:
                    item.error = "the model gave no finite probabilities for this image"
            for item in decoded:
                decision = _decide_and_write(predictor, item, threshold=threshold, overwrite_gps=overwrite_gps,
                                             open_set=open_set, where=where, outputs=outputs, verdicts=verdicts,
                                             earlier_rows=earlier_rows)
                writer.writerow(report_row(item, decision))
                handle.flush()  # row by row: a kill loses at most the photo being written
                counts[decision.status] += 1
                counts["tagged_without_place"] += decision.status == TagStatus.TAGGED and decision.place is None
                handled += 1
                if stop.is_set():  # SIGTERM: stop here, between two photos, never inside a write
                    raise KeyboardInterrupt
            if progress:
                elapsed = time.monotonic() - started
                progress(TagProgress(handled, total, dict(counts), handled / elapsed if elapsed > 0 else 0.0))


@contextlib.contextmanager
def _sigterm_between_photos():
    """SIGTERM (a service manager, `kill`) stops tagging like Ctrl-C, once the photo being written is done: the
    report says how far it got. (Only the main thread receives signals; elsewhere nothing changes.)"""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _cancelling(pool: ThreadPoolExecutor):
    """Shut the decoders down when tagging ends; on an error or Ctrl-C, without decoding what is still queued."""
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _same_file(one: Path, other: Path) -> bool:
    """Whether two names are one file (also where names differ only in case: exFAT cards, macOS)."""
    try:
        return os.path.samefile(one, other)
    except OSError:
        return False


def _free_destination(wanted: Path, source: str, outputs: dict[str, str]) -> Path:
    """``wanted``, unless another photo of this library already has that copy (``photo.jpg`` given from two
    folders): then ``photo-2.jpg``, ``photo-3.jpg``... The same photo keeps its copy from run to run."""
    candidate, number = wanted, 1
    while True:
        key = os.path.realpath(candidate)
        owner = outputs.get(key)
        if owner == source or (owner is None and not os.path.lexists(candidate)):
            outputs[key] = source
            return candidate
        number += 1
        candidate = wanted.with_name(f"{wanted.stem}-{number}{wanted.suffix}")


#: Writing errors after which every later photo would fail the same way: the run stops, saying why.
_FATAL_WRITE_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)


def _decide_and_write(predictor, item: DecodedPhoto, *, threshold, overwrite_gps, open_set, where: _Destination,
                      outputs: dict[str, str], verdicts: Mapping[str, tuple[str, str | None]],
                      earlier_rows: Mapping[str, dict]) -> TagDecision:
    """The decision for one classified photo, and its tags written: a tagged copy, the original tagged in place, or
    its sidecar. A photo tagged before by this report (a re-tag, ``earlier_rows``) loses that tag in the same write
    that gives it the new one (or in a write of its own when it gets none): never both, never neither."""
    if item.error is not None:
        return TagDecision(TagStatus.UNREADABLE, error=item.error)
    source = file_key(item.path)
    earlier_row = earlier_rows.get(source)
    earlier = earlier_tag(earlier_row)
    gps = item.gps
    if earlier is not None and where.in_place and same_position(gps, earlier.decision.place):
        gps = None  # the position in the photo is the one our earlier tag wrote
    decision = decide_for(predictor, None, threshold=threshold, existing_gps=gps, overwrite_gps=overwrite_gps,
                          open_set=open_set, assessment=item.assessment)
    if item.gps_problem:
        decision = replace(decision, gps_note=item.gps_problem)
    if source in verdicts and decision.status != TagStatus.HAS_GPS:
        decision = reviewed_decision(decision, *verdicts[source], predictor)
    if where.sidecars:
        return _write_sidecar_of(item, decision, source, where, outputs, overwrite_gps=overwrite_gps, earlier=earlier)
    if decision.status != TagStatus.TAGGED and earlier is None:
        return decision
    in_place, out_dir = where.in_place, where.out_dir
    if in_place:
        destination = item.path
    else:
        if decision.status != TagStatus.TAGGED:
            failure = _failure_of(decision, out_dir, lambda: _remove_stale_copy(earlier_row, where))
            return failure or decision
        wanted = out_dir / item.path.relative_to(item.base)
        if os.path.realpath(wanted) == source or _same_file(wanted, item.path):
            raise LandmarkError(f"--out {out_dir} would overwrite the originals in it; choose another "
                                "folder (or --overwrite to tag the originals on purpose)")
        destination = _free_destination(wanted, source, outputs)
    written: dict = {}
    failure = _failure_of(decision, destination, lambda: written.update(added=write_tagged(
        read_photo(item.path), destination, decision, like=None if in_place else os.stat(item.path),
        earlier=earlier)))  # in the photo tagged in place, or in a copy's sidecar (a copy is made anew otherwise)
    if failure is not None:
        return failure
    if in_place:  # the file changed: record its new identity so a re-run skips it
        info = item.path.stat()
        item.size, item.mtime_ns = info.st_size, info.st_mtime_ns
    if decision.status == TagStatus.TAGGED:
        item.output, item.added = os.path.realpath(destination), written.get("added") or {}
    return decision


def _write_sidecar_of(item: DecodedPhoto, decision: TagDecision, source: str, where: _Destination,
                      outputs: dict[str, str], *, overwrite_gps: bool, earlier: EarlierTag | None) -> TagDecision:
    destination = sidecar_path_of(item.path, where.sidecar_naming, item.base, where.sidecar_dir)
    owner = outputs.setdefault(os.path.realpath(destination), source)
    if owner != source:  # photo.jpg and photo.png in one folder share photo.xmp
        return replace(decision, status=TagStatus.FAILED, error=f"{destination.name} is the sidecar of {Path(owner).name} "
                       "already (--sidecar-name ext names each photo's own)")
    if decision.status == TagStatus.TAGGED and not overwrite_gps and os.path.lexists(destination):
        try:  # a position the user set in the sidecar stays (the one our earlier tag wrote does not count)
            existing = xmp_gps(read_photo(destination))
        except (OSError, ImageError):
            existing = None
        if existing is not None and not (earlier is not None and same_position(existing, earlier.decision.place)):
            decision = replace(decision, status=TagStatus.HAS_GPS, existing_gps=existing)
    if decision.status != TagStatus.TAGGED and earlier is None:
        return decision
    written: dict = {}
    failure = _failure_of(decision, destination,
                          lambda: written.update(added=write_sidecar(destination, decision, earlier)))
    if failure is not None:
        return failure
    if decision.status == TagStatus.TAGGED:
        item.output, item.added = os.path.realpath(destination), written.get("added") or {}
    return decision


def _failure_of(decision: TagDecision, destination: Path, write: Callable[[], object]) -> TagDecision | None:
    """Run ``write``: None when it wrote, else the photo's "failed" decision with the reason (exiv2 refuses its
    metadata, a folder it may not write to); the photo is left as it was. A full or read-only disk stops the run."""
    try:
        write()
    except ImageError as error:
        return replace(decision, status=TagStatus.FAILED, error=str(error))
    except OSError as error:
        if error.errno in _FATAL_WRITE_ERRORS:
            raise LandmarkError(f"cannot write {destination}: {error.strerror or error}") from None
        return replace(decision, status=TagStatus.FAILED, error=f"cannot write {destination}: {error.strerror or error}")
    return None
