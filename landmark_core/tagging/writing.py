"""Writing tags into photos.

JPEGs get the tags in their metadata segments through exiv2 (``pyexiv2``), so the compressed pixels are never
re-encoded: EXIF GPS, ImageDescription and XPKeywords; IPTC Keywords, City and Country; XMP ``dc:subject`` /
``dc:description`` / ``photoshop:City``/``Country`` and GPS, which photo managers (digiKam, Lightroom,
darktable, Apple Photos) read. Other formats are copied byte for byte with an XMP sidecar (``photo.png.xmp``)
carrying the same fields. Originals are only changed with ``in_place=True``; every write is atomic.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pyexiv2

from ..core.errors import ImageError
from ..core.fileio import write_user_file
from ..core.images import open_image, read_photo
from .decision import TagDecision, TagStatus
from .metadata import (CAPTION_FIELDS, CAPTION_JOIN, EXIV2_ERRORS, KEYWORD_FIELDS, PLACE_FIELDS, EarlierTag, as_list,
                       as_text, exif_position, merged_fields, metadata_fields, retracted_fields, same_position,
                       xmp_position)


def _views(image):
    """exiv2's three views of a file's metadata as (read, modify), XMP last: it reads a sidecar's XMP into EXIF and
    IPTC views too and writes those back into its XMP on every change, so a field is gone only once it is gone
    from all three."""
    return ((image.read_exif, image.modify_exif), (image.read_iptc, image.modify_iptc),
            (image.read_xmp, image.modify_xmp))


def _retract_from(image, earlier: EarlierTag) -> None:
    place = earlier.decision.place
    ours_written = earlier.added is None or earlier.added.get("gps")
    position_is_ours = bool(ours_written) and (same_position(exif_position(image.read_exif()), place)
                                               or same_position(xmp_position(image.read_xmp()), place))
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
    if decision.status != TagStatus.TAGGED:
        return {}
    there = {view: read() for view, (read, _) in zip(("exif", "iptc", "xmp"), _views(image))}
    fields = there["exif"] | there["iptc"] | there["xmp"]
    keywords_there = {k for key in KEYWORD_FIELDS for k in as_list(fields.get(key))}
    added = {"keywords": [k for k in decision.keywords if k not in keywords_there],
             "caption": not any(decision.description in as_text(fields.get(key)).split(CAPTION_JOIN)
                                for key in CAPTION_FIELDS),
             "place_fields": not any(as_text(fields.get(key)) for key in PLACE_FIELDS),
             "gps": decision.place is not None}
    exif, iptc, xmp = metadata_fields(decision)
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
    except EXIV2_ERRORS as error:  # exiv2 refuses metadata it cannot parse: never write a half-tagged file
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
    except EXIV2_ERRORS as error:
        raise ImageError(f"cannot merge the tags into the existing XMP sidecar ({error})") from None


def xmp_sidecar(decision: TagDecision) -> str:
    exif, iptc, xmp = metadata_fields(decision)
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
    existing = read_photo(path) if os.path.lexists(path) else None
    if existing:
        data, added = _sidecar_with(existing, decision, earlier)
        if data == existing:
            return added
    elif decision.status == TagStatus.TAGGED:
        data, added = xmp_sidecar(decision).encode("utf-8"), _everything_added(decision)
    else:
        return {}
    write_user_file(path, data, like=like, keep_times=keep_times)
    return added


def _everything_added(decision: TagDecision) -> dict:
    return {"keywords": decision.keywords, "caption": True, "place_fields": True, "gps": decision.place is not None}


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
