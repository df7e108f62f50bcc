"""Tag photos with the recognised landmark and its location.

For each photo: predict, then decide — *tagged* (top probability at or above the
threshold), *abstained* (below it: no tag beats a wrong place), *has_gps* (the
photo already has GPS EXIF and ``overwrite_gps`` is off) or *unreadable*.

Writing: JPEGs get GPS and the landmark name (ImageDescription, XPKeywords) in a
new EXIF APP1 segment spliced into the original bytes, so the compressed pixels
are never re-encoded. Other formats are copied byte for byte with an XMP sidecar
(``photo.png.xmp``) that exiftool and photo managers read. Originals are only
changed with ``in_place=True``; every write is atomic.
"""
from __future__ import annotations

import csv
import io
import json
import os
import struct
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator
from xml.sax.saxutils import escape

from PIL import ExifTags, Image, TiffImagePlugin

from .errors import ImageError, LandmarkError
from .fileio import write_bytes_atomic, write_json_atomic
from .images import open_image
from .places import Place, display_name, place_for

STATUSES = ("tagged", "abstained", "has_gps", "unreadable")
REPORT_FIELDS = ["file", "output", "status", "prediction", "probability", "landmark", "region", "country",
                 "latitude", "longitude", "size", "mtime_ns", "error"]


@dataclass(frozen=True)
class TagDecision:
    status: str
    prediction: str | None = None
    probability: float | None = None
    place: Place | None = None
    existing_gps: tuple[float, float] | None = None
    error: str | None = None

    @property
    def description(self) -> str:
        if self.place:
            return f"{self.place.display_name}, {self.place.region}, {self.place.country}"
        return display_name(self.prediction) if self.prediction else ""


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
           overwrite_gps: bool = False) -> TagDecision:
    """The tag for one photo from its ranked predictions (``Prediction`` objects)."""
    top = predictions[0]
    place = place_for(top.label)
    if existing_gps and not overwrite_gps:
        return TagDecision("has_gps", top.label, top.probability, place, existing_gps)
    if top.probability < threshold:
        return TagDecision("abstained", top.label, top.probability, place, existing_gps)
    return TagDecision("tagged", top.label, top.probability, place, existing_gps)


# --- writing -------------------------------------------------------------------------------------

def _rational_dms(value: float) -> tuple:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = Fraction((value - degrees - minutes / 60) * 3600).limit_denominator(10000)
    return (TiffImagePlugin.IFDRational(degrees, 1), TiffImagePlugin.IFDRational(minutes, 1),
            TiffImagePlugin.IFDRational(seconds.numerator, seconds.denominator))


def exif_with_tag(image: Image.Image, decision: TagDecision) -> bytes:
    """The photo's EXIF plus GPS position and the landmark name, as an APP1 payload."""
    exif = image.getexif()
    text = decision.description
    exif[ExifTags.Base.ImageDescription] = text
    exif[ExifTags.Base.XPKeywords] = (f"{text};landmark".encode("utf-16-le") + b"\0\0")
    if decision.place:
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        gps.clear()
        gps[ExifTags.GPS.GPSVersionID] = b"\x02\x03\x00\x00"
        gps[ExifTags.GPS.GPSLatitudeRef] = "N" if decision.place.latitude >= 0 else "S"
        gps[ExifTags.GPS.GPSLatitude] = _rational_dms(decision.place.latitude)
        gps[ExifTags.GPS.GPSLongitudeRef] = "E" if decision.place.longitude >= 0 else "W"
        gps[ExifTags.GPS.GPSLongitude] = _rational_dms(decision.place.longitude)
    return exif.tobytes()


def splice_jpeg_exif(jpeg: bytes, exif: bytes) -> bytes:
    """Replace (or add) the EXIF APP1 segment of a JPEG without touching the compressed image data."""
    if jpeg[:2] != b"\xff\xd8":
        raise ImageError("not a JPEG file")
    if len(exif) + 2 > 0xFFFF:
        raise ImageError("EXIF data too large for one JPEG segment")
    position, kept, insert_at = 2, [], None
    while position + 4 <= len(jpeg) and jpeg[position] == 0xFF:
        marker = jpeg[position + 1]
        if marker in (0xDA, 0xD9):  # start of scan: the rest is image data
            break
        length = struct.unpack(">H", jpeg[position + 2:position + 4])[0]
        segment = jpeg[position:position + 2 + length]
        is_exif = marker == 0xE1 and segment[4:10] == b"Exif\x00\x00"
        if not is_exif:
            kept.append(segment)
            if marker == 0xE0 and insert_at is None:
                insert_at = len(kept)  # after JFIF APP0, as the standards ask
        position += 2 + length
    insert_at = insert_at if insert_at is not None else 0
    app1 = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    return b"\xff\xd8" + b"".join(kept[:insert_at]) + app1 + b"".join(kept[insert_at:]) + jpeg[position:]


def xmp_sidecar(decision: TagDecision) -> str:
    place = decision.place
    gps = ""
    if place:
        def coordinate(value: float, positive: str, negative: str) -> str:
            degrees = int(abs(value))
            minutes = (abs(value) - degrees) * 60
            return f"{degrees},{minutes:.6f}{positive if value >= 0 else negative}"
        gps = (f'\n   exif:GPSLatitude="{coordinate(place.latitude, "N", "S")}"'
               f'\n   exif:GPSLongitude="{coordinate(place.longitude, "E", "W")}"'
               f'\n   exif:GPSVersionID="2.3.0.0"')
    text = escape(decision.description)
    return f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
   xmlns:dc="http://purl.org/dc/elements/1.1/"
   xmlns:exif="http://ns.adobe.com/exif/1.0/"
   xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"
   photoshop:City="{escape(place.region) if place else ''}"
   photoshop:Country="{escape(place.country) if place else ''}"{gps}>
   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{text}</rdf:li></rdf:Alt></dc:description>
   <dc:subject><rdf:Bag><rdf:li>{text}</rdf:li><rdf:li>landmark</rdf:li></rdf:Bag></dc:subject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


