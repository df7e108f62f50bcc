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
import errno
import fcntl
import io
import json
import math
import os
import signal
import stat
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping
from xml.sax.saxutils import escape, quoteattr

import pyexiv2
from PIL import ExifTags

from .errors import ImageError, LandmarkError
from .fileio import write_json_atomic, write_user_file
from .images import open_image
from .places import Place, display_name, gazetteer, place_for, strip_control_characters

STATUSES = ("tagged", "unknown", "abstained", "has_gps", "unreadable", "failed")
#: What each outcome means, for reports and the app.
STATUS_MEANINGS = {
    "tagged": "a landmark the model knows, tagged with its name and place",
    "unknown": "not a landmark this model knows: left untagged",
    "abstained": "looks like a known landmark, but too unsure which: left untagged",
    "has_gps": "already has a GPS position: left untagged",
    "unreadable": "not a readable image",
    "failed": "recognised, but the tags could not be written into it (the photo is left as it was)",
}
REPORT_FIELDS = ["file", "output", "status", "prediction", "probability", "familiarity", "landmark", "region",
                 "country", "latitude", "longitude", "note", "size", "mtime_ns", "error", "added"]
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
    gps_note: str = ""  # why the photo's own GPS was not taken as a position (out of range, 0/0)
    review_note: str = ""  # the user's verdict from a review, and what the model said itself

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
        notes = [self.review_note, NO_PLACE_NOTE if self.status == "tagged" and self.place is None else "",
                 self.gps_note]
        return "; ".join(note for note in notes if note)


# --- reading GPS ---------------------------------------------------------------------------------

def _to_degrees(values, ref) -> float:
    degrees, minutes, seconds = (float(v) for v in values)
    value = degrees + minutes / 60 + seconds / 3600
    return -value if str(ref).upper() in ("S", "W") else value


def read_gps_checked(source) -> tuple[tuple[float, float] | None, str]:
    """((latitude, longitude) or None, and why the GPS that is there is no position: '' when it is one or there is
    none). EXIF first, then the photo's own XMP (where digiKam, darktable and Lightroom may put a hand-set
    location). A 0/0 rational or a latitude of 999 degrees is no position: such a photo is tagged."""
    try:
        image = open_image(source)
        with warnings.catch_warnings():  # "Corrupt EXIF data" and the like: a photo without readable GPS
            warnings.simplefilter("ignore")
            gps = image.getexif().get_ifd(ExifTags.IFD.GPSInfo)
        if 2 not in gps or 4 not in gps:
            return _embedded_xmp_gps(source), ""
        latitude, longitude = _to_degrees(gps[2], gps.get(1, "N")), _to_degrees(gps[4], gps.get(3, "E"))
    except ImageError:
        raise
    except Exception:
        return None, "the photo's GPS could not be read: ignored"
    if not (math.isfinite(latitude) and math.isfinite(longitude) and abs(latitude) <= 90 and abs(longitude) <= 180):
        return None, f"the photo's GPS ({latitude:.6g}, {longitude:.6g}) is no position: ignored"
    return (latitude, longitude), ""


def _from_xmp_coordinate(text: str) -> float:
    """An XMP GPS coordinate, ``48,51.5N`` or ``48,51,30N``, in degrees."""
    text = str(text).strip()
    parts = [float(part) for part in text[:-1].split(",")]
    value = sum(part / 60 ** power for power, part in enumerate(parts[:3]))
    return -value if text[-1:].upper() in ("S", "W") else value


def xmp_gps(data: bytes) -> tuple[float, float] | None:
    """The position in a file's XMP (a JPEG's packet or a sidecar), where digiKam, darktable and Lightroom put a
    hand-set location; None when there is none or it is no valid position."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pyexiv2.ImageData(data) as image:
                position = _xmp_position(image.read_xmp())
    except _EXIV2_ERRORS:
        return None
    if position is None:
        return None
    latitude, longitude = position
    valid = math.isfinite(latitude) and math.isfinite(longitude) and abs(latitude) <= 90 and abs(longitude) <= 180
    return (latitude, longitude) if valid else None


def _embedded_xmp_gps(source) -> tuple[float, float] | None:
    """A position in the XMP packet of a photo given as bytes or a path (only parsed when one may be there)."""
    if isinstance(source, (str, os.PathLike)):
        source = _read_photo(Path(source))
    if not isinstance(source, (bytes, bytearray)) or b"GPSLatitude" not in source:
        return None
    return xmp_gps(bytes(source))


def read_gps(source) -> tuple[float, float] | None:
    """(latitude, longitude) from a photo's EXIF, or None (also when what is there is no valid position)."""
    return read_gps_checked(source)[0]


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


