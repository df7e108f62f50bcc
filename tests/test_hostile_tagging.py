"""Robustness, round three: the user's photos and metadata are never lost, and one odd file never stops a tag run.

One test per case of the hostile walk (issue 28's numbers in the comments); each failed before its fix. T: the
flags under which the tiny run tags everything it can.
"""
import csv
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pyexiv2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from landmark_core.core.fileio import read_json, write_json_atomic
from landmark_core.tagging.predict import Predictor
from landmark_core.runs.run import write_status
from landmark_core.tagging.decision import STATUSES
from landmark_core.tagging.metadata import read_gps
from landmark_core.tagging.batch import tag_files
from helpers import landmark, one_line_error

T = ("--min-confidence", "0", "--tag-unfamiliar")


def photo_of(run: Path) -> Path:
    return Path(read_json(run / "predictions.json")[0]["path"])


def rows(report: Path) -> list[dict]:
    with open(report, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return list(csv.DictReader(handle))


def exiftool(path: Path, *tags: str) -> dict:
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool is not installed (.ci/run installs it)")
    out = subprocess.run(["exiftool", "-json", "-G1", "-struct", *tags, str(path)], capture_output=True, check=True)
    return json.loads(out.stdout)[0]


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


@pytest.fixture()
def photos(finished_copy, tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photo_of(finished_copy), folder / "plain.jpg")
    return folder


# --- data loss -------------------------------------------------------------------------------------------------

def test_1_a_report_path_that_is_not_a_report_is_refused_and_left_alone(finished_copy, photos, tmp_path):
    notes = photos / "notes.txt"
    notes.write_text("line one\nline two\n")
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    for target in (photos / "plain.jpg", notes):
        result = landmark("tag", finished_copy, photos, "--out", tmp_path / "o", "--report", target, *T,
                          artifacts=tmp_path / "artifacts")
        assert "is not a tag report" in one_line_error(result)
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before  # no lock file left among the photos


def _tiff_and_png_with_histories(folder: Path) -> dict[Path, bytes]:
    history = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
               b'<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
               b'xmlns:darktable="http://darktable.sf.net/" xmp:Rating="3" darktable:history_end="1">'
               b'<darktable:history><rdf:Seq><rdf:li darktable:operation="exposure" darktable:enabled="1"/>'
               b'</rdf:Seq></darktable:history></rdf:Description></rdf:RDF></x:xmpmeta>')
    image = Image.open(next(folder.glob("*.jpg"))).convert("RGB")
    sidecars = {}
    for name, fmt in (("photo.tiff", "TIFF"), ("pic.png", "PNG")):
        image.save(folder / name, fmt)
        (folder / f"{name}.xmp").write_bytes(history)
        sidecars[folder / f"{name}.xmp"] = history
    return sidecars


def test_2_overwrite_merges_into_an_existing_sidecar_instead_of_replacing_its_history(finished_copy, photos, tmp_path):
    sidecars = _tiff_and_png_with_histories(photos)
    for _ in range(2):  # a re-run adds nothing twice
        result = landmark("tag", finished_copy, photos, "--overwrite", "--report", tmp_path / "r.csv", *T,
                          artifacts=tmp_path / "artifacts")
        assert result.returncode == 0, result.stderr
        (tmp_path / "r.csv").unlink()  # tag again, not skip
    for sidecar in sidecars:
        with pyexiv2.Image(str(sidecar)) as image:
            xmp = image.read_xmp()
        assert xmp["Xmp.xmp.Rating"] == "3"
        assert xmp["Xmp.darktable.history[1]/darktable:operation"] == "exposure"
        assert len(xmp["Xmp.dc.subject"]) == len(set(xmp["Xmp.dc.subject"])) >= 2  # ours, each once


def _family_photo(path: Path, source: Path) -> None:
    shutil.copy(source, path)
    with pyexiv2.Image(str(path)) as image:
        image.modify_exif({"Exif.Image.ImageDescription": "Grandma's 90th", "Exif.Image.XPKeywords": "Family"})
        image.modify_iptc({"Iptc.Application2.Keywords": ["Family"], "Iptc.Application2.Caption": "Grandma's 90th"})
        image.modify_xmp({"Xmp.dc.subject": ["Family"]})


