"""The place picker's offline towns: search by name, the nearest towns to a point, and places.csv written from
them (library, `landmark places --towns/--near/--set`, and the Explore page)."""
import csv
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from landmark_core.core.errors import DataError
from landmark_core.geo.places import gazetteer, place_for
from landmark_core.geo.towns import (country_name, map_points, nearest_towns, place_at, search_towns, set_place,
                                     towns, towns_around)
from helpers import landmark, one_line_error
from helpers import kilometres

ROOT = Path(__file__).resolve().parents[1]


def test_a_town_search_ignores_case_and_accents_and_puts_the_name_itself_first():
    assert len(towns()) > 100_000
    london = search_towns("london")[0]
    assert (london.name, london.country) == ("London", "United Kingdom")  # before London, Ontario
    assert search_towns("Zürich")[0].description == "Zurich, Zurich, Switzerland"
    agra = next(town for town in search_towns("Agra") if town.country_code == "IN")
    assert kilometres((agra.latitude, agra.longitude), (27.1751, 78.0421)) < 10  # the Taj Mahal's town
    assert all("agra" in town.name.lower() for town in search_towns("Agra"))
    assert search_towns("a") == []
    assert search_towns("") == []
    assert search_towns("qqxqqz") == []


def test_the_nearest_towns_come_nearest_first_with_distances_also_across_the_date_line():
    taj_mahal = place_for("Taj Mahal")
    (first, distance), *rest = nearest_towns(taj_mahal.latitude, taj_mahal.longitude, 5)
    assert first.name == "Agra"
    assert distance < 5
    assert [d for _, d in rest] == sorted(d for _, d in rest)
    assert all(d >= distance for _, d in rest)
    east, west = nearest_towns(-16.5, 179.999, 3), nearest_towns(-16.5, -179.999, 3)  # Fiji, both sides of 180°
    assert [t for t, _ in east] == [t for t, _ in west]
    assert all(t.country_code == "FJ" for t, _ in east)
    assert nearest_towns(-16.5, 180.001, 1)[0][0] == west[0][0]  # past 180°, as a map across the date line gives it
    with pytest.raises(DataError, match="is not a position"):
        nearest_towns(91, 0)
    with pytest.raises(DataError, match="is not a position"):
        nearest_towns(0, float("nan"))


def test_towns_around_a_click_fill_a_square_window_nearest_first_also_across_the_date_line():
    around = towns_around(43.34, 17.81, degrees=1.0)
    assert around[0]["town"] == "Mostar"
    assert len(around) > 20
    assert all(abs(t["latitude"] - 43.34) <= 1.0 for t in around)
    fiji = towns_around(-16.5, 179.9, degrees=3.0)
    assert fiji
    assert all(170 < t["longitude"] < 190 for t in fiji)  # unwrapped: one side of the map


def test_map_points_cover_the_world_with_one_town_per_square():
    points = map_points(2.0)
    cells = {(int(p["latitude"] // 2), int(p["longitude"] // 2)) for p in points}
    assert len(cells) == len(points)
    assert 2_000 < len(points) < 10_000  # the browser draws every one
    assert {p["country"] for p in points} >= {"IN", "PE", "JO", "AU", "US", "FJ"}


def test_a_place_from_a_town_goes_into_places_csv_and_replaces_only_its_class(tmp_path):
    (tmp_path / "places.csv").write_text("folder,display_name,region,country,latitude,longitude\n"
                                         "Old_Bridge,Stari Most,Mostar,Bosnia,43.3373,17.8150\n"
                                         "Petra_Jordan,wrong,nowhere,Nowhere,0,0\n", encoding="utf-8")
    petra = next(town for town in search_towns("Petra") if town.country_code == "JO")
    set_place(tmp_path, place_at("Petra_Jordan", petra, "Petra", 30.3285, 35.4444))
    places = gazetteer(tmp_path)
    assert places.place_for("Petra_Jordan").region == "Petra, Ma'an"
    assert places.place_for("Petra_Jordan").country == "Jordan" == country_name("jo")
    assert (places.place_for("Petra_Jordan").latitude, places.place_for("Petra_Jordan").longitude) == (30.3285, 35.4444)
    assert places.place_for("Old_Bridge").display_name == "Stari Most"  # the other row stays as it was
    rows = list(csv.DictReader(open(tmp_path / "places.csv", encoding="utf-8")))
    assert [row["folder"] for row in rows] == ["Old_Bridge", "Petra_Jordan"]
    assert country_name("QQ") == "QQ"  # a code nobody lists is shown as it is
    assert (country_name("RU"), country_name("XK"), country_name("IR")) == ("Russia", "Kosovo", "Iran")


def test_landmark_places_searches_towns_and_sets_a_class_place_from_a_position(tmp_path):
    found = landmark("places", "--towns", "Cusco")
    assert found.returncode == 0
    assert "Cusco" in found.stdout.splitlines()[0]
    assert "Peru" in found.stdout
    near = landmark("places", "--near", "30.3285,35.4444")
    assert near.stdout.splitlines()[0].endswith("Petra, Ma'an, Jordan")
    data = tmp_path / "data"
    (data / "Petra_Jordan").mkdir(parents=True)
    done = landmark("places", "--set", "Petra_Jordan", "--at", "30.3285,35.4444", "--display-name", "Petra",
                    "--data", data)
    assert done.returncode == 0, done.stderr
    place = gazetteer(data).place_for("Petra_Jordan")
    assert (place.display_name, place.country, place.latitude) == ("Petra", "Jordan", 30.3285)
    assert "LAT,LON" in one_line_error(landmark("places", "--near", "thirty,35"))
    assert "is not a position" in one_line_error(landmark("places", "--near", "95,35"))
    assert "needs --at" in one_line_error(landmark("places", "--set", "Petra_Jordan", "--data", data))
    assert landmark("places", "--towns", "qqxqqz").returncode == 1


def test_explore_picker_finds_a_town_by_name_and_sets_the_class_place(dataset_without_places, tmp_path, monkeypatch):
    monkeypatch.setenv("LANDMARK_ARTIFACTS", str(tmp_path / "artifacts"))
    at = AppTest.from_file(str(ROOT / "pages" / "explore.py"), default_timeout=120)
    at.session_state["dataset_path"] = str(dataset_without_places)
    at.run()
    assert at.selectbox(key="place_class").options[:2] == ["Old Town Bridge (no place yet)", "Rose Red City (no place yet)"]
    at.text_input(key="place_query").input("Mostar").run()
    assert at.selectbox(key="place_choice").value.name == "Mostar"
    at.button(key="set_place").click().run()
    assert not at.exception
    assert not at.error
    place = gazetteer(dataset_without_places).place_for("Old_Town_Bridge")
    assert (place.display_name, place.region, place.country) == ("Old Town Bridge", "Mostar, Federation of Bosnia and "
                                                                 "Herzegovina", "Bosnia and Herzegovina")
    assert at.selectbox(key="place_class").options[0] == "Rose Red City (no place yet)"  # the editor re-read the file
    assert at.selectbox(key="place_class").value == "Rose_Red_City"  # on to the next class without a place
    assert at.text_input(key="place_query").value == ""
    at.text_input(key="place_query").input("Petra").run()  # a known landmark comes before the towns of that name
    choice = at.selectbox(key="place_choice")
    assert choice.options[0].startswith("🏛 Petra")
    assert choice.options[1].startswith("Petra,")
    at.button(key="set_place").click().run()
    place = gazetteer(dataset_without_places).place_for("Rose_Red_City")
    assert (place.country, place.latitude) == ("Jordan", place_for("Petra").latitude)
