"""Review and teach (`landmark review`, the Review tags page): verdicts become training photos, undoable; a
retrained model re-tags the photos the model decided, the earlier tags taken back out of copies, sidecars and
photos tagged in place (read back with exiftool)."""
import json
import subprocess
from pathlib import Path

import pytest
import pyexiv2

from helpers import NEW_CLASS, tagged_report
from landmark_core.core.scenes import DEMO_CLASSES
from landmark_core.core.errors import DataError, LandmarkError
from landmark_core.geo.places import place_for
from landmark_core.tagging.predict import Predictor
from landmark_core.curation.review import REVIEWED_OUTCOMES, Review, Verdict, find_reports
from landmark_core.runs.run import Run
from landmark_core.tagging.report import report_rows
from landmark_core.tagging.batch import tag_files
from helpers import landmark, one_line_error
from helpers import USER_SIDECAR, exiftool, reader


def originals(root: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".xmp"}


def test_verdicts_become_training_photos_and_the_retrained_run_retags_the_library(teachable, tmp_path):
    run, data, library = teachable
    report = tagged_report(run, library, tmp_path)
    before = originals(library)
    review = Review(report)
    items = review.items()
    assert {item.status for item in items} == {"tagged"}
    assert len(items) == len(before)
    assert [item.doubt for item in items] == sorted(item.doubt for item in items)  # the least certain first

    new = sorted(library.glob("new-*.jpg"))
    for photo in new:
        entry = review.judge(photo, Verdict.CORRECTED, NEW_CLASS, new_class=True)
        assert (data / entry["copy"]).read_bytes() == photo.read_bytes()
        assert entry["copy"].startswith(f"train/{NEW_CLASS}/")
    assert review.judge(library / "noise.jpg", Verdict.NOT_A_LANDMARK)["copy"] == "unknown/noise.jpg"
    stale_copy = Path(report_rows(report)[str(library / "noise.jpg")]["output"])
    assert stale_copy.is_file()  # the noise photo was tagged: its copy carries a wrong place until the re-tag
    known = next(item for item in items if Path(item.file).name.startswith(item.prediction))  # tagged right
    assert review.judge(known.file, Verdict.CONFIRMED)["class"] == known.prediction

    result = review.retrain()
    new_run = Run(result.run)
    assert new_run.path != run
    assert Run(run).exported  # a new run beside the old one, which stays
    assert new_run.path.parent == run.parent
    assert NEW_CLASS in new_run.export_meta["classes"]
    learned = set(new_run.split["train"]) | set(new_run.split.get("val", []))
    assert {str(data / "train" / NEW_CLASS / p.name) for p in new} <= learned
    # the re-tag keeps the report's own decision rule (every photo tagged): only the verdict "not a landmark" untags
    assert result.before["tagged"] == len(before)
    assert (result.after["tagged"], result.after["unknown"]) == (len(before) - 1, 1)
    assert review.summary["run"] == str(new_run.path)  # the report now speaks for the new model

    rows = report_rows(report)
    place = place_for(NEW_CLASS)
    for photo in new:
        row = rows[str(photo)]
        assert (row["status"], row["prediction"]) == ("tagged", NEW_CLASS)
        assert row["note"].startswith("corrected by review; the model says")
        read = exiftool(Path(row["output"]))
        assert abs(read["Composite:GPSLatitude"] - place.latitude) < 1e-4
        assert abs(read["Composite:GPSLongitude"] - place.longitude) < 1e-4
        assert place.display_name in read["XMP-dc:Subject"]
    noise = rows[str(library / "noise.jpg")]
    assert noise["status"] == "unknown"
    assert noise["note"].startswith("not a landmark (reviewed)")
    assert not stale_copy.exists()  # our copy with the wrong place is gone; nothing else in --out was touched
    assert rows[known.file]["note"].startswith("confirmed by review")
    assert originals(library) == before  # the user's photos: byte for byte as they were
    changed = {Path(change["file"]).name for change in result.changes}
    assert {"noise.jpg"} | {p.name for p in new} <= changed