@pytest.mark.parametrize("mode", ["--overwrite", "--out"])
def test_3_the_users_keywords_and_captions_survive_and_ours_are_added_once(finished_copy, photos, tmp_path, mode):
    _family_photo(photos / "family.jpg", photos / "plain.jpg")
    where = ("--overwrite",) if mode == "--overwrite" else ("--out", tmp_path / "o")
    for _ in range(2):
        result = landmark("tag", finished_copy, photos / "family.jpg", *where, "--report", tmp_path / "r.csv", *T,
                          artifacts=tmp_path / "artifacts")
        assert result.returncode == 0, result.stderr
        (tmp_path / "r.csv").unlink()
        if mode == "--out":
            break  # a copy is made from the untouched original each time
    tagged = photos / "family.jpg" if mode == "--overwrite" else tmp_path / "o" / "family.jpg"
    tags = exiftool(tagged, "-IPTC:Keywords", "-XMP-dc:Subject", "-EXIF:ImageDescription", "-IPTC:Caption-Abstract",
                    "-EXIF:XPKeywords")
    landmark_name = landmark_name_of(finished_copy, tagged)
    for field in ("IPTC:Keywords", "XMP-dc:Subject"):
        keywords = as_list(tags[field])
        assert "Family" in keywords
        assert landmark_name in keywords
        assert len(keywords) == len(set(keywords))
    for field in ("IFD0:ImageDescription", "IPTC:Caption-Abstract"):
        assert tags[field].startswith("Grandma's 90th")
        assert landmark_name in tags[field]
        assert tags[field].count(landmark_name) == 1
    assert "Family" in tags["IFD0:XPKeywords"]


def landmark_name_of(run: Path, photo: Path) -> str:
    """The landmark name the run gives this photo (what our keywords start with)."""
    from landmark_core.tagging.decision import decide_for
    return decide_for(Predictor(run), photo, threshold=0.0, open_set=False).name


def test_4_two_inputs_with_one_name_get_two_copies(finished_copy, photos, tmp_path):
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    shutil.copy(photos / "plain.jpg", tmp_path / "A" / "x.jpg")
    Image.open(photos / "plain.jpg").rotate(90).save(tmp_path / "B" / "x.jpg")
    for _ in range(2):  # the same photo keeps its copy on a re-run
        result = landmark("tag", finished_copy, tmp_path / "A" / "x.jpg", tmp_path / "B" / "x.jpg", "--out",
                          tmp_path / "o", *T, artifacts=tmp_path / "artifacts")
        assert result.returncode == 0, result.stderr
    report = rows(tmp_path / "o" / "tag-report.csv")
    assert len({row["output"] for row in report}) == 2 == len(report)
    assert sorted(p.name for p in (tmp_path / "o").glob("x*.jpg")) == ["x-2.jpg", "x.jpg"]