def tagged_bytes(data: bytes, decision: TagDecision) -> tuple[bytes, str | None]:
    """(photo bytes with the tag, sidecar XMP text or None)."""
    image = open_image(data)
    if image.format == "JPEG":
        return splice_jpeg_exif(data, exif_with_tag(image, decision)), None
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

def iter_files(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[Path, Path]]:
    """(file, its base folder) for files and folders given, walking folders lazily in sorted order."""
    for given in paths:
        given = Path(given)
        if given.is_file():
            yield given, given.parent
        elif given.is_dir():
            for folder, dirs, files in os.walk(given):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith(".") and not name.endswith(".xmp"):
                        yield Path(folder) / name, given
        else:
            raise LandmarkError(f"no such file or folder: {given}")


def _done_before(report_path: Path) -> dict[str, tuple[int, int]]:
    done = {}
    if report_path.exists():
        with open(report_path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row.get("status") in STATUSES and row.get("size"):
                    done[row["file"]] = (int(row["size"]), int(row["mtime_ns"]))
    return done


def tag_files(predictor, paths: Iterable[str | os.PathLike], *, out_dir: Path | None, threshold: float,
              in_place: bool = False, overwrite_gps: bool = False, report_path: Path,
              progress: Callable[[int, dict], None] | None = None) -> dict:
    """Tag every photo under ``paths``; stream one CSV row per file to ``report_path``.

    Files already in the report with the same size and modification time are
    skipped, so an interrupted or repeated run only does the new work. Returns
    counts per status (plus ``skipped``) and writes them to ``report.json``
    beside the CSV.
    """
    if not in_place and out_dir is None:
        raise LandmarkError("give an output folder (--out DIR) or --overwrite to tag the originals in place")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    done = _done_before(report_path)
    counts = {status: 0 for status in STATUSES} | {"skipped": 0}
    new_file = not report_path.exists()
    with open(report_path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=REPORT_FIELDS)
        if new_file:
            writer.writeheader()
        for index, (path, base) in enumerate(iter_files(paths), start=1):
            stat = path.stat()
            key = str(path.resolve())
            if done.get(key) == (stat.st_size, stat.st_mtime_ns):
                counts["skipped"] += 1
                continue
            row = {"file": key, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            try:
                data = path.read_bytes()
                existing = read_gps(data)
                decision = decide(predictor.predict(data, top_k=1), threshold, existing, overwrite_gps)
            except ImageError as error:
                decision = TagDecision("unreadable", error=str(error))
            if decision.status == "tagged":
                destination = path if in_place else out_dir / path.relative_to(base)
                write_tagged(data, destination, decision)
                row["output"] = str(destination)
                if in_place:  # the file changed: record its new identity so a re-run skips it
                    stat = path.stat()
                    row.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
            place = decision.place
            row.update(status=decision.status, prediction=decision.prediction or "",
                       probability=f"{decision.probability:.4f}" if decision.probability is not None else "",
                       landmark=place.display_name if place else "", region=place.region if place else "",
                       country=place.country if place else "", latitude=place.latitude if place else "",
                       longitude=place.longitude if place else "", error=decision.error or "")
            writer.writerow(row)
            handle.flush()
            counts[decision.status] += 1
            if progress:
                progress(index, counts)
    write_json_atomic(report_path.with_suffix(".json"), {"report": str(report_path), "threshold": threshold, "counts": counts})
    return counts


# --- CLI -----------------------------------------------------------------------------------------

def _cmd_tag(args) -> int:
    import sys
    from .fileio import read_json
    from .predict import Predictor

    predictor = Predictor(args.run)
    threshold = args.min_confidence
    if threshold is None:
        threshold = float((read_json(predictor.run_dir / "evaluation.json") or {}).get("default_threshold", 0.5))
    out_dir = None if args.overwrite else Path(args.out or "tagged")
    report = Path(args.report) if args.report else (out_dir or Path(".")) / "tag-report.csv"

    def progress(index: int, counts: dict) -> None:
        if index % 50 == 0:
            print(f"\r{index:,} files  " + "  ".join(f"{k} {v}" for k, v in counts.items()), end="", file=sys.stderr, flush=True)

    counts = tag_files(predictor, args.paths, out_dir=out_dir, threshold=threshold, in_place=args.overwrite,
                       overwrite_gps=args.overwrite_gps, report_path=report, progress=progress)
    print(f"\nthreshold {threshold:.2f}: " + ", ".join(f"{v} {k}" for k, v in counts.items()), file=sys.stderr)
    print(report)
    return 0


def add_cli(sub) -> None:
    parser = sub.add_parser("tag", help="tag photos with the predicted landmark and its GPS position")
    parser.add_argument("run", help="a finished run")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="photos or folders")
    parser.add_argument("--min-confidence", type=float, help="abstain below this probability "
                        "(default: the threshold chosen on the run's validation split)")
    parser.add_argument("--out", help="folder for tagged copies (default: ./tagged)")
    parser.add_argument("--overwrite", action="store_true", help="write the tags into the original files")
    parser.add_argument("--overwrite-gps", action="store_true", help="also tag photos that already have GPS")
    parser.add_argument("--report", help="CSV report path (default: OUT/tag-report.csv)")
    parser.set_defaults(func=_cmd_tag)
