"""Where each landmark class is: display name, region, country and coordinates.

Built in: ``resources/landmarks.csv``: the 50 classes of ``landmark_images``, the New 7 Wonders and other
world-famous landmarks (its ``country_code`` column is for the test that checks every position against an
offline reverse geocoder).
A dataset may add a ``places.csv`` of its own in its root folder (same columns;
``folder`` is the class folder name) that overrides and extends the built-in
places. Class names match after normalising case, ``NN.`` numbering prefixes,
underscores, hyphens and spaces, against a place's folder name and its display
name: ``Taj Mahal``, ``21.Taj_Mahal`` and ``taj_mahal`` are the same place.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import unicodedata
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping

from ..core.errors import DataError
from ..core.fileio import write_bytes_atomic

PLACES_FILE = "places.csv"
COLUMNS = ["folder", "display_name", "region", "country", "latitude", "longitude"]


@dataclass(frozen=True)
class Place:
    folder: str
    display_name: str
    region: str
    country: str
    latitude: float
    longitude: float

    @property
    def description(self) -> str:
        return ", ".join(part for part in (self.display_name, self.region, self.country) if part)


def normalise(name: str, strip_number: bool = True) -> str:
    """The matching key of a class or place name: ``21.Taj_Mahal`` -> ``taj mahal``, ``Zürich`` -> ``zurich``.

    ``strip_number=False`` keeps a leading number that may be part of the name (``10_Downing_Street``).
    """
    # accents dropped too: "Haleakala" finds "Haleakalā"
    name = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c)).strip().lower()
    if strip_number:
        name = re.sub(r"^\d+\s*[._\-)]\s*", "", name)  # numbering prefix: "21.", "07-", "3)"
    name = re.sub(r"[\s_\-]+", " ", name).strip()
    return re.sub(r"^the ", "", name)  # "The Great Wall Of China" is the Great Wall of China


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def strip_control_characters(text: str) -> str:
    """``text`` without control characters (tabs and newlines included): they make XMP ill-formed XML and have
    no place in a name, a caption or a keyword."""
    return _CONTROL_CHARACTERS.sub("", text)


def _field(row: Mapping[str, str], column: str) -> str:
    return strip_control_characters(row.get(column) or "").strip()


def _place_from_row(row: Mapping[str, str], where: str) -> Place:
    folder = _field(row, "folder")
    if not folder:
        raise DataError(f"{where}: the folder (class name) is empty")
    try:
        latitude, longitude = float(row.get("latitude") or "nan"), float(row.get("longitude") or "nan")
    except ValueError:
        raise DataError(f"{where} ({folder}): latitude and longitude must be numbers") from None
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):  # NaN fails both: a place needs coordinates
        raise DataError(f"{where} ({folder}): latitude must be in [-90, 90] and longitude in [-180, 180]")
    display = _field(row, "display_name") or display_name_of_folder(folder)
    return Place(folder, display, _field(row, "region"), _field(row, "country"), latitude, longitude)


def parse_places(text: str, where: str = PLACES_FILE) -> list[Place]:
    """Places from CSV text; a clear DataError for a missing column or a bad row."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    missing = [c for c in ("folder", "latitude", "longitude") if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{where} needs the columns {', '.join(COLUMNS)} (missing: {', '.join(missing)})")
    return [_place_from_row(row, f"{where} line {number}") for number, row in enumerate(reader, start=2)
            if any((value or "").strip() for value in row.values() if isinstance(value, str))]


@lru_cache(maxsize=1)
def builtin_places() -> tuple[Place, ...]:
    text = resources.files("landmark_core").joinpath("resources/landmarks.csv").read_text(encoding="utf-8")
    return tuple(parse_places(text, "resources/landmarks.csv"))


class Gazetteer:
    """Places looked up by class name; later sources override earlier ones."""

    def __init__(self, places: Iterable[Place] = ()):
        self._by_folder: dict[str, Place | None] = {}
        self._by_display_name: dict[str, Place | None] = {}  # a second key: "Taj Mahal" finds "21.Taj_Mahal"
        self._by_compact: dict[str, Place | None] = {}  # a last resort without spaces: "Halong Bay", "Ha Long Bay"
        stripped_owner: dict[str, str] = {}
        for place in places:
            for name in (place.folder, place.display_name):
                self._by_compact[_compact(name, strip_number=False)] = place
            for strip in (False, True):
                for index, name in ((self._by_folder, place.folder), (self._by_display_name, place.display_name)):
                    key = normalise(name, strip)
                    index[key] = place
                    if strip:  # "10 Downing St" and "11 Downing St" both strip to "downing st": neither may claim it
                        folder = normalise(place.folder, strip_number=False)
                        owner = stripped_owner.setdefault(key, folder)
                        if owner != folder and key != normalise(name, False):
                            index[key] = None

    def place_for(self, class_name: str) -> Place | None:
        # the whole name first ("10 Downing Street"), then without a numbering prefix ("21.Taj_Mahal")
        for key in (normalise(class_name, strip_number=False), normalise(class_name)):
            place = self._by_folder.get(key) or self._by_display_name.get(key)
            if place:
                return place
        # without spaces, the numbers kept in the index: "12 Downing St" never finds 10 or 11 Downing St
        for key in (_compact(class_name, strip_number=False), _compact(class_name)):
            if key in self._by_compact:
                return self._by_compact[key]
        return None

    def for_classes(self, classes: Iterable[str]) -> dict[str, Place | None]:
        return {name: self.place_for(name) for name in classes}


