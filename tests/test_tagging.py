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

from landmark_core.core.errors import LandmarkError
from landmark_core.core.fileio import read_json
from landmark_core.geo.places import place_for
from landmark_core.tagging.predict import Prediction, Predictor
from landmark_core.tagging.decision import TagDecision, decide
from landmark_core.tagging.metadata import read_gps
from landmark_core.tagging.batch import tag_files
from landmark_core.tagging.writing import tagged_bytes, write_tagged


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
    assert decide(top, 0.5).status == "tagged"
    assert decide(top, 0.5).place == place_for("16.Eiffel_Tower")
    assert decide(top, 0.95).status == "abstained"
    assert decide(top, 0.5, existing_gps=(1.0, 2.0)).status == "has_gps"
    assert decide(top, 0.5, existing_gps=(1.0, 2.0), overwrite_gps=True).status == "tagged"
    # the open-set check: a photo unlike the training photos is "unknown", however sure the softmax is
    assert decide(top, 0.5, familiarity=0.3, familiarity_threshold=0.6).status == "unknown"
    assert decide(top, 0.5, familiarity=0.7, familiarity_threshold=0.6).status == "tagged"
    assert decide(top, 0.95, familiarity=0.7, familiarity_threshold=0.6).status == "abstained"
    assert decide(top, 0.5, familiarity=0.3).status == "tagged"  # no threshold: a model without a feature bank


def test_jpeg_tag_is_read_back_and_pixels_are_not_reencoded(trained_run):
    source = read_json(trained_run / "predictions.json")[0]["path"]
    original = open(source, "rb").read()
    decision = decide([Prediction("33.Sydney_Opera_House", 0.99, 0)], 0.5)
    tagged, sidecar = tagged_bytes(original, decision)
    assert sidecar is None
    latitude, longitude = read_gps(tagged)
    place = place_for("33.Sydney_Opera_House")
    assert abs(latitude - place.latitude) < 1e-6
    assert abs(longitude - place.longitude) < 1e-6
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
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps.update({1: "S", 2: (10.0, 0.0, 0.0), 3: "W", 4: (20.0, 30.0, 0.0), 6: 1234.0})  # with an altitude
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes())
    once, _ = tagged_bytes(buffer.getvalue(), decision)
    twice, _ = tagged_bytes(once, decision)
    assert twice.count(b"Exif\x00\x00") == 1
    assert twice.count(b"http://ns.adobe.com/xap/1.0/") == 1
    tagged_exif = Image.open(io.BytesIO(twice)).getexif()
    assert tagged_exif[ExifTags.Base.Make] == "TestCam"
    assert 6 not in tagged_exif.get_ifd(ExifTags.IFD.GPSInfo)  # the old position's altitude went with it
    assert read_gps(twice) == pytest.approx((48.8584, 2.2945), abs=1e-5)


def test_xmp_sidecar_for_formats_without_exif():
    decision = TagDecision("tagged", "37.Atomium", 0.9, place_for("37.Atomium"))
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    data, sidecar = tagged_bytes(png.getvalue(), decision)
    assert data == png.getvalue()
    assert 'exif:GPSLatitude="50,53.694000N"' in sidecar
    assert "Atomium" in sidecar
    assert "<rdf:li>Atomium</rdf:li><rdf:li>Brussels</rdf:li><rdf:li>Belgium</rdf:li><rdf:li>landmark</rdf:li>" in sidecar
    from xml.dom.minidom import parseString
    parseString(sidecar.split("?>", 1)[1].rsplit("<?xpacket", 1)[0])  # well-formed XML


def test_tag_folder_report_and_rerun(trained_run, photos, tmp_path):
    predictor = Predictor(trained_run)
    before = {p: digest(p) for p in photos.rglob("*") if p.is_file()}
    out, report = tmp_path / "out", tmp_path / "out" / "report.csv"
    # open_set=False: this test is about writing; the open-set decision has its own tests
    counts = tag_files(predictor, [photos], out_dir=out, threshold=0.0, report_path=report, open_set=False)
    assert counts == {"tagged": 4, "unknown": 0, "abstained": 0, "has_gps": 1, "unreadable": 1, "failed": 0, "skipped": 0,
                      "tagged_without_place": 0}
    assert {p: digest(p) for p in photos.rglob("*") if p.is_file()} == before  # originals untouched
    rows = list(csv.DictReader(open(report)))
    assert len(rows) == 6
    assert {r["status"] for r in rows} == {"tagged", "has_gps", "unreadable"}
    tagged = [r for r in rows if r["status"] == "tagged"]
    for row in tagged:
        output = out / row["output"].split("/out/", 1)[1]
        assert output.exists()
        if output.suffix == ".jpg":
            assert read_gps(output) == pytest.approx((float(row["latitude"]), float(row["longitude"])), abs=1e-6)
        else:
            assert output.with_name(output.name + ".xmp").exists()
    assert (out / "sub" / "p2.jpg").exists()  # folder structure kept
    assert not (out / "has_gps.jpg").exists()
    assert not (out / "broken.jpg").exists()
    assert json.loads(report.with_suffix(".json").read_text())["counts"]["tagged"] == 4
    again = tag_files(predictor, [photos], out_dir=out, threshold=0.0, report_path=report, open_set=False)
    assert again["skipped"] == 6
    assert again["tagged"] == 0
    assert len(list(csv.DictReader(open(report)))) == 6


