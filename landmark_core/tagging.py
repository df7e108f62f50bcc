"""Tag photos with the recognised landmark and its location.

For each photo: predict, then decide — *tagged* (a landmark the model knows,
recognised with enough probability), *unknown* (the photo does not look like
any landmark the model learned: see :mod:`.openset`), *abstained* (a known
landmark but too unsure which: no tag beats a wrong place), *has_gps* (the
photo already has GPS EXIF and ``overwrite_gps`` is off) or *unreadable*. A
tagged photo whose class has no place (no ``places.csv`` entry) gets the name
only, and the report says so.

Writing: JPEGs get the tags in their metadata segments through exiv2
(``pyexiv2``), so the compressed pixels are never re-encoded: EXIF GPS,
ImageDescription and XPKeywords; IPTC Keywords, City and Country; XMP
``dc:subject`` / ``dc:description`` / ``photoshop:City``/``Country`` and GPS,
which photo managers (digiKam, Lightroom, darktable, Apple Photos) read. Other
formats are copied byte for byte with an XMP sidecar (``photo.png.xmp``)
carrying the same fields. Originals are only changed with ``in_place=True``;
every write is atomic.
"""
from __future__ import annotations

import collections
import contextlib
import csv
import fcntl
import io
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping
from xml.sax.saxutils import escape, quoteattr

import pyexiv2
from PIL import ExifTags

from .errors import ImageError, LandmarkError
from .fileio import write_bytes_atomic, write_json_atomic
from .images import open_image
from .places import Place, display_name, place_for

STATUSES = ("tagged", "unknown", "abstained", "has_gps", "unreadable")
#: What each outcome means, for reports and the app.
STATUS_MEANINGS = {
    "tagged": "a landmark the model knows, tagged with its name and place",
    "unknown": "not a landmark this model knows: left untagged",
    "abstained": "looks like a known landmark, but too unsure which: left untagged",
    "has_gps": "already has a GPS position: left untagged",
    "unreadable": "not a readable image",
}
REPORT_FIELDS = ["file", "output", "status", "prediction", "probability", "familiarity", "landmark", "region",
                 "country", "latitude", "longitude", "note", "size", "mtime_ns", "error"]
NO_PLACE_NOTE = "no place for this class: tagged by name only (add it to the dataset's places.csv)"

pyexiv2.set_log_level(4)  # exiv2's warnings about odd but readable files would go to stderr otherwise


@dataclass(frozen=True)
class TagDecision:
    status: str
    prediction: str | None = None
    probability: float | None = None
    place: Place | None = None
    existing_gps: tuple[float, float] | None = None
    error: str | None = None
    familiarity: float | None = None

    @property
    def name(self) -> str:
        return display_name(self.prediction, self.place) if self.prediction else ""

    @property
    def description(self) -> str:
        return self.place.description if self.place else self.name

    @property
    def keywords(self) -> list[str]:
        place = self.place
        parts = [self.name] + ([place.region, place.country] if place else []) + ["landmark"]
        return list(dict.fromkeys(part for part in parts if part))

    @property
    def note(self) -> str:
        return NO_PLACE_NOTE if self.status == "tagged" and self.place is None else ""


# --- reading GPS ---------------------------------------------------------------------------------

def _to_degrees(values, ref) -> float:
    degrees, minutes, seconds = (float(v) for v in values)
    value = degrees + minutes / 60 + seconds / 3600
    return -value if str(ref).upper() in ("S", "W") else value


def read_gps(source) -> tuple[float, float] | None:
    """(latitude, longitude) from a photo's EXIF, or None."""
    try:
        image = open_image(source)
        gps = image.getexif().get_ifd(ExifTags.IFD.GPSInfo)
        if 2 in gps and 4 in gps:
            return _to_degrees(gps[2], gps.get(1, "N")), _to_degrees(gps[4], gps.get(3, "E"))
    except ImageError:
        raise
    except Exception:
        return None
    return None


# --- deciding ------------------------------------------------------------------------------------