#: What reading or writing a file's metadata through exiv2 raises: its own refusal, and pyexiv2's strict UTF-8
#: decoding of values written in another charset (a Latin-1 IPTC caption, a Windows EXIF copyright).
_EXIV2_ERRORS = (RuntimeError, UnicodeError, ValueError)

#: Fields that hold a list of keywords: ours are added to the user's, once.
_KEYWORD_FIELDS = ("Exif.Image.XPKeywords", "Iptc.Application2.Keywords", "Xmp.dc.subject")
#: Fields that hold a caption: the user's is kept, and ours added after it, once.
_CAPTION_FIELDS = ("Exif.Image.ImageDescription", "Iptc.Application2.Caption", "Xmp.dc.description")
_CAPTION_JOIN = " · "


def _clean(text) -> str:
    return strip_control_characters(str(text)).strip()  # Windows ends XPKeywords with a NUL


def _as_list(value) -> list[str]:
    if value is None:
        return []
    parts = value.split(";") if isinstance(value, str) else value
    return [_clean(part) for part in parts if _clean(part)]


def _as_text(value) -> str:
    if isinstance(value, dict):  # XMP language alternatives: the default one
        value = value.get(_DEFAULT_LANGUAGE) or next(iter(value.values()), "")
    if isinstance(value, list):
        value = value[0] if value else ""
    return _clean(value or "")


_DEFAULT_LANGUAGE = 'lang="x-default"'


def merged_fields(fields: dict, existing: dict) -> dict:
    """Our tag's fields merged into a file's ``existing`` ones (as pyexiv2 reads them): keywords are added to the
    user's (not repeated on a re-run), a caption of the user's stays first with ours after it, every other field
    of the user's is left alone (only the fields we write, and a replaced position, change)."""
    merged = dict(fields)
    for key in _KEYWORD_FIELDS:
        if key in fields:
            theirs = _as_list(existing.get(key))
            combined = list(dict.fromkeys(theirs + [k for k in _as_list(fields[key]) if k not in theirs]))
            merged[key] = ";".join(combined) if key == "Exif.Image.XPKeywords" else combined
    for key in _CAPTION_FIELDS:
        if key in fields:
            ours, theirs = _as_text(fields[key]), _as_text(existing.get(key))
            text = theirs if (not ours or ours in theirs.split(_CAPTION_JOIN)) else (
                f"{theirs}{_CAPTION_JOIN}{ours}" if theirs else ours)
            if key == "Xmp.dc.description":  # the caption in other languages stays as the user wrote it
                theirs_by_language = existing.get(key) if isinstance(existing.get(key), dict) else {}
                merged[key] = {**theirs_by_language, _DEFAULT_LANGUAGE: text}
            else:
                merged[key] = text
    return merged


#: Place fields we write with a tag: taken out again only where they still hold our value.
_PLACE_FIELDS = ("Iptc.Application2.City", "Iptc.Application2.CountryName", "Xmp.photoshop.City",
                 "Xmp.photoshop.Country")


@dataclass(frozen=True)
class EarlierTag:
    """A tag written before (rebuilt from its report row) and what it added to the file: the keywords that were
    not there, whether the caption, the city and country and the position were ours. ``added`` is None for a row
    of a report that did not record it: then every field that holds our value is taken as ours."""
    decision: TagDecision
    added: dict | None = None


def _same_position(position, place: Place | None) -> bool:
    return place is not None and position is not None and abs(position[0] - place.latitude) < 1e-4 \
        and abs(position[1] - place.longitude) < 1e-4


def _exif_position(exif: dict) -> tuple[float, float] | None:
    try:
        def degrees(key):
            parts = [Fraction(part) for part in str(exif[f"Exif.GPSInfo.GPS{key}"]).split()]
            return _to_degrees(parts, exif.get(f"Exif.GPSInfo.GPS{key}Ref", "N"))
        return degrees("Latitude"), degrees("Longitude")
    except (KeyError, ValueError, ZeroDivisionError, TypeError):
        return None