def test_5_overwrite_keeps_mode_times_and_hard_links_and_copies_keep_the_originals_mode(finished_copy, photos, tmp_path):
    original = photos / "plain.jpg"
    os.chmod(original, 0o644)
    os.utime(original, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    os.link(original, tmp_path / "link.jpg")
    result = landmark("tag", finished_copy, original, "--out", tmp_path / "o", *T,
                      artifacts=tmp_path / "artifacts")
    assert result.returncode == 0, result.stderr
    copy = (tmp_path / "o" / "plain.jpg").stat()
    assert stat.S_IMODE(copy.st_mode) == 0o644
    assert copy.st_mtime_ns == 1_600_000_000_000_000_000
    result = landmark("tag", finished_copy, original, "--overwrite", "--report", tmp_path / "r.csv", *T,
                      artifacts=tmp_path / "artifacts")
    assert result.returncode == 0, result.stderr
    after = original.stat()
    assert stat.S_IMODE(after.st_mode) == 0o644
    assert after.st_mtime_ns == 1_600_000_000_000_000_000
    assert after.st_nlink == 2
    assert (tmp_path / "link.jpg").read_bytes() == original.read_bytes()
    assert read_gps(tmp_path / "link.jpg") is not None  # the link sees the tagged photo


def test_6_explain_never_writes_over_the_photo_it_explains(finished_copy, photos, tmp_path):
    photo = photos / "plain.jpg"
    before = photo.read_bytes()
    result = landmark("explain", finished_copy, photo, "--out", photo, artifacts=tmp_path / "artifacts")
    assert "is the photo being explained" in one_line_error(result)
    assert photo.read_bytes() == before


# --- one file stops or hangs the whole run -------------------------------------------------------------------

def test_7_a_jpeg_whose_metadata_exiv2_refuses_is_a_row_and_the_run_goes_on(finished_copy, photos, tmp_path):
    data = bytearray((photos / "plain.jpg").read_bytes())
    # an APP1 segment that says Exif but holds no TIFF structure: Pillow reads past it, exiv2 refuses it
    broken = b"\xff\xe1" + (2 + 6 + 10).to_bytes(2, "big") + b"Exif\0\0" + b"NOT A TIFF"
    (photos / "broken.jpg").write_bytes(bytes(data[:2]) + broken + bytes(data[2:]))
    result = landmark("tag", finished_copy, photos, "--out", tmp_path / "o", *T, artifacts=tmp_path / "artifacts")
    assert result.returncode == 0, result.stderr
    assert "Corrupt EXIF" not in result.stderr
    by_name = {Path(row["file"]).name: row for row in rows(tmp_path / "o" / "tag-report.csv")}
    assert by_name["plain.jpg"]["status"] == "tagged"
    assert by_name["broken.jpg"]["status"] == "failed"
    assert "cannot write tags" in by_name["broken.jpg"]["error"]
    landmark("tag", finished_copy, photos, "--out", tmp_path / "o", *T, artifacts=tmp_path / "artifacts")
    statuses = [row["status"] for row in rows(tmp_path / "o" / "tag-report.csv")]
    assert statuses.count("failed") == 2
    assert statuses.count("tagged") == 1  # tried again; the done one skipped


def test_8_9_odd_and_long_file_names_are_tagged_and_reported(finished_copy, photos, tmp_path):
    source = photos / "plain.jpg"
    odd = os.fsencode(photos) + b"/bad\xff\xfename.jpg"
    shutil.copy(source, odd)
    long_name = "l" * 236 + ".jpg"  # 240 bytes: legal; a temporary name built from it would not be
    shutil.copy(source, photos / long_name)
    for _ in range(2):  # the re-run finds both in the report and skips them
        result = landmark("tag", finished_copy, photos, "--out", tmp_path / "o", *T, artifacts=tmp_path / "artifacts")
        assert result.returncode == 0, result.stderr
    report = rows(tmp_path / "o" / "tag-report.csv")
    assert sorted(row["status"] for row in report) == ["tagged"] * 3
    assert os.path.exists(os.fsencode(tmp_path / "o") + b"/bad\xff\xfename.jpg")
    assert (tmp_path / "o" / long_name).exists()
    assert read_json(tmp_path / "o" / "tag-report.json")["counts"]["skipped"] == 3


def test_10_to_14_and_22_links_fifos_devices_and_vanishing_files_are_rows(finished_copy, photos, tmp_path):
    os.symlink(photos / "missing.jpg", photos / "dangling.jpg")
    os.symlink(photos / "loop-b.jpg", photos / "loop-a.jpg")
    os.symlink(photos / "loop-a.jpg", photos / "loop-b.jpg")
    os.mkfifo(photos / "m.jpg")
    os.symlink("/dev/zero", photos / "zero.jpg")
    os.symlink(photos / "plain.jpg", photos / "same.jpg")  # 22: the same photo twice
    for index in range(3):
        shutil.copy(photos / "plain.jpg", photos / f"vanishing-{index}.jpg")
    def vanish(progress):
        for leftover in photos.glob("vanishing-*.jpg"):
            leftover.unlink()

    predictor = Predictor(finished_copy)
    counts = tag_files(predictor, [photos], out_dir=tmp_path / "o", threshold=0.0, open_set=False,
                       report_path=tmp_path / "o" / "r.csv", batch_size=1, workers=1, progress=vanish)
    by_name = {Path(row["file"]).name: row for row in rows(tmp_path / "o" / "r.csv")}
    assert by_name["plain.jpg"]["status"] == "tagged"
    assert "same.jpg" not in by_name
    assert counts["tagged"] >= 1
    for name, reason in (("missing.jpg", "link to nothing"), ("m.jpg", "FIFO"), ("zero", "device")):
        assert by_name[name]["status"] == "unreadable", by_name[name]
        assert reason in by_name[name]["error"], by_name[name]
    for index in range(3):  # decoded before it went, or a row saying it went
        row = by_name[f"vanishing-{index}.jpg"]
        assert row["status"] == "tagged" or (row["status"] == "unreadable" and row["error"]), row
    loops = [row for file, row in by_name.items() if file.startswith("loop")]
    assert loops
    assert all(row["status"] == "unreadable" and "loop" in row["error"] for row in loops)
    assert sum(counts[s] for s in STATUSES) == len(by_name)


def test_15_a_model_file_that_is_a_fifo_or_dev_zero_is_refused_without_hanging(finished_copy, tmp_path):
    model = finished_copy / "model.ts"
    model.unlink()
    os.symlink("/dev/zero", model)
    started = time.monotonic()
    photo = photo_of(finished_copy)
    result = landmark("predict", finished_copy, photo, artifacts=tmp_path / "artifacts")
    assert "not a regular file" in one_line_error(result)
    model.unlink()
    os.mkfifo(model)
    result = landmark("predict", finished_copy, photo, artifacts=tmp_path / "artifacts")
    assert "not a regular file" in one_line_error(result)
    assert time.monotonic() - started < 30


def test_16_a_latin1_places_file_is_read_by_tag_as_by_training(finished_copy, photos, tmp_path):
    config = read_json(finished_copy / "config.json")
    dataset = Path(config["data"])
    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    classes = sorted(p.name for p in (copy / "train").iterdir() if p.is_dir())
    lines = ["folder,display_name,region,country,latitude,longitude"] + [
        f"{name},Café {i},Zürich,Schweiz,47.37,8.54" for i, name in enumerate(classes)]
    (copy / "places.csv").write_bytes("\n".join(lines).encode("latin-1"))
    config["data"] = str(copy)
    (finished_copy / "config.json").write_text(json.dumps(config))
    result = landmark("tag", finished_copy, photos, "--out", tmp_path / "o", *T, artifacts=tmp_path / "artifacts")
    assert result.returncode == 0, result.stderr
    row = rows(tmp_path / "o" / "tag-report.csv")[0]
    assert row["landmark"].startswith("Café")
    assert row["region"] == "Zürich"


# --- misleading or unsafe ------------------------------------------------------------------------------------

def test_17_18_report_cells_run_no_formula_and_sidecars_stay_well_formed(finished_copy, photos, tmp_path):
    config = read_json(finished_copy / "config.json")
    copy = tmp_path / "data"
    shutil.copytree(config["data"], copy)
    classes = sorted(p.name for p in (copy / "train").iterdir() if p.is_dir())
    evil = ["=cmd|' /C calc'!A0", "+1+1", "@SUM(A1)"]
    lines = ["folder,display_name,region,country,latitude,longitude"] + [
        f"{name},\"{evil[i % 3]}\",Re\x0bgion,Coun\x01try,10,-20" for i, name in enumerate(classes)]
    (copy / "places.csv").write_text("\n".join(lines))
    config["data"] = str(copy)
    (finished_copy / "config.json").write_text(json.dumps(config))
    Image.open(photos / "plain.jpg").save(photos / "pic.png")
    result = landmark("tag", finished_copy, photos, "--out", tmp_path / "o", *T, artifacts=tmp_path / "artifacts")
    assert result.returncode == 0, result.stderr
    for row in rows(tmp_path / "o" / "tag-report.csv"):
        for field in ("prediction", "landmark", "region", "country", "note", "error", "output"):
            assert not row[field].startswith(("=", "+", "-", "@", "\t", "\r")), (field, row[field])
        assert row["region"] == "Region"
        assert row["country"] == "Country"
        assert row["longitude"] == "-20.0"  # numbers stay numbers
    sidecar = tmp_path / "o" / "pic.png.xmp"
    import xml.dom.minidom
    xml.dom.minidom.parseString(sidecar.read_bytes())  # well-formed
    tags = exiftool(tmp_path / "o" / "plain.jpg", "-IPTC:City")
    assert tags["IPTC:City"] == "Region"


def command_line(*args, artifacts: Path) -> subprocess.CompletedProcess:
    """`landmark ARGS` in its own process: argparse's refusals exit the process."""
    return subprocess.run([sys.executable, "-m", "landmark_core", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "LANDMARK_ARTIFACTS": str(artifacts)}, timeout=120)


@pytest.mark.parametrize("value", ["nan", "-1", "-inf", "2", "inf", "1e308"])
def test_19_numeric_flags_are_range_checked(finished_copy, photos, tmp_path, value):
    result = command_line("tag", finished_copy, photos, "--out", tmp_path / "o", f"--min-confidence={value}",
                          artifacts=tmp_path / "artifacts")
    assert result.returncode == 2
    assert f"--min-confidence: {value} is out of range: give a number from 0 to 1" in result.stderr
    assert "0" * 20 not in result.stderr  # the value as given, not a 300-digit number
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args", [("predict", "--top-k=0"), ("predict", "--top-k=-1"), ("tag", "--workers=0"),
                                  ("tag", "--batch-size=-3")])