def decide(predictions, threshold: float, existing_gps: tuple[float, float] | None = None,
           overwrite_gps: bool = False, *, familiarity: float | None = None,
           familiarity_threshold: float | None = None, places: Mapping[str, Place | None] | None = None) -> TagDecision:
    """The tag for one photo from its ranked predictions (``Prediction`` objects) and its familiarity.

    ``places`` maps class names to places (a run's, with its dataset's
    ``places.csv``); without it the built-in places are used.
    """
    top = predictions[0]
    place = places.get(top.label) if places is not None else place_for(top.label)
    decision = dict(prediction=top.label, probability=top.probability, place=place, existing_gps=existing_gps,
                    familiarity=familiarity)
    if existing_gps and not overwrite_gps:
        return TagDecision("has_gps", **decision)
    if familiarity_threshold is not None and familiarity is not None and familiarity < familiarity_threshold:
        return TagDecision("unknown", **decision)
    if top.probability < threshold:
        return TagDecision("abstained", **decision)
    return TagDecision("tagged", **decision)


def decide_for(predictor, source, *, threshold: float | None = None, existing_gps=None,
               overwrite_gps: bool = False, open_set: bool = True, assessment=None) -> TagDecision:
    """Predict one photo with a :class:`~.predict.Predictor` (or use its ``assessment``) and decide at the run's
    default thresholds (``threshold`` overrides the probability threshold; ``open_set=False`` skips the
    familiarity check)."""
    assessment = assessment or predictor.assess(source, top_k=1)
    return decide(assessment.predictions, predictor.probability_threshold if threshold is None else threshold,
                  existing_gps, overwrite_gps, familiarity=assessment.familiarity,
                  familiarity_threshold=predictor.familiarity_threshold if open_set else None,
                  places=predictor.places)


# --- writing -------------------------------------------------------------------------------------

def _dms(value: float) -> tuple[int, int, Fraction]:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    return degrees, minutes, Fraction((value - degrees - minutes / 60) * 3600).limit_denominator(10000)


def _exif_rational(value: float) -> str:
    degrees, minutes, seconds = _dms(value)
    return f"{degrees}/1 {minutes}/1 {seconds.numerator}/{seconds.denominator}"


def _xmp_coordinate(value: float, positive: str, negative: str) -> str:
    degrees = int(abs(value))
    return f"{degrees},{(abs(value) - degrees) * 60:.6f}{positive if value >= 0 else negative}"


def _metadata(decision: TagDecision) -> tuple[dict, dict, dict]:
    """(EXIF, IPTC, XMP) fields of a tag, keyed as exiv2 names them."""
    place, text = decision.place, decision.description
    exif = {"Exif.Image.ImageDescription": text, "Exif.Image.XPKeywords": ";".join(decision.keywords)}
    iptc = {"Iptc.Envelope.CharacterSet": "\x1b%G",  # UTF-8, so readers decode non-ASCII names right
            "Iptc.Application2.Keywords": decision.keywords, "Iptc.Application2.Caption": text}
    xmp = {"Xmp.dc.subject": decision.keywords, "Xmp.dc.description": {'lang="x-default"': text}}
    if place:
        exif.update({"Exif.GPSInfo.GPSVersionID": "2 3 0 0",
                     "Exif.GPSInfo.GPSLatitudeRef": "N" if place.latitude >= 0 else "S",
                     "Exif.GPSInfo.GPSLatitude": _exif_rational(place.latitude),
                     "Exif.GPSInfo.GPSLongitudeRef": "E" if place.longitude >= 0 else "W",
                     "Exif.GPSInfo.GPSLongitude": _exif_rational(place.longitude)})
        iptc.update({"Iptc.Application2.City": place.region, "Iptc.Application2.CountryName": place.country})
        xmp.update({"Xmp.photoshop.City": place.region, "Xmp.photoshop.Country": place.country,
                    "Xmp.exif.GPSVersionID": "2.3.0.0",
                    "Xmp.exif.GPSLatitude": _xmp_coordinate(place.latitude, "N", "S"),
                    "Xmp.exif.GPSLongitude": _xmp_coordinate(place.longitude, "E", "W")})
    return exif, iptc, xmp


