"""Tagging photos: decisions, EXIF GPS written and read back, sidecars, reports and re-runs."""
import csv
import hashlib
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import ExifTags, Image

from landmark_core.fileio import read_json
from landmark_core.places import place_for
from landmark_core.predict import Prediction, Predictor
from landmark_core.tagging import (TagDecision, decide, read_gps, splice_jpeg_exif, exif_with_tag, tag_files,
                                   tagged_bytes, xmp_sidecar)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def photos(trained_run, tmp_path):
    """A folder of test photos: JPEGs from the run's test split, a PNG, a geotagged JPEG and a broken file."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    paths = read_json(trained_run / "predictions.json")
    for i, row in enumerate(paths[:3]):
        shutil.copy(row["path"], folder / ("sub" if i == 2 else ".") / f"p{i}.jpg")
    Image.open(paths[3]["path"]).save(folder / "p3.png")
    geotagged = Image.open(paths[4]["path"])
    exif = geotagged.getexif()
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps.update({1: "S", 2: (10.0, 0.0, 0.0), 3: "E", 4: (20.0, 30.0, 0.0)})
    geotagged.save(folder / "has_gps.jpg", exif=exif.tobytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    return folder


def test_decide():
    top = [Prediction("16.Eiffel_Tower", 0.9, 0)]
    assert decide(top, 0.5).status == "tagged" and decide(top, 0.5).place == place_for("16.Eiffel_Tower")
    assert decide(top, 0.95).status == "abstained"
    assert decide(top, 0.5, existing_gps=(1.0, 2.0)).status == "has_gps"
    assert decide(top, 0.5, existing_gps=(1.0, 2.0), overwrite_gps=True).status == "tagged"


def test_jpeg_tag_is_read_back_and_pixels_are_not_reencoded(trained_run):
    source = read_json(trained_run / "predictions.json")[0]["path"]
    original = open(source, "rb").read()
    decision = decide([Prediction("33.Sydney_Opera_House", 0.99, 0)], 0.5)
    tagged, sidecar = tagged_bytes(original, decision)
    assert sidecar is None
    latitude, longitude = read_gps(tagged)
    place = place_for("33.Sydney_Opera_House")
    assert abs(latitude - place.latitude) < 1e-6 and abs(longitude - place.longitude) < 1e-6
    assert latitude < 0  # southern hemisphere survives the ref tag
    exif = Image.open(io.BytesIO(tagged)).getexif()
    assert exif[ExifTags.Base.ImageDescription] == "Sydney Opera House, Sydney, New South Wales, Australia"
    scan = original.index(b"\xff\xda")
    assert tagged.endswith(original[scan:])  # compressed image data byte-identical
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(tagged))), np.asarray(Image.open(io.BytesIO(original))))


def test_existing_exif_is_kept_and_old_gps_replaced():
    image = Image.new("RGB", (16, 16), (1, 2, 3))
    exif = image.getexif()
    exif[ExifTags.Base.Make] = "TestCam"
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes())
    decision = TagDecision("tagged", "16.Eiffel_Tower", 0.9, place_for("16.Eiffel_Tower"))
    once = splice_jpeg_exif(buffer.getvalue(), exif_with_tag(Image.open(buffer), decision))
    twice = splice_jpeg_exif(once, exif_with_tag(Image.open(io.BytesIO(once)), decision))
    assert twice.count(b"Exif\x00\x00") == 1
    assert Image.open(io.BytesIO(twice)).getexif()[ExifTags.Base.Make] == "TestCam"


def test_xmp_sidecar_for_formats_without_exif():
    decision = TagDecision("tagged", "37.Atomium", 0.9, place_for("37.Atomium"))
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    data, sidecar = tagged_bytes(png.getvalue(), decision)
    assert data == png.getvalue()
    assert 'exif:GPSLatitude="50,53.694000N"' in sidecar and "Atomium" in sidecar
    from xml.dom.minidom import parseString
    parseString(sidecar.split("?>", 1)[1].rsplit("<?xpacket", 1)[0])  # well-formed XML


def test_tag_folder_report_and_rerun(trained_run, photos, tmp_path):
    predictor = Predictor(trained_run)
    before = {p: digest(p) for p in photos.rglob("*") if p.is_file()}
    out, report = tmp_path / "out", tmp_path / "out" / "report.csv"
    counts = tag_files(predictor, [photos], out_dir=out, threshold=0.0, report_path=report)
    assert counts == {"tagged": 4, "abstained": 0, "has_gps": 1, "unreadable": 1, "skipped": 0}
    assert {p: digest(p) for p in photos.rglob("*") if p.is_file()} == before  # originals untouched
    rows = list(csv.DictReader(open(report)))
    assert len(rows) == 6 and {r["status"] for r in rows} == {"tagged", "has_gps", "unreadable"}
    tagged = [r for r in rows if r["status"] == "tagged"]
    for row in tagged:
        output = out / row["output"].split("/out/", 1)[1]
        assert output.exists()
        if output.suffix == ".jpg":
            assert read_gps(output) == pytest.approx((float(row["latitude"]), float(row["longitude"])), abs=1e-6)
        else:
            assert output.with_name(output.name + ".xmp").exists()
    assert (out / "sub" / "p2.jpg").exists()  # folder structure kept
    assert not (out / "has_gps.jpg").exists() and not (out / "broken.jpg").exists()
    assert json.loads(report.with_suffix(".json").read_text())["counts"]["tagged"] == 4
    again = tag_files(predictor, [photos], out_dir=out, threshold=0.0, report_path=report)
    assert again["skipped"] == 6 and again["tagged"] == 0
    assert len(list(csv.DictReader(open(report)))) == 6


def test_abstention_writes_nothing(trained_run, photos, tmp_path):
    counts = tag_files(Predictor(trained_run), [photos / "p0.jpg"], out_dir=tmp_path / "out", threshold=1.01,
                       report_path=tmp_path / "r.csv")
    assert counts["abstained"] == 1 and not (tmp_path / "out").exists()


def test_overwrite_tags_originals_in_place(trained_run, photos, tmp_path):
    target = photos / "p0.jpg"
    tag_files(Predictor(trained_run), [target], out_dir=None, in_place=True, threshold=0.0, report_path=tmp_path / "r.csv")
    assert read_gps(target) is not None


def test_tag_cli(trained_run, photos, tmp_path):
    result = subprocess.run([sys.executable, "-m", "landmark_core", "tag", str(trained_run), str(photos), "--out",
                             str(tmp_path / "t"), "--min-confidence", "0"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("tag-report.csv") and "4 tagged" in result.stderr