def test_19_25_counts_below_one_are_refused(finished_copy, photos, tmp_path, args):
    command, flag = args
    extra = ("--out", tmp_path / "o") if command == "tag" else ()
    result = command_line(command, finished_copy, photos / "plain.jpg", *extra, flag, artifacts=tmp_path / "artifacts")
    assert result.returncode == 2
    assert "is out of range" in result.stderr


@pytest.mark.parametrize("command", ["export", "evaluate", "predict", "tag", "explain"])
def test_20_a_run_being_trained_is_refused(finished_copy, photos, tmp_path, command):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_status(finished_copy, state="running", pid=sleeper.pid)
        extra = {"predict": (photos / "plain.jpg",), "explain": (photos / "plain.jpg", "--out", tmp_path / "h.png"),
                 "tag": (photos, "--out", tmp_path / "o")}.get(command, ())
        result = landmark(command, finished_copy, *extra, artifacts=tmp_path / "artifacts")
        assert f"is being trained by process {sleeper.pid}" in one_line_error(result)
    finally:
        sleeper.kill()
        sleeper.wait()


def _gps_photo(path: Path, source: Path, latitude) -> None:
    shutil.copy(source, path)
    with pyexiv2.Image(str(path)) as image:
        image.modify_exif({"Exif.GPSInfo.GPSLatitudeRef": "N", "Exif.GPSInfo.GPSLatitude": latitude,
                           "Exif.GPSInfo.GPSLongitudeRef": "E", "Exif.GPSInfo.GPSLongitude": "8/1 0/1 0/1"})