def _xmp_position(xmp: dict) -> tuple[float, float] | None:
    try:
        return _from_xmp_coordinate(xmp["Xmp.exif.GPSLatitude"]), _from_xmp_coordinate(xmp["Xmp.exif.GPSLongitude"])
    except (KeyError, IndexError, ValueError):
        return None


def retracted_fields(earlier: EarlierTag, existing: dict, *, position_is_ours: bool) -> dict:
    """The changes (a field's new value, None to delete it) that take an earlier tag of ours back out of a file's
    ``existing`` fields, so it can be tagged again: the keywords it added and its caption part go, the user's
    stay (a keyword the user had before is not ours to take); a city or country goes only where the tag set it
    and it still holds our value; the position only while it is still ours (``position_is_ours``)."""
    previous, added = earlier.decision, earlier.added
    exif, iptc, xmp = _metadata(previous)
    ours, changes = exif | iptc | xmp, {}
    ours_keywords = set(added.get("keywords", []) if added is not None else previous.keywords)
    for key in _KEYWORD_FIELDS:
        if key in existing:
            theirs = [k for k in _as_list(existing[key]) if k not in ours_keywords]
            changes[key] = (";".join(theirs) if key == "Exif.Image.XPKeywords" else theirs) or None
    if added is None or added.get("caption"):
        for key in _CAPTION_FIELDS:
            if key in existing:
                parts = [part for part in _as_text(existing[key]).split(_CAPTION_JOIN)
                         if part and part != previous.description]
                text = _CAPTION_JOIN.join(parts)
                if key == "Xmp.dc.description" and isinstance(existing[key], dict):
                    others = {k: v for k, v in existing[key].items() if k != _DEFAULT_LANGUAGE}
                    changes[key] = ({**others, _DEFAULT_LANGUAGE: text} if text else others) or None
                else:
                    changes[key] = text or None
    if added is None or added.get("place_fields"):
        for key in _PLACE_FIELDS:
            if key in existing and _as_text(existing[key]) == _as_text(ours.get(key)):
                changes[key] = None
    if position_is_ours:
        changes.update({key: None for key in existing if key.startswith(("Exif.GPSInfo.", "Xmp.exif.GPS"))})
    return {key: value for key, value in changes.items() if key in existing}


def _views(image):
    """exiv2's three views of a file's metadata as (read, modify), XMP last: it reads a sidecar's XMP into EXIF and
    IPTC views too and writes those back into its XMP on every change, so a field is gone only once it is gone
    from all three."""
    return ((image.read_exif, image.modify_exif), (image.read_iptc, image.modify_iptc),
            (image.read_xmp, image.modify_xmp))


def _retract_from(image, earlier: EarlierTag) -> None:
    place = earlier.decision.place
    ours_written = earlier.added is None or earlier.added.get("gps")
    position_is_ours = bool(ours_written) and (_same_position(_exif_position(image.read_exif()), place)
                                               or _same_position(_xmp_position(image.read_xmp()), place))
    for read, modify in _views(image):
        changes = retracted_fields(earlier, read(), position_is_ours=position_is_ours)
        if changes:
            modify(changes)


def _merge_into(image, decision: TagDecision, *, sidecar: bool = False, earlier: EarlierTag | None = None) -> dict:
    """Write the tag into an open pyexiv2 image (a JPEG, or an XMP ``sidecar``: XMP only), keeping every field of
    the user's; an ``earlier`` tag of ours is taken out first. Returns what the tag added (see :class:`EarlierTag`),
    {} when ``decision`` is no tag (then only the earlier one is taken out)."""
    if earlier is not None:
        _retract_from(image, earlier)
    if decision.status != "tagged":
        return {}
    there = {view: read() for view, (read, _) in zip(("exif", "iptc", "xmp"), _views(image))}
    fields = there["exif"] | there["iptc"] | there["xmp"]
    keywords_there = {k for key in _KEYWORD_FIELDS for k in _as_list(fields.get(key))}
    added = {"keywords": [k for k in decision.keywords if k not in keywords_there],
             "caption": not any(decision.description in _as_text(fields.get(key)).split(_CAPTION_JOIN)
                                for key in _CAPTION_FIELDS),
             "place_fields": not any(_as_text(fields.get(key)) for key in _PLACE_FIELDS),
             "gps": decision.place is not None}
    exif, iptc, xmp = _metadata(decision)
    if decision.place:  # a new position replaces the whole old one (altitude, timestamps...); in a sidecar too,
        # whose EXIF view exiv2 would write back over the new XMP position
        image.modify_exif({key: None for key in there["exif"] if key.startswith("Exif.GPSInfo.")})
    if not sidecar:
        existing = image.read_exif()
        image.modify_exif(merged_fields(exif, existing))
        image.modify_iptc({key: value for key, value in merged_fields(iptc, there["iptc"]).items() if value})
    image.modify_xmp({key: value for key, value in merged_fields(xmp, image.read_xmp()).items() if value})
    return added