def test_undo_takes_a_verdict_back_with_its_copy_and_the_class_folder_it_made(teachable, tmp_path):
    run, data, library = teachable
    review = Review(tagged_report(run, library, tmp_path))
    photo = sorted(library.glob("new-*.jpg"))[0]
    review.judge(photo, Verdict.CORRECTED, NEW_CLASS, new_class=True)
    assert (data / "train" / NEW_CLASS).is_dir()
    taken_back = review.undo()
    assert taken_back["file"] == str(photo)
    assert review.verdicts() == {}
    assert not (data / "train" / NEW_CLASS).exists()  # a class folder without photos would be a class without photos

    first = review.judge(photo, Verdict.NOT_A_LANDMARK)
    second = review.judge(photo, Verdict.CORRECTED, DEMO_CLASSES[0])  # a second verdict replaces the first
    assert not (data / first["copy"]).exists()
    assert (data / second["copy"]).is_file()
    assert list(review.verdicts()) == [str(photo)]

    (data / second["copy"]).write_bytes(b"the user's own file now")
    with pytest.raises(DataError, match="changed since the review copied it"):
        review.undo(photo)
    assert (data / second["copy"]).read_bytes() == b"the user's own file now"  # never deleted: not our copy


@pytest.mark.parametrize("bad", ["../evil", "unknown", "_private", ".hidden", " spaced", "a/b"])
def test_a_correction_to_a_name_that_is_no_class_folder_is_refused_and_copies_nothing(teachable, tmp_path, bad):
    run, data, library = teachable
    review = Review(tagged_report(run, library, tmp_path))
    files_before = sorted(data.rglob("*"))
    with pytest.raises(DataError, match="cannot be a class folder name"):
        review.judge(library / "noise.jpg", Verdict.CORRECTED, bad, new_class=True)
    assert sorted(data.rglob("*")) == files_before
    assert review.verdicts() == {}


def test_confirming_a_photo_that_was_not_tagged_is_refused(teachable, tmp_path):
    run, data, library = teachable
    report = tmp_path / "strict.csv"
    tag_files(Predictor(run), [library / "noise.jpg"], report_path=report, out_dir=tmp_path / "out",
              threshold=1.0, open_set=False)  # nothing passes a probability threshold of 1
    with pytest.raises(LandmarkError, match="no tag to confirm"):
        Review(report).judge(library / "noise.jpg", Verdict.CONFIRMED)
    with pytest.raises(LandmarkError, match="is not a photo of the report"):
        Review(report).judge(sorted(library.glob("new-*.jpg"))[0], Verdict.NOT_A_LANDMARK)


def _user_fields(path: Path) -> None:
    """A rating and a keyword of the user's, written into a JPEG the way a photo manager does."""
    with pyexiv2.Image(str(path)) as image:
        image.modify_xmp({"Xmp.xmp.Rating": "3", "Xmp.dc.subject": ["Holiday"]})
        image.modify_iptc({"Iptc.Application2.Keywords": ["Holiday"]})


@pytest.mark.parametrize("where", ["sidecars", "in_place"])
def test_a_retag_takes_our_earlier_tag_back_out_and_keeps_the_users_fields(teachable, tmp_path, where):
    run, data, library = teachable
    photo = library / "noise.jpg"
    written = photo.with_name("noise.jpg.xmp") if where == "sidecars" else photo
    if where == "sidecars":
        written.write_bytes(USER_SIDECAR)
    else:
        _user_fields(photo)
    report = tagged_report(run, library, tmp_path, **{where: True})
    first = report_rows(report)[str(photo)]
    first_place = place_for(first["prediction"])
    assert first_place.display_name in exiftool(written)["XMP-dc:Subject"]

    review = Review(report)
    review.judge(photo, Verdict.NOT_A_LANDMARK)
    review.retag(run)
    read = exiftool(written)
    assert "Composite:GPSLatitude" not in read
    assert "XMP-exif:GPSLatitude" not in read
    subjects = read["XMP-dc:Subject"] if isinstance(read["XMP-dc:Subject"], list) else [read["XMP-dc:Subject"]]
    assert first_place.display_name not in subjects
    assert "landmark" not in subjects
    assert "Holiday" in subjects
    assert read["XMP-xmp:Rating"] == 3
    assert "XMP-photoshop:City" not in read

    other = next(c for c in Predictor(run).classes if c != first["prediction"])
    review.judge(photo, Verdict.CORRECTED, other)
    review.retag(run)
    read = exiftool(written)
    place = place_for(other)
    latitude = read["XMP-exif:GPSLatitude"] if where == "sidecars" else read["Composite:GPSLatitude"]
    assert abs(latitude - place.latitude) < 1e-4
    assert read["XMP-dc:Subject"].count("Holiday") == 1
    assert place.display_name in read["XMP-dc:Subject"]
    assert first_place.display_name not in read["XMP-dc:Subject"]
    assert read["XMP-xmp:Rating"] == 3
    assert read["XMP-photoshop:City"] == place.region