def test_21_invalid_gps_is_no_gps(finished_copy, photos, tmp_path):
    _gps_photo(photos / "zero.jpg", photos / "plain.jpg", "0/0 0/0 0/0")
    _gps_photo(photos / "far.jpg", photos / "plain.jpg", "999/1 0/1 0/1")
    _gps_photo(photos / "real.jpg", photos / "plain.jpg", "47/1 0/1 0/1")
    (photos / "plain.jpg").unlink()
    result = landmark("tag", finished_copy, photos, "--out", tmp_path / "o", *T, artifacts=tmp_path / "artifacts")
    assert result.returncode == 0, result.stderr
    by_name = {Path(row["file"]).name: row for row in rows(tmp_path / "o" / "tag-report.csv")}
    assert by_name["real.jpg"]["status"] == "has_gps"
    for name in ("zero.jpg", "far.jpg"):
        assert by_name[name]["status"] == "tagged", by_name[name]
        assert "is no position" in by_name[name]["note"], by_name[name]


def test_23_a_dataset_that_is_a_link_to_the_root_is_refused_at_once(tmp_path):
    os.symlink("/", tmp_path / "everything")
    for args in (("data", "stats", tmp_path / "everything"), ("train", "--data", tmp_path / "everything")):
        result = landmark(*args, artifacts=tmp_path / "artifacts")
        assert "a system folder, not a dataset" in one_line_error(result)


def test_24_explain_needs_an_image_name(finished_copy, photos, tmp_path):
    for name in ("x.txt", "noextension"):
        result = landmark("explain", finished_copy, photos / "plain.jpg", "--out", tmp_path / name,
                          artifacts=tmp_path / "artifacts")
        assert "the heatmap is an image" in one_line_error(result)


def test_25_an_empty_shard_and_absurd_epochs_are_clear(finished_copy, photos, tmp_path):
    result = landmark("tag", finished_copy, photos, "--out", tmp_path / "o", "--shard", "",
                      artifacts=tmp_path / "artifacts")
    assert "--shard takes K/N" in one_line_error(result)
    config = read_json(finished_copy / "config.json")
    write_json_atomic(finished_copy / "config.json", {**config, "epochs": 1e308})
    result = landmark("runs", artifacts=finished_copy.parent.parent)
    assert result.returncode == 0
    assert "e+" not in result.stdout
    assert "000000" not in result.stdout
    assert "finished · 2 of ? epochs" in result.stdout  # the plan is unknown: said so, not a huge number