def _jpeg_with(jpeg: bytes, decision: TagDecision, earlier: EarlierTag | None = None) -> tuple[bytes, dict]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pyexiv2.ImageData(jpeg) as image:
                added = _merge_into(image, decision, earlier=earlier)
                return image.get_bytes(), added
    except _EXIV2_ERRORS as error:  # exiv2 refuses metadata it cannot parse: never write a half-tagged file
        raise ImageError(f"cannot write tags into this JPEG ({error})") from None


def jpeg_with_tag(jpeg: bytes, decision: TagDecision) -> bytes:
    """The JPEG's bytes with the tag merged into its EXIF, IPTC and XMP segments (the user's keywords, captions
    and other fields kept); the compressed image data is untouched."""
    return _jpeg_with(jpeg, decision)[0]


def _sidecar_with(existing: bytes, decision: TagDecision, earlier: EarlierTag | None = None) -> tuple[bytes, dict]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pyexiv2.ImageData(existing) as image:
                added = _merge_into(image, decision, sidecar=True, earlier=earlier)
                return image.get_bytes(), added
    except _EXIV2_ERRORS as error:
        raise ImageError(f"cannot merge the tags into the existing XMP sidecar ({error})") from None


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


def write_tagged(original: bytes, destination: Path, decision: TagDecision, like: os.stat_result | None = None,
                 earlier: EarlierTag | None = None) -> dict:
    """Write the tagged photo (and sidecar) atomically, keeping the file's (or ``like``'s) mode, owner and times;
    an existing sidecar is merged into, not replaced, and an ``earlier`` tag of ours in the photo (tagged in place)
    or its sidecar is taken out in the same write. Returns what the tag added."""
    if open_image(original).format == "JPEG":
        data, added = _jpeg_with(original, decision, earlier)
        if data != original or not destination.exists():
            write_user_file(destination, data, like=like)
        return added
    sidecar = sidecar_path_of(destination)  # a format that carries no tags: they go into its sidecar
    added = write_sidecar(sidecar, decision, earlier, like=like, keep_times=True)
    if not destination.exists():
        write_user_file(destination, original, like=like)
    return added


#: How a sidecar is named: ``photo.jpg.xmp`` (digiKam, darktable, Immich) or ``photo.xmp`` (Lightroom, Capture One).
SIDECAR_NAMINGS = ("ext", "stem")


def sidecar_path_of(photo: Path, naming: str = "ext", base: Path | None = None, folder: Path | None = None) -> Path:
    """Where a photo's XMP sidecar goes: beside it, or under ``folder`` at the photo's place below ``base`` (a
    mirror of the library's tree, for libraries that are read-only)."""
    name = photo.name + ".xmp" if naming == "ext" else photo.stem + ".xmp"
    where = photo.parent if folder is None else folder / photo.parent.relative_to(base if base is not None else photo.parent)
    return where / name


def write_sidecar(path: Path, decision: TagDecision, earlier: EarlierTag | None = None, *,
                  like: os.stat_result | None = None, keep_times: bool = False) -> dict:
    """Write (or merge into) the XMP sidecar at ``path``, an ``earlier`` tag of ours taken out in the same write;
    the photo itself is never touched. A changed sidecar gets a new modification time, which is how photo managers
    notice it. Returns what the tag added."""
    existing = _read_photo(path) if os.path.lexists(path) else None
    if existing:
        data, added = _sidecar_with(existing, decision, earlier)
        if data == existing:
            return added
    elif decision.status == "tagged":
        data, added = xmp_sidecar(decision).encode("utf-8"), _everything_added(decision)
    else:
        return {}
    write_user_file(path, data, like=like, keep_times=keep_times)
    return added


