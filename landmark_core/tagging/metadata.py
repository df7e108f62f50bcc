"""A photo's metadata as tags: GPS read from EXIF and XMP, and the EXIF, IPTC and XMP fields a
decision becomes (merged with what the photo holds, and an earlier tag of ours taken back out)."""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import pyexiv2
from PIL import ExifTags

from ..core.errors import ImageError
from ..core.images import open_image, read_photo
from ..geo.places import Place, strip_control_characters
from .decision import TagDecision

pyexiv2.set_log_level(4)  # exiv2's warnings about odd but readable files would go to stderr otherwise

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
                position = xmp_position(image.read_xmp())
    except EXIV2_ERRORS:
        return None
    if position is None:
        return None
    latitude, longitude = position
    valid = math.isfinite(latitude) and math.isfinite(longitude) and abs(latitude) <= 90 and abs(longitude) <= 180
    return (latitude, longitude) if valid else None


def _embedded_xmp_gps(source) -> tuple[float, float] | None:
    """A position in the XMP packet of a photo given as bytes or a path (only parsed when one may be there)."""
    if isinstance(source, (str, os.PathLike)):
        source = read_photo(Path(source))
    if not isinstance(source, (bytes, bytearray)) or b"GPSLatitude" not in source:
        return None
    return xmp_gps(bytes(source))


def read_gps(source) -> tuple[float, float] | None:
    """(latitude, longitude) from a photo's EXIF, or None (also when what is there is no valid position)."""
    return read_gps_checked(source)[0]


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


def metadata_fields(decision: TagDecision) -> tuple[dict, dict, dict]:
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
EXIV2_ERRORS = (RuntimeError, UnicodeError, ValueError)

#: Fields that hold a list of keywords: ours are added to the user's, once.
KEYWORD_FIELDS = ("Exif.Image.XPKeywords", "Iptc.Application2.Keywords", "Xmp.dc.subject")
#: Fields that hold a caption: the user's is kept, and ours added after it, once.
CAPTION_FIELDS = ("Exif.Image.ImageDescription", "Iptc.Application2.Caption", "Xmp.dc.description")
CAPTION_JOIN = " · "


def _clean(text) -> str:
    return strip_control_characters(str(text)).strip()  # Windows ends XPKeywords with a NUL


def as_list(value) -> list[str]:
    if value is None:
        return []
    parts = value.split(";") if isinstance(value, str) else value
    return [_clean(part) for part in parts if _clean(part)]


def as_text(value) -> str:
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
    for key in KEYWORD_FIELDS:
        if key in fields:
            theirs = as_list(existing.get(key))
            combined = list(dict.fromkeys(theirs + [k for k in as_list(fields[key]) if k not in theirs]))
            merged[key] = ";".join(combined) if key == "Exif.Image.XPKeywords" else combined
    for key in CAPTION_FIELDS:
        if key in fields:
            ours, theirs = as_text(fields[key]), as_text(existing.get(key))
            text = theirs if (not ours or ours in theirs.split(CAPTION_JOIN)) else (
                f"{theirs}{CAPTION_JOIN}{ours}" if theirs else ours)
            if key == "Xmp.dc.description":  # the caption in other languages stays as the user wrote it
                theirs_by_language = existing.get(key) if isinstance(existing.get(key), dict) else {}
                merged[key] = {**theirs_by_language, _DEFAULT_LANGUAGE: text}
            else:
                merged[key] = text
    return merged


#: Place fields we write with a tag: taken out again only where they still hold our value.
PLACE_FIELDS = ("Iptc.Application2.City", "Iptc.Application2.CountryName", "Xmp.photoshop.City",
                 "Xmp.photoshop.Country")


@dataclass(frozen=True)
class EarlierTag:
    """A tag written before (rebuilt from its report row) and what it added to the file: the keywords that were
    not there, whether the caption, the city and country and the position were ours. ``added`` is None for a row
    of a report that did not record it: then every field that holds our value is taken as ours."""
    decision: TagDecision
    added: dict | None = None


def same_position(position, place: Place | None) -> bool:
    return place is not None and position is not None and abs(position[0] - place.latitude) < 1e-4 \
        and abs(position[1] - place.longitude) < 1e-4


def exif_position(exif: dict) -> tuple[float, float] | None:
    try:
        def degrees(key):
            parts = [Fraction(part) for part in str(exif[f"Exif.GPSInfo.GPS{key}"]).split()]
            return _to_degrees(parts, exif.get(f"Exif.GPSInfo.GPS{key}Ref", "N"))
        return degrees("Latitude"), degrees("Longitude")
    except (KeyError, ValueError, ZeroDivisionError, TypeError):
        return None


def xmp_position(xmp: dict) -> tuple[float, float] | None:
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
    exif, iptc, xmp = metadata_fields(previous)
    ours, changes = exif | iptc | xmp, {}
    ours_keywords = set(added.get("keywords", []) if added is not None else previous.keywords)
    for key in KEYWORD_FIELDS:
        if key in existing:
            theirs = [k for k in as_list(existing[key]) if k not in ours_keywords]
            changes[key] = (";".join(theirs) if key == "Exif.Image.XPKeywords" else theirs) or None
    if added is None or added.get("caption"):
        for key in CAPTION_FIELDS:
            if key in existing:
                parts = [part for part in as_text(existing[key]).split(CAPTION_JOIN)
                         if part and part != previous.description]
                text = CAPTION_JOIN.join(parts)
                if key == "Xmp.dc.description" and isinstance(existing[key], dict):
                    others = {k: v for k, v in existing[key].items() if k != _DEFAULT_LANGUAGE}
                    changes[key] = ({**others, _DEFAULT_LANGUAGE: text} if text else others) or None
                else:
                    changes[key] = text or None
    if added is None or added.get("place_fields"):
        for key in PLACE_FIELDS:
            if key in existing and as_text(existing[key]) == as_text(ours.get(key)):
                changes[key] = None
    if position_is_ours:
        changes.update({key: None for key in existing if key.startswith(("Exif.GPSInfo.", "Xmp.exif.GPS"))})
    return {key: value for key, value in changes.items() if key in existing}