def _compact(name: str, strip_number: bool = True) -> str:
    return normalise(name, strip_number).replace(" ", "")


def dataset_places_file(dataset_root: str | Path) -> Path:
    return Path(dataset_root) / PLACES_FILE


def read_places_text(path: Path) -> str:
    """A places file's text: UTF-8 (with or without a byte-order mark), else Windows-1252 as spreadsheets on
    Windows save CSV, else Latin-1 (which decodes any bytes): one reading for training, tagging and the app."""
    data = path.read_bytes()
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def gazetteer(dataset_root: str | Path | None = None) -> Gazetteer:
    """Built-in places, overridden and extended by ``dataset_root/places.csv`` when there is one."""
    places = list(builtin_places())
    if dataset_root is not None:
        path = dataset_places_file(dataset_root)
        if path.is_file():
            places += parse_places(read_places_text(path), str(path))
    return Gazetteer(places)


def save_places(dataset_root: str | Path, places: Iterable[Place]) -> Path:
    """Write ``places.csv`` (validated, atomically) in the dataset's root."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for place in places:
        if not (math.isfinite(place.latitude) and math.isfinite(place.longitude)):
            raise DataError(f"{place.folder}: latitude and longitude must be numbers")
        writer.writerow(asdict(place))
    parse_places(buffer.getvalue())  # the same checks as reading it back
    path = dataset_places_file(dataset_root)
    write_bytes_atomic(path, buffer.getvalue().encode("utf-8"))
    return path


def place_for(class_name: str) -> Place | None:
    """The built-in place of a class (see :func:`gazetteer` for a dataset's own places)."""
    return _builtin_gazetteer().place_for(class_name)


@lru_cache(maxsize=1)
def _builtin_gazetteer() -> Gazetteer:
    return Gazetteer(builtin_places())


def all_places() -> list[Place]:
    return sorted(builtin_places(), key=lambda p: p.folder)


def places_matching(query: str | None, dataset_root: str | Path | None = None) -> list[Place]:
    """The place a class name or landmark name means (``Taj Mahal``, ``21.Taj_Mahal``, ``The Roman Colosseum``),
    else every place whose name contains the query; all places (built in, then the dataset's) without one."""
    places = list(builtin_places())
    if dataset_root is not None and dataset_places_file(dataset_root).is_file():
        path = dataset_places_file(dataset_root)
        places += parse_places(read_places_text(path), str(path))
    if not query:
        return sorted({place.folder: place for place in places}.values(), key=lambda p: normalise(p.display_name))
    exact = Gazetteer(places).place_for(query)
    if exact is not None:
        return [exact]
    key = normalise(query)
    return sorted({p.folder: p for p in places if key in normalise(p.display_name) or key in normalise(p.folder)}.values(),
                  key=lambda p: normalise(p.display_name))


def display_name_of_folder(class_name: str) -> str:
    """``21.Taj_Mahal`` -> ``Taj Mahal``; a number without the course's ``NN.`` prefix stays (``10 Downing Street``)."""
    return re.sub(r"^\d+\.", "", class_name).replace("_", " ").strip()


def display_name(class_name: str, place: Place | None = None) -> str:
    """A readable name: the landmark's display name, or the folder name without prefix and underscores."""
    place = place or place_for(class_name)
    return place.display_name if place else display_name_of_folder(class_name)


def places_table(classes: Iterable[str], dataset_root: str | Path | None = None) -> list[dict]:
    """One row per class with its place's fields (empty where it has none), for an editable table."""
    places = gazetteer(dataset_root)
    rows = []
    for name in classes:
        place = places.place_for(name)
        rows.append({"folder": name, "display_name": place.display_name if place else display_name_of_folder(name),
                     "region": place.region if place else "", "country": place.country if place else "",
                     "latitude": place.latitude if place else None, "longitude": place.longitude if place else None})
    return rows


def places_from_table(rows: Iterable[Mapping]) -> list[Place]:
    """The places of an edited table: rows without both coordinates are left out; bad values raise DataError."""
    places = []
    for number, row in enumerate(rows, start=1):
        latitude, longitude = row.get("latitude"), row.get("longitude")
        if latitude is None or longitude is None or (isinstance(latitude, float) and math.isnan(latitude)) \
                or (isinstance(longitude, float) and math.isnan(longitude)):
            continue
        places.append(_place_from_row({key: "" if value is None else str(value) for key, value in row.items()},
                                      f"row {number}"))
    return places


@lru_cache(maxsize=1)
def world_land() -> dict:
    """The world's land outline as TopoJSON (object ``land``): Natural Earth 1:110m from world-atlas 2.0.2
    (ISC licence, ``resources/land-110m.LICENSE``; Natural Earth is public domain). Shipped with the package, so
    maps draw without tiles or anything else from the internet."""
    return json.loads(resources.files("landmark_core").joinpath("resources/land-110m.json").read_text())
