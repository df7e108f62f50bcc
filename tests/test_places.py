"""Places for any class: name normalisation, a dataset's places.csv, and tags with coordinates for user classes."""
import csv
import shutil

import pytest

from landmark_core.errors import DataError
from landmark_core.places import (Place, gazetteer, normalise, parse_places, place_for, places_from_table,
                                  places_table, save_places)
from landmark_core.predict import Predictor
from landmark_core.tagging import tag_files


@pytest.mark.parametrize("name", ["Taj Mahal", "21.Taj_Mahal", "taj_mahal", "TAJ-MAHAL", " 21 - Taj  Mahal "])
def test_class_names_match_after_normalising(name):
    assert place_for(name).folder == "21.Taj_Mahal"


def test_accents_and_display_names_match():
    assert normalise("Zürich_Straße") == "zurich straße"
    assert place_for("haleakala national park").folder == "00.Haleakala_National_Park"
    assert place_for("colosseum rome") is None


def gazetteer_with(folder, *rows: str):
    """The places of a dataset folder whose places.csv holds these rows."""
    (folder / "places.csv").write_text("folder,display_name,region,country,latitude,longitude\n"
                                       + "".join(row + "\n" for row in rows), encoding="utf-8")
    return gazetteer(folder)


def test_places_csv_overrides_and_extends_the_built_in_places(tmp_path):
    places = gazetteer_with(tmp_path, "colosseum rome,Colosseum,Rome,Italy,41.8902,12.4922",
                            "21.Taj_Mahal,Taj Mahal (my spot),Agra,India,27.0,78.0")
    assert places.place_for("Colosseum_Rome").latitude == pytest.approx(41.8902)
    assert places.place_for("Taj Mahal").display_name == "Taj Mahal (my spot)"
    assert places.place_for("16.Eiffel_Tower") == place_for("16.Eiffel_Tower")  # the rest stay built in


@pytest.mark.parametrize("text, message", [
    ("folder,display_name\nx,y\n", "missing: latitude, longitude"),
    ("folder,latitude,longitude\nx,abc,1\n", "must be numbers"),
    ("folder,latitude,longitude\nx,91,1\n", "latitude must be in"),
    ("folder,latitude,longitude\n,1,1\n", "folder (class name) is empty"),
])
def test_bad_places_files_are_clear_errors(text, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_places(text)


def test_edited_table_round_trips_through_places_csv(tmp_path):
    rows = places_table(["21.Taj_Mahal", "My Place"], tmp_path)
    assert rows[1]["latitude"] is None and rows[1]["display_name"] == "My Place"
    rows[1].update(latitude=10.5, longitude=-20.25, country="Nowhere")
    path = save_places(tmp_path, places_from_table(rows))
    assert gazetteer(tmp_path).place_for("my place") == Place("My Place", "My Place", "", "Nowhere", 10.5, -20.25)
    assert len(list(csv.DictReader(open(path, encoding="utf-8")))) == 2


def test_user_classes_get_coordinates_and_unplaced_ones_are_tagged_by_name(tiny_dataset, tmp_path):
    """Folders named as users name them: two match built-in places, one gets its place from places.csv."""
    from conftest import tiny_config
    from landmark_core.pipeline import train_new
    data = tmp_path / "data"
    renames = {"07.Stonehenge": "stonehenge", "09.Golden_Gate_Bridge": "Golden Gate Bridge", "16.Eiffel_Tower": "my_garden"}
    for split in ("train", "test"):
        for old, new in renames.items():
            shutil.copytree(tiny_dataset / split / old, data / split / new)
    run = train_new(tiny_config(data, epochs=1), tmp_path / "artifacts")
    predictor = Predictor(run)
    assert predictor.places["stonehenge"] == place_for("07.Stonehenge")
    assert predictor.places["Golden Gate Bridge"] == place_for("09.Golden_Gate_Bridge")
    assert predictor.places["my_garden"] is None
    photos = sorted((data / "test").rglob("*.jpg"))
    report = tmp_path / "report.csv"
    counts = tag_files(predictor, photos, out_dir=tmp_path / "out", threshold=0.0, open_set=False, report_path=report)
    rows = list(csv.DictReader(open(report)))
    assert len(rows) == len(photos) and all(row["status"] == "tagged" for row in rows)
    for row in rows:  # placed classes get coordinates; the unplaced one its name and a note saying so
        unplaced = row["prediction"] == "my_garden"
        assert (row["latitude"] == "") == unplaced and ("tagged by name only" in row["note"]) == unplaced
    assert counts["tagged_without_place"] == sum(row["prediction"] == "my_garden" for row in rows)
    # the user fills in the missing place (as the Explore page does): the same predictor picks it up
    save_places(data, [Place("my_garden", "My garden", "Home", "Here", 1.5, 2.5)])
    assert predictor.places["my_garden"].latitude == 1.5
    tag_files(predictor, photos, out_dir=tmp_path / "out2", threshold=0.0, open_set=False, report_path=tmp_path / "r2.csv")
    for row in csv.DictReader(open(tmp_path / "r2.csv")):
        assert row["status"] == "tagged" and row["latitude"] != "" and row["note"] == ""


def test_numbers_that_are_part_of_a_name_are_kept(tmp_path):
    places = gazetteer_with(tmp_path, "10 Downing Street,10 Downing Street,London,United Kingdom,51.5034,-0.1276",
                            "11 Downing Street,11 Downing Street,London,United Kingdom,51.5033,-0.1280")
    assert places.place_for("10_Downing_Street").longitude == pytest.approx(-0.1276)
    assert places.place_for("11_Downing_Street").longitude == pytest.approx(-0.1280)
    assert places.place_for("12_Downing_Street") is None  # ambiguous without its number: no place beats a wrong one
    assert places.place_for("21.Taj_Mahal").folder == "21.Taj_Mahal"