def test_25_sigterm_during_tag_says_so_and_writes_the_summary(finished_copy, photos, tmp_path):
    for index in range(40):
        shutil.copy(photos / "plain.jpg", photos / f"copy-{index}.jpg")
    process = subprocess.Popen([sys.executable, "-m", "landmark_core", "tag", str(finished_copy), str(photos),
                                "--out", str(tmp_path / "o"), "--batch-size", "1", "--workers", "1", *T],
                               env={**os.environ, "LANDMARK_ARTIFACTS": str(tmp_path / "artifacts")},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    report = tmp_path / "o" / "tag-report.csv"
    while time.monotonic() < deadline and (not report.exists() or len(rows(report)) < 2):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "interrupted" in stderr.decode()
    summary = read_json(tmp_path / "o" / "tag-report.json")
    assert summary["stopped"] is True
    assert summary["counts"]["tagged"] >= 2


# --- fuzz: odd files among the photos --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_predictor(trained_run):
    return Predictor(trained_run)


KINDS = ["photo", "fifo", "dev_zero", "dangling", "loop", "same", "non_utf8", "long", "family", "vanishing"]


@settings(max_examples=int(os.environ.get("LANDMARK_FUZZ_EXAMPLES", "15")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=6), in_place=st.booleans())
def test_fuzzed_libraries_of_odd_files_tag_without_loss(shared_predictor, trained_run, tmp_path_factory, kinds, in_place):
    folder = tmp_path_factory.mktemp("odd")
    source = photo_of(trained_run)
    originals = {}
    for index, kind in enumerate(kinds):
        name = folder / f"{index}-{kind}.jpg"
        if kind in ("photo", "vanishing", "same"):
            shutil.copy(source, name)
            if kind == "same":
                os.symlink(name, folder / f"{index}-same-link.jpg")
        elif kind == "fifo":
            os.mkfifo(name)
        elif kind == "dev_zero":
            os.symlink("/dev/zero", name)
        elif kind == "dangling":
            os.symlink(folder / "nothing.jpg", name)
        elif kind == "loop":
            os.symlink(name, name)
        elif kind == "non_utf8":
            name = Path(os.fsdecode(os.fsencode(folder) + f"/{index}-\xff".encode("latin-1") + b".jpg"))
            shutil.copy(source, name)
        elif kind == "long":
            name = folder / (f"{index}-" + "n" * 240 + ".jpg")
            shutil.copy(source, name)
        elif kind == "family":
            _family_photo(name, source)
        if name.is_file() and not name.is_symlink():
            originals[name] = name.read_bytes()

    def vanish(progress):
        for leftover in folder.glob("*-vanishing.jpg"):
            leftover.unlink()
            originals.pop(leftover, None)

    out = None if in_place else folder / "out"
    counts = tag_files(shared_predictor, [folder], out_dir=out, in_place=in_place, threshold=0.0, open_set=False,
                       report_path=folder / "report" / "r.csv", batch_size=1, workers=1, progress=vanish)
    report = rows(folder / "report" / "r.csv")
    assert sum(counts[s] for s in STATUSES) == len(report)
    assert all(row["status"] in STATUSES and (row["status"] not in ("unreadable", "failed") or row["error"])
               for row in report)
    for path, data in originals.items():
        if not in_place:
            assert path.read_bytes() == data  # originals untouched
        elif "family" in path.name:
            with pyexiv2.Image(str(path)) as image:
                assert "Family" in image.read_iptc()["Iptc.Application2.Keywords"]


# --- found by review -------------------------------------------------------------------------------------------

def test_a_latin1_iptc_caption_is_a_failed_row_not_the_end_of_the_run(finished_copy, photos, tmp_path):
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool is not installed (.ci/run installs it)")
    shutil.copy(photos / "plain.jpg", photos / "latin1.jpg")
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-charset", "iptc=Latin", "-IPTC:By-line=Müller",
                    str(photos / "latin1.jpg")], check=True)
    before = (photos / "latin1.jpg").read_bytes()
    result = landmark("tag", finished_copy, photos, "--overwrite", "--report", tmp_path / "r.csv", *T,
                      artifacts=tmp_path / "artifacts")
    assert result.returncode == 0, result.stderr
    by_name = {Path(row["file"]).name: row for row in rows(tmp_path / "r.csv")}
    assert by_name["plain.jpg"]["status"] == "tagged"
    # pyexiv2 decodes every value as UTF-8: this photo cannot be merged, so it is left exactly as it was
    assert by_name["latin1.jpg"]["status"] == "failed"
    assert "codec can't decode" in by_name["latin1.jpg"]["error"]
    assert (photos / "latin1.jpg").read_bytes() == before