def test_landmark_review_lists_judges_undoes_and_refuses_bad_input_in_one_line(teachable, tmp_path):
    run, data, library = teachable
    report = tagged_report(run, library, tmp_path)
    listed = landmark("review", report)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == len(originals(library))
    assert all(line.startswith("tagged") for line in lines)

    photo = sorted(library.glob("new-*.jpg"))[0]
    assert "is not a class of" in one_line_error(landmark("review", report, "--correct", f"{photo}={NEW_CLASS}"))
    judged = landmark("review", report, "--new-class", f"{photo}={NEW_CLASS}", "--not-landmark", library / "noise.jpg")
    assert judged.returncode == 0, judged.stderr
    assert (data / "train" / NEW_CLASS / photo.name).is_file()
    assert (data / "unknown" / "noise.jpg").is_file()
    as_json = json.loads(landmark("review", report, "--json").stdout)
    assert {item["file"]: (item["verdict"] or {}).get("verdict") for item in as_json}[str(photo)] == "corrected"

    assert landmark("review", report, "--undo").returncode == 0  # the latest verdict: the noise photo's
    assert not (data / "unknown" / "noise.jpg").exists()
    assert (data / "train" / NEW_CLASS / photo.name).is_file()

    assert "--correct takes FILE=CLASS" in one_line_error(landmark("review", report, "--correct", photo))
    assert "is not a photo of the report" in one_line_error(landmark("review", report, "--not-landmark", tmp_path / "x.jpg"))
    assert "is not a tag report" in one_line_error(landmark("review", tmp_path / "missing.csv"))
    (tmp_path / "notes.csv").write_text("my,own\nnotes,here\n")
    assert "is not a tag report" in one_line_error(landmark("review", tmp_path / "notes.csv"))
    gone = sorted(library.glob("new-*.jpg"))[1]
    gone.unlink()  # deleted from the library since it was tagged
    assert "No such file" in one_line_error(landmark("review", report, "--not-landmark", gone))
    assert not (data / "unknown" / gone.name).exists()


def test_a_report_from_before_reviews_says_to_tag_again(teachable, tmp_path):
    run, data, library = teachable
    report = tagged_report(run, library, tmp_path)
    summary = report.with_suffix(".json")
    old = {k: v for k, v in json.loads(summary.read_text()).items() if k not in ("run", "destination", "paths")}
    summary.write_text(json.dumps(old))
    assert landmark("review", report).returncode == 0  # listing needs no model
    assert "tag the photos again" in one_line_error(landmark("review", report, "--not-landmark", library / "noise.jpg"))
    assert "tag the photos again" in one_line_error(landmark("review", report, "--retrain"))


def test_find_reports_offers_tag_reports_and_nothing_else(teachable, tmp_path):
    run, data, library = teachable
    report = tagged_report(run, library, tmp_path)
    (tmp_path / "other.csv").write_text("a,b\n")
    (tmp_path / "other.json").write_text("{}")
    assert find_reports([tmp_path]) == [report.resolve()]
    assert REVIEWED_OUTCOMES == ("tagged", "abstained", "unknown", "failed")


def test_a_torn_or_hand_edited_review_log_loses_no_verdict_and_deletes_nothing_outside_the_dataset(teachable, tmp_path):
    run, data, library = teachable
    review = Review(tagged_report(run, library, tmp_path))
    photo = sorted(library.glob("new-*.jpg"))[0]
    review.judge(photo, Verdict.CORRECTED, NEW_CLASS, new_class=True)
    with open(review.log_path, "a") as log:
        log.write('{"file": "torn by a kill')  # the writer died mid-line
    review.judge(library / "noise.jpg", Verdict.NOT_A_LANDMARK)  # starts a line of its own
    assert set(review.verdicts()) == {str(photo), str(library / "noise.jpg")}

    outside = tmp_path / "precious.txt"
    outside.write_text("not the dataset's")
    import hashlib
    forged = {"file": str(library / "noise.jpg"), "verdict": "not_a_landmark", "copy": "../precious.txt",
              "sha256": hashlib.sha256(outside.read_bytes()).hexdigest()}
    with open(review.log_path, "a") as log:
        log.write(json.dumps(forged) + "\n" + '{"file": 3}\n' + "not json\n")
    with pytest.raises(DataError, match="outside the dataset"):
        review.undo()
    assert outside.read_text() == "not the dataset's"
    assert set(review.verdicts()) == {str(photo), str(library / "noise.jpg")}  # the junk lines are passed over


