"""Tags in XMP sidecars beside the photos (`landmark tag --sidecars`): what digiKam, darktable, Lightroom and
Immich read, the originals never touched, read back with exiftool and the exiv2 command-line tool."""
import csv
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from landmark_core.core.fileio import read_json
from landmark_core.tagging.predict import Predictor
from landmark_core.tagging.decision import decide_for
from helpers import USER_SIDECAR, exiftool, landmark, reader

T = ("--min-confidence", "0", "--tag-unfamiliar")


def exiv2(path: Path) -> dict:
    """Key -> value as the exiv2 tool prints an XMP file's properties."""
    out = subprocess.run([reader("exiv2"), "-PXkv", str(path)], capture_output=True, text=True, check=True)
    return dict(line.split(None, 1) if " " in line.strip() else (line.strip(), "") for line in out.stdout.splitlines())


@pytest.fixture()
def library(finished_copy, tmp_path) -> Path:
    """Photos in two folders: a JPEG, a PNG, and a JPEG whose sidecar the user already edited."""
    root = tmp_path / "library"
    (root / "2024").mkdir(parents=True)
    (root / "2025").mkdir()
    photo = Path(read_json(finished_copy / "predictions.json")[0]["path"])
    shutil.copy(photo, root / "2024" / "a.jpg")
    Image.open(photo).save(root / "2024" / "b.png")
    shutil.copy(photo, root / "2025" / "c.jpg")
    (root / "2025" / "c.jpg.xmp").write_bytes(USER_SIDECAR)
    return root


def originals(root: Path) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.suffix != ".xmp"}


def test_sidecars_beside_the_photos_are_read_by_exiftool_and_exiv2_and_the_photos_stay_byte_identical(
        finished_copy, library, tmp_path):
    before = originals(library)
    result = landmark("tag", finished_copy, library, "--sidecars", "--report", tmp_path / "r.csv", *T,
                      artifacts=tmp_path / "artifacts")
    assert result.returncode == 0, result.stderr
    assert originals(library) == before
    decision = decide_for(Predictor(finished_copy), library / "2024" / "a.jpg", threshold=0.0, open_set=False)
    place = decision.place
    for sidecar in (library / "2024" / "a.jpg.xmp", library / "2024" / "b.png.xmp", library / "2025" / "c.jpg.xmp"):
        tags = exiftool(sidecar)
        assert tags["XMP-exif:GPSLatitude"] == pytest.approx(place.latitude, abs=1e-4)
        assert tags["XMP-exif:GPSLongitude"] == pytest.approx(place.longitude, abs=1e-4)
        assert decision.name in tags["XMP-dc:Subject"]
        assert tags["XMP-photoshop:City"] == place.region
        assert tags["XMP-photoshop:Country"] == place.country
        assert decision.name in tags["XMP-dc:Description"]
        properties = exiv2(sidecar)
        assert decision.name in properties["Xmp.dc.subject"]
        assert properties["Xmp.photoshop.Country"] == place.country
        assert properties["Xmp.exif.GPSLatitude"].startswith(str(int(abs(place.latitude))))
    with open(tmp_path / "r.csv", newline="") as handle:
        report = list(csv.DictReader(handle))
    assert sorted(Path(row["output"]).name for row in report) == ["a.jpg.xmp", "b.png.xmp", "c.jpg.xmp"]


def test_an_edited_sidecar_keeps_its_rating_and_keywords_and_gets_ours_once(finished_copy, library, tmp_path):
    for _ in range(2):
        result = landmark("tag", finished_copy, library / "2025", "--sidecars", "--report", tmp_path / "r.csv", *T,
                          artifacts=tmp_path / "artifacts")
        assert result.returncode == 0, result.stderr
        (tmp_path / "r.csv").unlink()  # tag again, not skip
    tags = exiftool(library / "2025" / "c.jpg.xmp")
    keywords = tags["XMP-dc:Subject"]
    assert tags["XMP-xmp:Rating"] == 3
    assert "Holiday" in keywords
    assert "Family" in keywords
    name = decide_for(Predictor(finished_copy), library / "2025" / "c.jpg", threshold=0.0, open_set=False).name
    assert keywords.count(name) == 1
    assert len(keywords) == len(set(keywords))


def test_stem_names_and_a_mirror_folder_for_read_only_libraries(finished_copy, library, tmp_path):
    before = originals(library)
    listing = sorted(p.relative_to(library) for p in library.rglob("*"))
    mirror = tmp_path / "mirror"
    result = landmark("tag", finished_copy, library, "--sidecar-dir", mirror, "--sidecar-name", "stem", *T,
                      artifacts=tmp_path / "artifacts")
    assert result.returncode == 0, result.stderr
    assert sorted(p.relative_to(library) for p in library.rglob("*")) == listing  # nothing written in the library
    assert originals(library) == before
    assert sorted(p.relative_to(mirror).as_posix() for p in mirror.rglob("*.xmp")) == ["2024/a.xmp", "2024/b.xmp",
                                                                                       "2025/c.xmp"]
    assert (mirror / "tag-report.csv").exists()


def test_a_sidecar_that_cannot_be_written_is_reported_and_the_run_goes_on(finished_copy, library, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "2024").write_text("a file where the mirrored folder should be")  # so 2024's sidecars cannot be made
    result = landmark("tag", finished_copy, library, "--sidecar-dir", mirror, *T, artifacts=tmp_path / "artifacts")
    assert result.returncode == 0, result.stderr
    with open(mirror / "tag-report.csv", newline="") as handle:
        by_name = {Path(row["file"]).name: row for row in csv.DictReader(handle)}
    assert by_name["a.jpg"]["status"] == by_name["b.png"]["status"] == "failed"
    assert "cannot write" in by_name["a.jpg"]["error"]
    assert by_name["c.jpg"]["status"] == "tagged"
    assert (mirror / "2025" / "c.jpg.xmp").exists()


def test_two_photos_of_one_stem_do_not_share_a_sidecar(finished_copy, library, tmp_path):
    shutil.copy(library / "2024" / "a.jpg", library / "2024" / "b.jpg")  # b.jpg and b.png: one b.xmp
    result = landmark("tag", finished_copy, library / "2024", "--sidecars", "--sidecar-name", "stem", "--report",
                      tmp_path / "r.csv", *T, artifacts=tmp_path / "artifacts")
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "r.csv", newline="") as handle:
        statuses = sorted(row["status"] for row in csv.DictReader(handle) if Path(row["file"]).stem == "b")
    assert statuses == ["failed", "tagged"]


def test_sidecars_take_neither_out_nor_overwrite(finished_copy, library, tmp_path):
    for extra in (("--out", tmp_path / "o"), ("--overwrite",)):
        result = landmark("tag", finished_copy, library, "--sidecars", *extra, artifacts=tmp_path / "artifacts")
        assert result.returncode == 2
        assert "neither --out nor --overwrite" in result.stderr
