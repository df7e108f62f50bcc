"""Where each landmark class is: display name, region, country and coordinates.

Read from ``resources/landmarks.csv`` (the 50 classes of ``landmark_images``,
keyed by folder name). A user's own class matches by folder name, or by the name
without its ``NN.`` prefix; anything else simply has no place.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


@dataclass(frozen=True)
class Place:
    folder: str
    display_name: str
    region: str
    country: str
    latitude: float
    longitude: float

    @property
    def label(self) -> str:
        return f"{self.display_name}, {self.region}, {self.country}"


def _key(name: str) -> str:
    return re.sub(r"^\d+\.", "", name).lower()


@lru_cache(maxsize=1)
def _places() -> dict[str, Place]:
    text = resources.files("landmark_core").joinpath("resources/landmarks.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(text.splitlines())
    places = {}
    for row in rows:
        place = Place(row["folder"], row["display_name"], row["region"], row["country"],
                      float(row["latitude"]), float(row["longitude"]))
        places[_key(place.folder)] = place
    return places


def place_for(class_name: str) -> Place | None:
    return _places().get(_key(class_name))


def all_places() -> list[Place]:
    return sorted(_places().values(), key=lambda p: p.folder)


def display_name(class_name: str) -> str:
    """A readable name: the landmark's display name, or the folder name without prefix and underscores."""
    place = place_for(class_name)
    return place.display_name if place else re.sub(r"^\d+\.", "", class_name).replace("_", " ")