def jpeg_with_tag(jpeg: bytes, decision: TagDecision) -> bytes:
    """The JPEG's bytes with the tag in its EXIF, IPTC and XMP segments; the compressed image data is untouched."""
    exif, iptc, xmp = _metadata(decision)
    try:
        with pyexiv2.ImageData(jpeg) as image:
            if decision.place:  # a new position replaces the whole old one (altitude, timestamps...)
                image.modify_exif({key: None for key in image.read_exif() if key.startswith("Exif.GPSInfo.")})
            image.modify_exif(exif)
            image.modify_iptc({key: value for key, value in iptc.items() if value})
            image.modify_xmp({key: value for key, value in xmp.items() if value})
            return image.get_bytes()
    except RuntimeError as error:  # exiv2 refuses metadata it cannot parse: never write a half-tagged file
        raise ImageError(f"cannot write tags into this JPEG ({error})") from None


def xmp_sidecar(decision: TagDecision) -> str:
    exif, iptc, xmp = _metadata(decision)
    place = decision.place
    gps = "".join(f"\n   exif:{key}={quoteattr(xmp['Xmp.exif.' + key])}"
                  for key in ("GPSLatitude", "GPSLongitude", "GPSVersionID")) if place else ""
    subjects = "".join(f"<rdf:li>{escape(keyword)}</rdf:li>" for keyword in decision.keywords)
    return f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
   xmlns:dc="http://purl.org/dc/elements/1.1/"
   xmlns:exif="http://ns.adobe.com/exif/1.0/"
   xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"
   photoshop:City={quoteattr(place.region if place else '')}
   photoshop:Country={quoteattr(place.country if place else '')}{gps}>
   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{escape(decision.description)}</rdf:li></rdf:Alt></dc:description>
   <dc:subject><rdf:Bag>{subjects}</rdf:Bag></dc:subject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


def tagged_bytes(data: bytes, decision: TagDecision) -> tuple[bytes, str | None]:
    """(photo bytes with the tag, sidecar XMP text or None)."""
    image = open_image(data)
    if image.format == "JPEG":
        return jpeg_with_tag(data, decision), None
    return data, xmp_sidecar(decision)


def write_tagged(original: bytes, destination: Path, decision: TagDecision) -> Path:
    """Write the tagged photo (and sidecar) atomically; returns the photo's path."""
    data, sidecar = tagged_bytes(original, decision)
    if data != original or not destination.exists():  # a sidecar-only format tagged in place stays untouched
        write_bytes_atomic(destination, data)
    if sidecar is not None:
        write_bytes_atomic(destination.with_name(destination.name + ".xmp"), sidecar.encode("utf-8"))
    return destination


def tagged_zip(items: list[tuple[str, bytes, TagDecision]]) -> bytes:
    """A zip of tagged copies (for the app's download of many photos)."""
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data, decision in items:
            photo, sidecar = tagged_bytes(data, decision)
            archive.writestr(name, photo)
            if sidecar:
                archive.writestr(name + ".xmp", sidecar)
    return buffer.getvalue()


# --- batch ---------------------------------------------------------------------------------------

def iter_files(paths: Iterable[str | os.PathLike], exclude: Iterable[Path] = ()) -> Iterator[tuple[Path, Path]]:
    """(file, its base folder) for files and folders given, walking folders lazily in sorted order.

    ``exclude``: files and folders to leave out (the tagged copies and the report, when they are written inside
    a folder being tagged: otherwise a re-run would tag its own output).
    """
    excluded = {Path(p).resolve() for p in exclude}

    def skipped(path: Path) -> bool:
        return bool(excluded) and path.resolve() in excluded

    for given in paths:
        given = Path(given)
        if given.is_file():
            if not skipped(given):
                yield given, given.parent
        elif given.is_dir():
            for folder, dirs, files in os.walk(given):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not skipped(Path(folder) / d))
                for name in sorted(files):
                    if not name.startswith(".") and not name.endswith(".xmp") and not skipped(Path(folder) / name):
                        yield Path(folder) / name, given
        else:
            raise LandmarkError(f"no such file or folder: {given}")