def _everything_added(decision: TagDecision) -> dict:
    return {"keywords": decision.keywords, "caption": True, "place_fields": True, "gps": decision.place is not None}


def read_photo(path: str | os.PathLike) -> bytes:
    """A photo file's bytes, refused (ImageError) when it is no regular file or over :data:`MAX_PHOTO_BYTES`."""
    return _read_photo(Path(path))


def _read_photo(path: Path) -> bytes:
    """A file's bytes, only if it is a regular file of a photo's size (a FIFO would hang the read, /dev/zero never
    end it); opened without blocking, checked on the open file."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"{path.name}: not a photo file")
        if info.st_size > MAX_PHOTO_BYTES:
            raise ImageError(f"{path.name}: {info.st_size / 2**20:,.0f} MiB is over the {MAX_PHOTO_BYTES / 2**20:.0f} MiB limit")
        return handle.read(MAX_PHOTO_BYTES + 1)


def tagged_zip(items: list[tuple[str, bytes, TagDecision]], *, sidecars_only: bool = False) -> bytes:
    """A zip of tagged copies (for the app's download of many photos); with ``sidecars_only``, of XMP sidecars
    alone (``NAME.xmp``, to lie beside the originals)."""
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data, decision in items:
            if sidecars_only:
                archive.writestr(name + ".xmp", xmp_sidecar(decision))
                continue
            photo, sidecar = tagged_bytes(data, decision)
            archive.writestr(name, photo)
            if sidecar:
                archive.writestr(name + ".xmp", sidecar)
    return buffer.getvalue()


# --- batch ---------------------------------------------------------------------------------------

#: A photo file larger than this is refused before it is read (the largest phone photos are ~100 MB).
MAX_PHOTO_BYTES = 512 * 2**20


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


def _done_before(report_path: Path) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Files a previous run finished, with their (size, mtime) as recorded (rows that do not parse are redone),
    and which photo each tagged copy belongs to."""
    done, outputs = {}, {}
    if report_path.exists():
        with open(report_path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            for row in csv.DictReader(handle):
                try:
                    # a photo whose tags could not be written, or that could not be read, is tried again (a
                    # folder may be writable now, a permission fixed: chmod leaves size and mtime as they were)
                    retried = row.get("status") == "failed" or row.get("error", "").startswith("cannot read")
                    if row.get("status") in STATUSES and not retried and row.get("file"):
                        done[row["file"]] = (int(row["size"]), int(row["mtime_ns"]))
                        if row.get("output"):
                            outputs[row["output"]] = row["file"]
                except (TypeError, ValueError):
                    continue
    return done, outputs


def report_rows(report_path: Path) -> dict[str, dict]:
    """Each photo's current row of a tag report (the last one: a re-run or a re-tag appends), by file, in the
    order the photos were first handled; rows cut short or not parsing are left out."""
    rows: dict[str, dict] = {}
    if not report_path.is_file():
        return rows
    with open(report_path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        for row in csv.DictReader(handle):
            if row.get("file") and row.get("status") in STATUSES and None not in row:
                rows[row["file"]] = {key: value or "" for key, value in row.items()}
    return rows


def report_counts(rows: Mapping[str, dict]) -> dict[str, int]:
    """Photos per status among a report's current rows."""
    counts = {status: 0 for status in STATUSES}
    for row in rows.values():
        counts[row["status"]] += 1
    return counts


def read_summary(report_path: Path) -> dict:
    """A tag report's summary (``report.json``): counts, thresholds, and (since reviews) the run, the paths and
    where the tags went; {} when there is none."""
    summary = report_path.with_suffix(".json")
    if not _is_our_summary(summary):
        return {}
    return json.loads(summary.read_bytes())


def _unquoted(text: str) -> str:
    """A report cell as it was before :func:`spreadsheet_safe` guarded it."""
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_START) else text


def previous_decision(row: Mapping[str, str]) -> TagDecision | None:
    """The tag a report row says was written, rebuilt from the row (None when the photo got none)."""
    if row.get("status") != "tagged" or not row.get("prediction"):
        return None
    prediction = _unquoted(row["prediction"])
    place = None
    try:
        if row.get("latitude") and row.get("longitude"):
            place = Place(prediction, _unquoted(row.get("landmark", "")) or display_name(prediction),
                          _unquoted(row.get("region", "")), _unquoted(row.get("country", "")),
                          float(row["latitude"]), float(row["longitude"]))
    except ValueError:
        place = None
    return TagDecision("tagged", prediction=prediction, place=place)


def earlier_tag(row: Mapping[str, str] | None) -> EarlierTag | None:
    """The tag a report row says was written, and what it added (None when the photo got none)."""
    decision = previous_decision(row) if row else None
    if decision is None:
        return None
    try:
        added = json.loads(row.get("added") or "null")
    except ValueError:
        added = None
    return EarlierTag(decision, added if isinstance(added, dict) else None)


def _is_our_summary(path: Path) -> bool:
    try:
        summary = json.loads(path.read_bytes()[:1_000_000])
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and {"report", "counts", "meanings"} <= set(summary)


def check_report_path(report_path: Path) -> None:
    """Refuse a ``--report`` that names an existing file that is not a tag report (a photo, notes): appending
    rows to it would destroy it."""
    if report_path.suffix.lower() == ".json":
        raise LandmarkError(f"the report is a CSV file; {report_path.name} would be replaced by its summary "
                            f"({report_path.stem}.json): choose a name ending in .csv")
    summary = report_path.with_suffix(".json")
    if os.path.lexists(summary) and not _is_our_summary(summary):
        raise LandmarkError(f"{summary} exists and is not a tag report's summary; choose another --report")
    if not os.path.lexists(report_path):
        return
    if not report_path.is_file():
        raise LandmarkError(f"the report {report_path} exists and is not a file; choose another --report")
    if report_path.stat().st_size == 0:
        return
    with open(report_path, "rb") as handle:
        first = handle.readline(4096)
    try:
        header = next(csv.reader([first.decode("utf-8")]), [])
    except UnicodeDecodeError:
        header = []
    if not header or "file" not in header or "status" not in header or not set(header) <= set(REPORT_FIELDS):
        raise LandmarkError(f"{report_path} exists and is not a tag report; choose another --report "
                            "(a report is only ever appended to)")


def _report_fields(report_path: Path) -> list[str]:
    """The columns of an existing report (an older version may have fewer), or today's for a new one."""
    if report_path.exists() and report_path.stat().st_size:
        with open(report_path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
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
    size: int = 0
    mtime_ns: int = 0
    square: object = None  # uint8 S x S x 3, as Predictor.decode gives it; dropped once classified
    gps: tuple[float, float] | None = None
    gps_problem: str = ""
    error: str | None = None
    assessment: object = None
    output: str = ""
    added: dict | None = None  # what the tag written added to the file (see EarlierTag)


def _decode_one(predictor, entry: WalkEntry) -> _Decoded:
    """Read, decode and look for GPS in one file (a worker thread: Pillow and torch release the GIL)."""
    item = _Decoded(entry.path, entry.base, error=entry.error)
    if item.error is not None:
        return item
    try:
        info = entry.path.stat()
        item.size, item.mtime_ns = info.st_size, info.st_mtime_ns
        data = _read_photo(entry.path)
        with warnings.catch_warnings():  # Pillow's multi-line "Corrupt EXIF data": this row's business only
            warnings.simplefilter("ignore")
            item.square = predictor.decode(data)
            item.gps, item.gps_problem = read_gps_checked(data)
    except ImageError as error:
        item.error = str(error)
    except OSError as error:  # vanished, unreadable: this photo's row, not the run's end
        item.error = f"cannot read it ({error.strerror or error})"
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
                and (redo is None or _key(entry.path) in redo))

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
        is_jpeg = open_image(_read_photo(copy)).format == "JPEG"
    except (ImageError, OSError):
        is_jpeg = True  # not knowing, leave any sidecar beside it alone
    if not is_jpeg and sidecar_path_of(copy).is_file():
        sidecar_path_of(copy).unlink()
    copy.unlink()


def _tag_locked(predictor, files, report_path: Path, counts: dict, stop: threading.Event, *, threshold,
                where: _Destination, overwrite_gps, open_set, progress, workers, batch_size, count_first,
                redo: set[str] | None, verdicts: Mapping[str, tuple[str, str | None]]) -> None:
    _repair_torn_tail(report_path)
    done, outputs = _done_before(report_path)
    earlier_rows = {file: row for file, row in report_rows(report_path).items() if file in redo} if redo else {}
    total = sum(1 for _ in files()) if count_first else None  # a walk: cheap next to decoding
    fields = _report_fields(report_path)
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
                    if redo is None and done.get(_key(entry.path)) == (info.st_size, info.st_mtime_ns):
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
        batches = _batches(pending(), batch_size)
        while True:
            while len(window) <= workers and (batch := next(batches, None)) is not None:
                window.append([pool.submit(_decode_one, predictor, entry) for entry in batch])
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
                writer.writerow(_report_row(item, decision))
                handle.flush()  # row by row: a kill loses at most the photo being written
                counts[decision.status] += 1
                counts["tagged_without_place"] += decision.status == "tagged" and decision.place is None
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


def _key(path: Path) -> str:
    """A file's name in the report: its real path (links resolved; never raises on loops)."""
    return os.path.realpath(path)


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


def reviewed_decision(decision: TagDecision, verdict: str, class_name: str | None, predictor) -> TagDecision:
    """A reviewer's ``verdict`` ("confirmed", "corrected": the photo shows ``class_name``; None: not a landmark)
    over the model's ``decision``, which goes into the note so the report still shows what the model thinks."""
    model_view = f"the model says {decision.name} ({decision.probability:.2f})" if decision.prediction else ""
    if class_name is None:
        return replace(decision, status="unknown", review_note="; ".join(filter(None, ["not a landmark (reviewed)",
                                                                                      model_view])))
    place = (predictor.places.get(class_name) if class_name in predictor.classes
             else gazetteer(predictor.run.dataset).place_for(class_name))
    return replace(decision, status="tagged", prediction=class_name, place=place,
                   probability=decision.probability if class_name == decision.prediction else None,
                   review_note="; ".join(filter(None, [f"{verdict} by review", model_view])))


#: Writing errors after which every later photo would fail the same way: the run stops, saying why.
_FATAL_WRITE_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)


def _decide_and_write(predictor, item: _Decoded, *, threshold, overwrite_gps, open_set, where: _Destination,
                      outputs: dict[str, str], verdicts: Mapping[str, tuple[str, str | None]],
                      earlier_rows: Mapping[str, dict]) -> TagDecision:
    """The decision for one classified photo, and its tags written: a tagged copy, the original tagged in place, or
    its sidecar. A photo tagged before by this report (a re-tag, ``earlier_rows``) loses that tag in the same write
    that gives it the new one (or in a write of its own when it gets none): never both, never neither."""
    if item.error is not None:
        return TagDecision("unreadable", error=item.error)
    source = _key(item.path)
    earlier_row = earlier_rows.get(source)
    earlier = earlier_tag(earlier_row)
    gps = item.gps
    if earlier is not None and where.in_place and _same_position(gps, earlier.decision.place):
        gps = None  # the position in the photo is the one our earlier tag wrote
    decision = decide_for(predictor, None, threshold=threshold, existing_gps=gps, overwrite_gps=overwrite_gps,
                          open_set=open_set, assessment=item.assessment)
    if item.gps_problem:
        decision = replace(decision, gps_note=item.gps_problem)
    if source in verdicts and decision.status != "has_gps":
        decision = reviewed_decision(decision, *verdicts[source], predictor)
    if where.sidecars:
        return _write_sidecar_of(item, decision, source, where, outputs, overwrite_gps=overwrite_gps, earlier=earlier)
    if decision.status != "tagged" and earlier is None:
        return decision
    in_place, out_dir = where.in_place, where.out_dir
    if in_place:
        destination = item.path
    else:
        if decision.status != "tagged":
            failure = _failure_of(decision, out_dir, lambda: _remove_stale_copy(earlier_row, where))
            return failure or decision
        wanted = out_dir / item.path.relative_to(item.base)
        if os.path.realpath(wanted) == source or _same_file(wanted, item.path):
            raise LandmarkError(f"--out {out_dir} would overwrite the originals in it; choose another "
                                "folder (or --overwrite to tag the originals on purpose)")
        destination = _free_destination(wanted, source, outputs)
    written: dict = {}
    failure = _failure_of(decision, destination, lambda: written.update(added=write_tagged(
        _read_photo(item.path), destination, decision, like=None if in_place else os.stat(item.path),
        earlier=earlier)))  # in the photo tagged in place, or in a copy's sidecar (a copy is made anew otherwise)
    if failure is not None:
        return failure
    if in_place:  # the file changed: record its new identity so a re-run skips it
        info = item.path.stat()
        item.size, item.mtime_ns = info.st_size, info.st_mtime_ns
    if decision.status == "tagged":
        item.output, item.added = os.path.realpath(destination), written.get("added") or {}
    return decision


def _write_sidecar_of(item: _Decoded, decision: TagDecision, source: str, where: _Destination,
                      outputs: dict[str, str], *, overwrite_gps: bool, earlier: EarlierTag | None) -> TagDecision:
    destination = sidecar_path_of(item.path, where.sidecar_naming, item.base, where.sidecar_dir)
    owner = outputs.setdefault(os.path.realpath(destination), source)
    if owner != source:  # photo.jpg and photo.png in one folder share photo.xmp
        return replace(decision, status="failed", error=f"{destination.name} is the sidecar of {Path(owner).name} "
                       "already (--sidecar-name ext names each photo's own)")
    if decision.status == "tagged" and not overwrite_gps and os.path.lexists(destination):
        try:  # a position the user set in the sidecar stays (the one our earlier tag wrote does not count)
            existing = xmp_gps(_read_photo(destination))
        except (OSError, ImageError):
            existing = None
        if existing is not None and not (earlier is not None and _same_position(existing, earlier.decision.place)):
            decision = replace(decision, status="has_gps", existing_gps=existing)
    if decision.status != "tagged" and earlier is None:
        return decision
    written: dict = {}
    failure = _failure_of(decision, destination,
                          lambda: written.update(added=write_sidecar(destination, decision, earlier)))
    if failure is not None:
        return failure
    if decision.status == "tagged":
        item.output, item.added = os.path.realpath(destination), written.get("added") or {}
    return decision


def _failure_of(decision: TagDecision, destination: Path, write: Callable[[], object]) -> TagDecision | None:
    """Run ``write``: None when it wrote, else the photo's "failed" decision with the reason (exiv2 refuses its
    metadata, a folder it may not write to); the photo is left as it was. A full or read-only disk stops the run."""
    try:
        write()
    except ImageError as error:
        return replace(decision, status="failed", error=str(error))
    except OSError as error:
        if error.errno in _FATAL_WRITE_ERRORS:
            raise LandmarkError(f"cannot write {destination}: {error.strerror or error}") from None
        return replace(decision, status="failed", error=f"cannot write {destination}: {error.strerror or error}")
    return None


#: Report columns that hold text from names and places (class folders, places.csv, file names): a spreadsheet
#: runs a cell that starts with = + - @ (or a tab or carriage return) as a formula.
_TEXT_FIELDS = ("prediction", "landmark", "region", "country", "note", "error")  # file, output: absolute paths
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """``text`` as a CSV cell no spreadsheet runs (OWASP's advice: a leading quote) and without control
    characters."""
    text = strip_control_characters(text)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _report_row(item: _Decoded, decision: TagDecision) -> dict:
    place = decision.place
    row = {"file": _key(item.path), "size": item.size, "mtime_ns": item.mtime_ns,  # absolute, like output
           "output": item.output, "status": decision.status, "prediction": decision.prediction or "",
           "probability": f"{decision.probability:.4f}" if decision.probability is not None else "",
           "familiarity": f"{decision.familiarity:.4f}" if decision.familiarity is not None else "",
           "landmark": decision.name if decision.prediction else "", "region": place.region if place else "",
           "country": place.country if place else "", "latitude": place.latitude if place else "",
           "longitude": place.longitude if place else "", "note": decision.note, "error": decision.error or "",
           "added": json.dumps(item.added, ensure_ascii=False) if item.added is not None else ""}
    return row | {field: spreadsheet_safe(row[field]) for field in _TEXT_FIELDS}