def test_overwrite_through_a_link_tags_the_photo_and_keeps_the_link(finished_copy, photos, tmp_path):
    (photos / "best").mkdir()
    os.symlink(photos / "plain.jpg", photos / "best" / "a.jpg")
    result = landmark("tag", finished_copy, photos / "best", "--overwrite", "--report", tmp_path / "r.csv", *T,
                      artifacts=tmp_path / "artifacts")
    assert result.returncode == 0, result.stderr
    assert (photos / "best" / "a.jpg").is_symlink()
    assert read_gps(photos / "plain.jpg") is not None


def test_a_position_the_user_set_in_a_sidecar_or_the_photos_xmp_is_kept(finished_copy, photos, tmp_path):
    sidecar = photos / "plain.jpg.xmp"
    sidecar.write_bytes(b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
                        b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
                        b'xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="48,51.5N" '
                        b'exif:GPSLongitude="2,17.67E"/></rdf:RDF></x:xmpmeta>')
    before = sidecar.read_bytes()
    result = landmark("tag", finished_copy, photos, "--sidecars", "--report", tmp_path / "r.csv", *T,
                      artifacts=tmp_path / "artifacts")
    assert result.returncode == 0, result.stderr
    assert rows(tmp_path / "r.csv")[0]["status"] == "has_gps"
    assert sidecar.read_bytes() == before
    shutil.copy(photos / "plain.jpg", photos / "inside.jpg")
    with pyexiv2.Image(str(photos / "inside.jpg")) as image:  # a position in the JPEG's own XMP only
        image.modify_xmp({"Xmp.exif.GPSLatitude": "48,51.5N", "Xmp.exif.GPSLongitude": "2,17.67E"})
    result = landmark("tag", finished_copy, photos / "inside.jpg", "--out", tmp_path / "o", *T,
                      artifacts=tmp_path / "artifacts")
    assert rows(tmp_path / "o" / "tag-report.csv")[0]["status"] == "has_gps"


def test_a_report_named_json_or_beside_a_foreign_json_is_refused(finished_copy, photos, tmp_path):
    result = landmark("tag", finished_copy, photos, "--out", tmp_path / "o", "--report", tmp_path / "r.json", *T,
                      artifacts=tmp_path / "artifacts")
    assert "the report is a CSV file" in one_line_error(result)
    (tmp_path / "album.json").write_text('{"photos": ["mine"]}')
    result = landmark("tag", finished_copy, photos, "--out", tmp_path / "o", "--report", tmp_path / "album.csv", *T,
                      artifacts=tmp_path / "artifacts")
    assert "is not a tag report's summary" in one_line_error(result)
    assert json.loads((tmp_path / "album.json").read_text()) == {"photos": ["mine"]}


def test_a_caption_in_other_languages_and_a_windows_nul_survive(finished_copy, photos, tmp_path):
    with pyexiv2.Image(str(photos / "plain.jpg")) as image:
        image.modify_xmp({"Xmp.dc.description": {'lang="x-default"': "Oma", 'lang="de-DE"': "Oma wird 90"}})
        image.modify_exif({"Exif.Image.XPKeywords": "Familie\x00"})
    result = landmark("tag", finished_copy, photos, "--overwrite", "--report", tmp_path / "r.csv", *T,
                      artifacts=tmp_path / "artifacts")
    assert result.returncode == 0, result.stderr
    with pyexiv2.Image(str(photos / "plain.jpg")) as image:
        description, keywords = image.read_xmp()["Xmp.dc.description"], image.read_exif()["Exif.Image.XPKeywords"]
    assert description['lang="de-DE"'] == "Oma wird 90"
    assert description['lang="x-default"'].startswith("Oma · ")
    assert "\x00" not in keywords.rstrip("\x00")
    assert keywords.startswith("Familie;")