def _repair_torn_tail(report_path: Path) -> None:
    """Drop a last line cut short by a kill mid-write (no final newline), so appending starts on a fresh line."""
    if not report_path.exists() or report_path.stat().st_size == 0:
        return
    with open(report_path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        data = handle.seek(0) or handle.read()
        handle.truncate(data.rfind(b"\n") + 1)


def _done_before(report_path: Path) -> dict[str, tuple[int, int]]:
    """Files a previous run finished: their (size, mtime) as recorded; rows that do not parse are redone."""
    done = {}
    if report_path.exists():
        with open(report_path, newline="", encoding="utf-8", errors="replace") as handle:
            for row in csv.DictReader(handle):
                try:
                    if row.get("status") in STATUSES and row.get("file"):
                        done[row["file"]] = (int(row["size"]), int(row["mtime_ns"]))
                except (TypeError, ValueError):
                    continue
    return done


def _report_fields(report_path: Path) -> list[str]:
    """The columns of an existing report (an older version may have fewer), or today's for a new one."""
    if report_path.exists() and report_path.stat().st_size:
        with open(report_path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), None)
        if header:
            return header
    return REPORT_FIELDS


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


@dataclass
class _Decoded:
    path: Path
    base: Path
    size: int
    mtime_ns: int
    square: object = None  # uint8 S x S x 3, as Predictor.decode gives it; dropped once classified
    gps: tuple[float, float] | None = None
    error: str | None = None
    assessment: object = None
    output: str = ""


def _decode_one(predictor, path: Path, base: Path) -> _Decoded:
    """Read, decode and look for GPS in one file (a worker thread: Pillow and torch release the GIL)."""
    stat = path.stat()
    item = _Decoded(path, base, stat.st_size, stat.st_mtime_ns)
    try:
        data = path.read_bytes()
        item.square, item.gps = predictor.decode(data), read_gps(data)
    except ImageError as error:
        item.error = str(error)
    return item


def _batches(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


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
              batch_size: int | None = None, shard: tuple[int, int] | None = None, count_first: bool = True) -> dict:
    """Tag every photo under ``paths`` (or this process's ``shard`` of them); stream one CSV row per file to
    ``report_path``.

    Files stream from a lazy walk through a bounded window: ``workers`` threads decode them while the model
    classifies whole batches, so memory stays flat however large the library is. ``threshold`` overrides the
    run's probability threshold; ``open_set=False`` tags photos the model finds unfamiliar too. Files already
    in the report with the same size and modification time are skipped, so an interrupted or repeated run only
    does the new work (a row cut short by a kill is dropped and redone). Returns counts per status (plus
    ``skipped`` and ``tagged_without_place``) and writes them to ``report.json`` beside the CSV.
    """
    if not in_place and out_dir is None:
        raise LandmarkError("give an output folder (--out DIR) or --overwrite to tag the originals in place")
    if shard is not None and not (len(shard) == 2 and 1 <= shard[0] <= shard[1]):
        raise LandmarkError(f"a shard is K/N with 1 <= K <= N (got {shard})")
    workers, batch_size = tagging_defaults(predictor, workers, batch_size)
    if batch_size < 1 or workers < 1:
        raise LandmarkError(f"the batch size and the workers must be at least 1 (got {batch_size} and {workers})")
    paths = list(paths)  # walked twice (count, then tag): a generator would be empty the second time
    out_dir = out_dir.resolve() if out_dir is not None else None
    report_path = report_path.resolve()
    report_path.parent.mkdir(parents=True, exist_ok=True)
    own_output = [p for p in (out_dir, report_path, report_path.with_suffix(".json"),
                              report_path.with_name(report_path.name + ".lock")) if p is not None]

    def files() -> Iterator[tuple[Path, Path]]:
        return ((path, base) for path, base in iter_files(paths, exclude=own_output) if in_shard(path, base, shard))

    with _ReportLock(report_path):
        _repair_torn_tail(report_path)
        done = _done_before(report_path)
        total = sum(1 for _ in files()) if count_first else None  # a walk: cheap next to decoding
        counts = {status: 0 for status in STATUSES} | {"skipped": 0, "tagged_without_place": 0}
        fields = _report_fields(report_path)
        new_file = not report_path.exists() or report_path.stat().st_size == 0
        started, handled = time.monotonic(), 0

        def pending() -> Iterator[tuple[Path, Path]]:
            nonlocal handled
            for path, base in files():
                stat = path.stat()
                if done.get(str(path.resolve())) == (stat.st_size, stat.st_mtime_ns):
                    counts["skipped"] += 1
                    handled += 1
                    continue
                yield path, base

        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="landmark-decode")
        with open(report_path, "a", newline="", encoding="utf-8") as handle, _cancelling(pool):
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            window: collections.deque = collections.deque()  # batches being decoded: at most ``workers`` + 1
            batches = _batches(pending(), batch_size)
            while True:
                while len(window) <= workers and (batch := next(batches, None)) is not None:
                    window.append([pool.submit(_decode_one, predictor, path, base) for path, base in batch])
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
                                                 open_set=open_set, in_place=in_place, out_dir=out_dir)
                    writer.writerow(_report_row(item, decision))
                    handle.flush()  # row by row: a kill loses at most the photo being written
                    counts[decision.status] += 1
                    counts["tagged_without_place"] += bool(decision.note)
                    handled += 1
                if progress:
                    elapsed = time.monotonic() - started
                    progress(TagProgress(handled, total, dict(counts), handled / elapsed if elapsed > 0 else 0.0))
    write_json_atomic(report_path.with_suffix(".json"), {
        "report": str(report_path), "counts": counts, "meanings": STATUS_MEANINGS, "shard": list(shard) if shard else None,
        "probability_threshold": predictor.probability_threshold if threshold is None else threshold,
        "familiarity_threshold": predictor.familiarity_threshold if open_set else None})
    return counts