def test_abstention_writes_nothing(trained_run, photos, tmp_path):
    counts = tag_files(Predictor(trained_run), [photos / "p0.jpg"], out_dir=tmp_path / "out", threshold=1.01,
                       report_path=tmp_path / "r.csv", open_set=False)  # the probability threshold alone
    assert counts["abstained"] == 1
    assert not (tmp_path / "out").exists()


def test_overwrite_tags_originals_in_place(trained_run, photos, tmp_path):
    target = photos / "p0.jpg"
    tag_files(Predictor(trained_run), [target], out_dir=None, in_place=True, threshold=0.0, report_path=tmp_path / "r.csv",
              open_set=False)
    assert read_gps(target) is not None


def test_tag_cli(trained_run, photos, tmp_path):
    result = subprocess.run([sys.executable, "-m", "landmark_core", "tag", str(trained_run), str(photos), "--out",
                             str(tmp_path / "t"), "--min-confidence", "0", "--tag-unfamiliar"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("tag-report.csv")
    assert "4 tagged" in result.stderr


def test_report_from_an_older_version_keeps_its_columns(trained_run, photos, tmp_path):
    report = tmp_path / "r.csv"
    old_fields = ["file", "output", "status", "prediction", "probability", "landmark", "region", "country",
                  "latitude", "longitude", "size", "mtime_ns", "error"]
    report.write_text(",".join(old_fields) + "\n")
    tag_files(Predictor(trained_run), [photos / "p0.jpg"], out_dir=tmp_path / "out", report_path=report)
    rows = list(csv.DictReader(open(report)))
    assert len(rows) == 1
    assert None not in rows[0]
    assert rows[0]["status"] in ("tagged", "unknown", "abstained")


EXIFTOOL = shutil.which("exiftool")


@pytest.mark.skipif(EXIFTOOL is None, reason="exiftool is not installed (.ci/run installs it)")
def test_exiftool_reads_gps_keywords_and_non_ascii_names(tmp_path):
    """What photo managers read: GPS, XMP dc:subject, IPTC Keywords, and the description with its accents."""
    from landmark_core.geo.places import Place
    place = Place("zurich", "Zürich Straße", "Zürich", "Schweiz", 47.3769, 8.5417)
    decision = TagDecision("tagged", "zurich", 0.9, place)
    original = (tmp_path / "original.jpg")
    Image.new("RGB", (32, 24), (10, 120, 200)).save(original, "JPEG")
    tagged, _ = tagged_bytes(original.read_bytes(), decision)
    (tmp_path / "tagged.jpg").write_bytes(tagged)
    result = subprocess.run([EXIFTOOL, "-j", "-n", "-G1", "-charset", "iptc=utf8", str(tmp_path / "tagged.jpg")],
                            capture_output=True, text=True, timeout=60)
    tags = json.loads(result.stdout)[0]
    assert tags["Composite:GPSLatitude"] == pytest.approx(47.3769, abs=1e-5)
    assert tags["Composite:GPSLongitude"] == pytest.approx(8.5417, abs=1e-5)
    assert tags["IFD0:ImageDescription"] == "Zürich Straße, Zürich, Schweiz"
    assert tags["XMP-dc:Subject"] == ["Zürich Straße", "Zürich", "Schweiz", "landmark"]
    assert tags["IPTC:Keywords"] == ["Zürich Straße", "Zürich", "Schweiz", "landmark"]
    assert tags["XMP-photoshop:City"] == "Zürich"
    assert tags["XMP-photoshop:Country"] == "Schweiz"
    scan = original.read_bytes().index(b"\xff\xda")
    assert tagged.endswith(original.read_bytes()[scan:])  # pixels byte-identical


@pytest.mark.skipif(EXIFTOOL is None, reason="exiftool is not installed (.ci/run installs it)")
def test_exiftool_reads_the_sidecar(tmp_path):
    decision = TagDecision("tagged", "37.Atomium", 0.9, place_for("37.Atomium"))
    png = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(png)
    write_tagged(png.read_bytes(), tmp_path / "out.png", decision)
    result = subprocess.run([EXIFTOOL, "-j", "-n", "-G1", str(tmp_path / "out.png.xmp")], capture_output=True,
                            text=True, timeout=60)
    tags = json.loads(result.stdout)[0]
    assert tags["XMP-dc:Subject"] == ["Atomium", "Brussels", "Belgium", "landmark"]
    assert tags["XMP-exif:GPSLatitude"] == pytest.approx(place_for("37.Atomium").latitude, abs=1e-4)


def test_predict_says_has_gps_like_tag_does(trained_run, photos, capsys):
    from landmark_core.cli import main
    assert main(["predict", str(trained_run), str(photos / "has_gps.jpg"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["outcome"] == "has_gps"


def _report_rows(report):
    return sorted((r["file"], r["status"], r["prediction"], r["probability"], r["familiarity"])
                  for r in csv.DictReader(open(report)))


@pytest.mark.numeric
def test_batched_parallel_tagging_decides_like_one_photo_at_a_time(trained_run, photos, tmp_path):
    """Threads and batches change the speed, not a single decision: the report equals the one-at-a-time loop's,
    and each row equals what `decide_for` (the Predict page and `landmark predict`) says for that photo."""
    from landmark_core.tagging.batch import TagProgress
    from landmark_core.tagging.decision import decide_for
    predictor = Predictor(trained_run)
    seen = []
    tag_files(predictor, [photos], out_dir=tmp_path / "a", report_path=tmp_path / "a.csv", workers=1, batch_size=1)
    tag_files(predictor, [photos], out_dir=tmp_path / "b", report_path=tmp_path / "b.csv", workers=3, batch_size=4,
              progress=seen.append)
    one_at_a_time, batched = _report_rows(tmp_path / "a.csv"), _report_rows(tmp_path / "b.csv")
    # a decision changes only if a score lies within float rounding (~1e-6) of its threshold
    assert [row[:3] for row in one_at_a_time] == [row[:3] for row in batched]
    for one, other in zip(one_at_a_time, batched):
        for a, b in zip(one[3:], other[3:]):  # a batch of 4 rounds apart from a batch of 1 by ~1e-6, and the
            # report keeps 4 decimals: the written numbers differ by one last digit at most
            assert (a == b == "") or abs(float(a) - float(b)) <= 1.01e-4, (one, other)
    for file, status, prediction, probability, _ in batched:
        if status != "unreadable":
            single = decide_for(predictor, file, existing_gps=read_gps(file))
            assert (single.status, single.prediction) == (status, prediction)
            # the report's 4 decimals (5e-5) plus the batching's rounding
            assert single.probability == pytest.approx(float(probability), abs=1e-4)
    assert all(isinstance(p, TagProgress) for p in seen)
    assert seen[-1].done == seen[-1].total == 6
    assert seen[-1].files_per_second > 0
    assert seen[-1].eta_seconds == 0


def test_shards_tag_disjoint_files_that_cover_the_library(trained_run, photos, tmp_path):
    predictor = Predictor(trained_run)
    for k in (1, 2, 3):  # paths may be any iterable, a generator too (it is walked twice: count, then tag)
        tag_files(predictor, (path for path in [photos]), out_dir=tmp_path / "out",
                  report_path=tmp_path / f"shard{k}.csv", shard=(k, 3), threshold=0.0, open_set=False)
    files = [r["file"] for k in (1, 2, 3) for r in csv.DictReader(open(tmp_path / f"shard{k}.csv"))]
    assert len(files) == len(set(files)) == 6  # every photo once, in exactly one shard
    with pytest.raises(LandmarkError, match="K/N"):
        tag_files(predictor, [photos], out_dir=tmp_path / "out", report_path=tmp_path / "x.csv", shard=(4, 3))
    with pytest.raises(LandmarkError, match="at least 1"):
        tag_files(predictor, [photos], out_dir=tmp_path / "out", report_path=tmp_path / "x.csv", batch_size=0)


def test_two_taggers_cannot_share_one_report(trained_run, photos, tmp_path):
    from landmark_core.tagging.batch import _ReportLock
    report = tmp_path / "report.csv"
    with _ReportLock(report):  # as a running `landmark tag` holds it
        with pytest.raises(LandmarkError, match="another process is writing report.csv"):
            tag_files(Predictor(trained_run), [photos], out_dir=tmp_path / "out", report_path=report)
    tag_files(Predictor(trained_run), [photos], out_dir=tmp_path / "out", report_path=report)  # released: fine


@pytest.mark.slow
def test_a_killed_tagging_run_resumes_without_duplicates(trained_run, photos, tmp_path):
    """SIGKILL `landmark tag` mid-library, run it again: every photo once in the report, originals untouched."""
    import os
    import signal
    import subprocess
    import sys
    import time
    library = tmp_path / "library"
    library.mkdir()
    sources = sorted(p for p in photos.rglob("*.jpg") if p.name != "broken.jpg")
    for i in range(240):  # hard links: a large library at no disk cost
        os.link(sources[i % len(sources)], library / f"photo{i:04d}.jpg")
    before = {p.name: digest(p) for p in library.iterdir()}
    out, report = tmp_path / "out", tmp_path / "out" / "report.csv"
    command = [sys.executable, "-m", "landmark_core", "tag", str(trained_run), str(library), "--out", str(out),
               "--report", str(report), "--batch-size", "2", "--workers", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if report.exists() and report.read_bytes().count(b"\n") > 11:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    rows_before = report.read_bytes().count(b"\n") - 1
    assert 10 <= rows_before < 240, "the kill should land mid-library"
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    rows = list(csv.DictReader(open(report)))
    assert sorted(r["file"] for r in rows) == sorted(str(p.resolve()) for p in library.iterdir())  # once each
    assert {p.name: digest(p) for p in library.iterdir()} == before
    assert json.loads(report.with_suffix(".json").read_text())["counts"]["skipped"] >= rows_before