def test_a_retag_leaves_the_users_own_keywords_and_a_position_the_user_set_after_tagging(teachable, tmp_path):
    run, data, library = teachable
    photo, sidecar = library / "noise.jpg", library / "noise.jpg.xmp"
    countries = ["United Kingdom", "United States", "France"]  # every tiny class's country: one is ours too
    with pyexiv2.ImageData(USER_SIDECAR) as image:
        image.modify_xmp({"Xmp.dc.subject": ["Holiday", "landmark", *countries]})
        sidecar.write_bytes(image.get_bytes())
    report = tagged_report(run, library, tmp_path, sidecars=True)
    first = report_rows(report)[str(photo)]
    assert first["status"] == "tagged"
    assert json.loads(first["added"])["keywords"] == [first["landmark"], first["region"]]
    review = Review(report)
    review.judge(photo, Verdict.NOT_A_LANDMARK)
    review.retag(run)
    subjects = exiftool(sidecar)["XMP-dc:Subject"]
    assert sorted(subjects) == sorted(["Holiday", "landmark", *countries])  # the user's, though one equals ours

    other = next(c for c in Predictor(run).classes if c != first["prediction"])
    review.judge(photo, Verdict.CORRECTED, other)
    review.retag(run)
    subprocess.run([reader("exiftool"), "-q", "-overwrite_original", "-XMP-exif:GPSLatitude=10.5",  # the user
                    "-XMP-exif:GPSLongitude=20.25", str(sidecar)], check=True)  # moves the pin by hand afterwards
    review.judge(photo, Verdict.NOT_A_LANDMARK)
    review.retag(run)
    read = exiftool(sidecar)
    assert (read["XMP-exif:GPSLatitude"], read["XMP-exif:GPSLongitude"]) == (10.5, 20.25)  # the user's pin stays
    assert place_for(other).display_name not in read["XMP-dc:Subject"]


def test_a_retag_never_deletes_the_copy_of_a_photo_whose_original_is_gone_nor_a_sidecar_it_did_not_write(
        teachable, tmp_path):
    run, data, library = teachable
    report = tagged_report(run, library, tmp_path)
    rows = report_rows(report)
    gone, odd = sorted(library.glob("new-*.jpg"))[0], library / "noise.jpg"
    gone_copy, odd_copy = Path(rows[str(gone)]["output"]), Path(rows[str(odd)]["output"])
    users_sidecar = odd_copy.with_name(odd_copy.name + ".xmp")
    users_sidecar.write_bytes(USER_SIDECAR)  # digiKam's, for the copy: not ours
    review = Review(report)
    review.judge(odd, Verdict.NOT_A_LANDMARK)
    gone.unlink()  # the original leaves the library (a card taken out, a photo deleted)
    review.retag(run)
    assert gone_copy.is_file()  # now the only copy of that photo
    assert report_rows(report)[str(gone)]["status"] == "tagged"
    assert not odd_copy.exists()
    assert users_sidecar.read_bytes() == USER_SIDECAR


def test_a_correction_finds_the_class_by_its_name_a_hidden_file_name_still_trains_and_a_moved_copy_undoes(
        teachable, tmp_path):
    run, data, library = teachable
    hidden = library / "_DSC0001.jpg"
    hidden.write_bytes((library / "noise.jpg").read_bytes())
    review = Review(tagged_report(run, library, tmp_path))
    entry = review.judge(hidden, Verdict.CORRECTED, "golden gate bridge")
    assert entry["class"] == "09.Golden_Gate_Bridge"
    assert Path(entry["copy"]).name == "review-_DSC0001.jpg"
    from landmark_core.data import scan_dataset
    assert str(data / entry["copy"]) in {s.path for s in scan_dataset(data).train}  # a photo training reads
    (data / entry["copy"]).rename(data / "moved-away.jpg")
    taken_back = review.undo(hidden)
    assert taken_back["copy_was_gone"]
    assert review.verdicts() == {}
    assert (data / "moved-away.jpg").is_file()