@contextlib.contextmanager
def _cancelling(pool: ThreadPoolExecutor):
    """Shut the decoders down when tagging ends; on an error or Ctrl-C, without decoding what is still queued."""
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _decide_and_write(predictor, item: _Decoded, *, threshold, overwrite_gps, open_set, in_place, out_dir) -> TagDecision:
    """The decision for one classified photo, and its tagged copy (or the original, tagged in place)."""
    if item.error is not None:
        return TagDecision("unreadable", error=item.error)
    decision = decide_for(predictor, None, threshold=threshold, existing_gps=item.gps, overwrite_gps=overwrite_gps,
                          open_set=open_set, assessment=item.assessment)
    if decision.status != "tagged":
        return decision
    destination = item.path if in_place else out_dir / item.path.relative_to(item.base)
    if not in_place and destination.resolve() == item.path.resolve():
        raise LandmarkError(f"--out {out_dir} would overwrite the originals in it; choose another "
                        "folder (or --overwrite to tag the originals on purpose)")
    try:
        write_tagged(item.path.read_bytes(), destination, decision)
    except OSError as error:  # every later photo would fail the same way: stop, saying why
        raise LandmarkError(f"cannot write {destination}: {error.strerror or error}") from None
    item.output = str(destination.resolve())
    if in_place:  # the file changed: record its new identity so a re-run skips it
        stat = item.path.stat()
        item.size, item.mtime_ns = stat.st_size, stat.st_mtime_ns
    return decision


def _report_row(item: _Decoded, decision: TagDecision) -> dict:
    place = decision.place
    return {"file": str(item.path.resolve()), "size": item.size, "mtime_ns": item.mtime_ns,  # absolute, like output
            "output": item.output, "status": decision.status, "prediction": decision.prediction or "",
            "probability": f"{decision.probability:.4f}" if decision.probability is not None else "",
            "familiarity": f"{decision.familiarity:.4f}" if decision.familiarity is not None else "",
            "landmark": decision.name if decision.prediction else "", "region": place.region if place else "",
            "country": place.country if place else "", "latitude": place.latitude if place else "",
            "longitude": place.longitude if place else "", "note": decision.note, "error": decision.error or ""}
