"""Robustness, round two: what a careless or hostile user does to the CLI and the library, one case per test.

Every case failed (crash, data loss or a misleading answer) before the fixes these tests came with.
"""
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import landmark, one_line_error, tiny_config
from landmark_core.data import cache_dir_for, scan_dataset
from landmark_core.data.download import import_dataset
from landmark_core.core.errors import ArchiveError, DataError, ImageError, ModelError, RunError
from landmark_core.export.exporter import export_run
from landmark_core.core.fileio import read_json
from landmark_core.core.images import load_rgb
from landmark_core.tagging.predict import Predictor
from landmark_core.runs.run import read_status
from landmark_core.tagging.decision import STATUSES
from landmark_core.tagging.batch import tag_files
from landmark_core.pipeline import create_run, train, train_new


def run_folders(artifacts: Path) -> list[Path]:
    return sorted((artifacts / "runs").glob("*")) if (artifacts / "runs").exists() else []


# --- 1. NaN models -------------------------------------------------------------------------------

def test_a_non_finite_learning_rate_is_refused_before_a_run_folder_exists(tiny_dataset, tmp_path):
    result = landmark("train", "--data", tiny_dataset, "--lr", "inf", artifacts=tmp_path)
    assert "lr must be a number" in one_line_error(result)
    assert run_folders(tmp_path) == []


def test_a_diverging_run_fails_with_the_reason_and_exports_nothing(tiny_dataset, tmp_path):
    config = tiny_config(tiny_dataset, optimizer="sgd", lr=1e6, momentum=0.0, epochs=2, scheduler="none")
    with pytest.raises(RunError, match="training diverged"):
        train_new(config, tmp_path)
    run = run_folders(tmp_path)[0]
    assert read_status(run)["state"] == "failed"
    assert "diverged" in read_status(run)["error"]
    assert not (run / "model.ts").exists()
    assert not (run / "evaluation.json").exists()


# --- 2. OneCycle with very few steps -------------------------------------------------------------

def test_onecycle_with_one_step_per_epoch_trains(tiny_dataset, tmp_path):
    config = tiny_config(tiny_dataset, scheduler="onecycle", epochs=4, batch_size=64)
    run = train_new(config, tmp_path)  # 36 training photos, batch 64: 1 step an epoch, 4 in all
    assert read_status(run)["state"] == "finished"


# --- 3. Thin images ------------------------------------------------------------------------------

def thin_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def test_thin_images_are_refused_before_any_allocation(finished_copy, tmp_path):
    strip = tmp_path / "strip.png"
    strip.write_bytes(thin_png(200_000, 1))  # under 1 KB; resized to the model's short side: billions of pixels
    with pytest.raises(ImageError, match="too thin"):
        load_rgb(strip, min_side=64)
    result = landmark("predict", finished_copy, strip, artifacts=tmp_path / "artifacts")
    assert "too thin" in one_line_error(result)
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(strip, photos / "a_strip.png")
    shutil.copy(read_json(finished_copy / "predictions.json")[0]["path"], photos / "b_photo.jpg")
    counts = tag_files(Predictor(finished_copy), [photos], out_dir=tmp_path / "out", threshold=0.0, open_set=False,
                       report_path=tmp_path / "r.csv")
    assert counts["unreadable"] == 1
    assert counts["tagged"] == 1  # the library goes on after the strip


# --- 4. A torn tag report ------------------------------------------------------------------------

def test_a_report_torn_mid_line_is_repaired(finished_copy, tmp_path):
    photos = [Path(row["path"]) for row in read_json(finished_copy / "predictions.json")[:3]]
    report = tmp_path / "r.csv"
    predictor = Predictor(finished_copy)
    tag_files(predictor, photos[:2], out_dir=tmp_path / "out", threshold=0.0, report_path=report)
    text = report.read_text()
    report.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 20])  # a kill while writing the last row
    counts = tag_files(predictor, photos, out_dir=tmp_path / "out", threshold=0.0, report_path=report)
    rows = list(csv.DictReader(open(report)))
    assert counts["skipped"] == 1
    assert len(rows) == 3
    assert sorted(row["file"] for row in rows) == sorted(str(p.resolve()) for p in photos)


# --- 5. tag writing into the folder it tags -------------------------------------------------------

def test_tag_does_not_walk_its_own_output(finished_copy, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, row in enumerate(read_json(finished_copy / "predictions.json")[:2]):
        shutil.copy(row["path"], photos / f"p{i}.jpg")
    out = photos / "tagged"
    for _ in range(2):
        counts = tag_files(Predictor(finished_copy), [photos], out_dir=out, threshold=0.0, open_set=False,
                           report_path=out / "tag-report.csv")
    assert counts["unreadable"] == 0
    assert counts["skipped"] == 2
    assert not (out / "tagged").exists()
    rows = list(csv.DictReader(open(out / "tag-report.csv")))
    assert len(rows) == 2
    assert all(Path(row["output"]).is_absolute() for row in rows)


# --- 6. Import -----------------------------------------------------------------------------------

def zip_of(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def test_many_small_well_compressed_entries_are_a_bomb_together(tmp_path):
    zeros = bytes(1 << 20)  # 1 MiB each: under the per-entry check
    bomb = zip_of(tmp_path / "bomb.zip", {f"train/a/{i}.jpg": zeros for i in range(64)})
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(ArchiveError, match="overall"):
        import_dataset(bomb, tmp_path / "data")
    assert not (tmp_path / "data" / "bomb").exists()


def test_an_archive_without_images_is_not_a_dataset(tmp_path):
    texts = zip_of(tmp_path / "notes.zip", {"train/a/readme.txt": b"hello", "train/b/notes.txt": b"world"})
    with pytest.raises(DataError, match="no images"):
        import_dataset(texts, tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


def test_a_killed_import_leaves_nothing_behind_for_long(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = data / f".photos.partial-{int(dead.stdout)}-abc123"
    (stale / "train").mkdir(parents=True)
    archive = tmp_path / "photos.zip"
    shutil.make_archive(str(archive.with_suffix("")), "zip", tiny_dataset)
    import_dataset(archive, data)
    assert not stale.exists()
    assert (data / "photos" / "train").is_dir()


@pytest.mark.parametrize("name", ["../../x", "/tmp/elsewhere", "a/b", "..", ".hidden"])
def test_import_names_cannot_leave_the_data_folder(tiny_dataset, tmp_path, name):
    archive = tmp_path / "photos.zip"
    shutil.make_archive(str(archive.with_suffix("")), "zip", tiny_dataset)
    result = landmark("data", "import", archive, "--name", name, artifacts=tmp_path / "artifacts")
    assert "plain folder name" in one_line_error(result)
    assert not (tmp_path / "x").exists()
    assert not Path("/tmp/elsewhere").exists()


# --- 7. Two trainers on one run ------------------------------------------------------------------

def test_a_run_being_trained_cannot_be_trained_twice(tiny_dataset, tmp_path):
    run = create_run(tiny_config(tiny_dataset, epochs=1), tmp_path)
    # another trainer: a process holding the run's lock (as a training process does) and then killed
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"handle = open({str(run / 'LOCK')!r}, 'a+'); fcntl.flock(handle, fcntl.LOCK_EX)\n"
                               "handle.write(str(os.getpid())); handle.flush(); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = landmark("train", "--resume", run, artifacts=tmp_path)
        assert f"being trained by process {holder.pid}" in one_line_error(result)
        assert read_status(run)["state"] == "queued"
    finally:
        holder.kill()
        holder.wait()
    train(run, resume=True)  # the holder was killed: the kernel released its lock
    assert read_status(run)["state"] == "finished"


def test_resuming_a_finished_run_changes_nothing(finished_copy, tmp_path):
    before = {p.name: p.read_bytes() for p in finished_copy.iterdir() if p.is_file()}
    result = landmark("train", "--resume", finished_copy, artifacts=tmp_path / "artifacts")
    assert "has finished" in one_line_error(result)
    assert {p.name: p.read_bytes() for p in finished_copy.iterdir() if p.is_file()} == before


# --- 8. Signed metadata and moved runs -----------------------------------------------------------

def test_edited_export_metadata_is_refused(finished_copy):
    meta = read_json(finished_copy / "export.json")
    meta["classes"] = list(reversed(meta["classes"]))
    (finished_copy / "export.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="export.json"):
        Predictor(finished_copy)


def test_renamed_and_moved_runs_stay_trusted_and_foreign_keys_bring_nothing(finished_copy, tmp_path, monkeypatch):
    renamed = finished_copy.with_name("my-best-run")
    finished_copy.rename(renamed)
    assert Predictor(renamed).classes  # renamed: still trusted
    elsewhere = tmp_path / "backup" / "deep" / "my-best-run"
    shutil.copytree(renamed, elsewhere)
    assert Predictor(elsewhere).classes  # moved out of any artifacts folder: still trusted
    # a folder that brings its own key next to its runs vouches for nothing
    (tmp_path / "backup" / ".signing_key").write_text("f" * 64)
    other_user = tmp_path / "other-user" / "signing_key"
    monkeypatch.setenv("LANDMARK_KEY", str(other_user))
    with pytest.raises(ModelError, match="landmark export"):
        Predictor(elsewhere)  # another user's key: it says what to do ...
    assert not other_user.exists()  # ... and loading never creates a key
    export_run(elsewhere)
    assert Predictor(elsewhere).classes
    assert other_user.exists()


def test_a_failed_export_keeps_the_last_good_model(finished_copy):
    before = (finished_copy / "model.ts").read_bytes()
    meta_before = (finished_copy / "export.json").read_text()
    checkpoint = finished_copy / "checkpoint_best.pt"
    state = torch.load(checkpoint, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.dtype.is_floating_point and "head" in k)
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    torch.save(state, checkpoint)
    with pytest.raises(ModelError, match="non-finite"):
        export_run(finished_copy)
    assert (finished_copy / "model.ts").read_bytes() == before
    assert (finished_copy / "export.json").read_text() == meta_before
    assert Predictor(finished_copy).classes  # still loads
    assert not list(finished_copy.glob(".model.ts*"))


# --- 9. One line, not an internal error ----------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--label-smoothing", "5"], "label_smoothing must be"),
    (["--weight-decay", "-1"], "weight_decay must be"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "device"),
    (["--device", "bogus"], "unknown device"),
    (["--image-size", "1000000"], "image_size must be"),
    (["--epochs", "1", "--freeze-epochs", "8"], "freeze_epochs (8) cannot exceed epochs (1)"),
])
def test_bad_training_flags_are_one_line_before_any_run_folder(tiny_dataset, tmp_path, args, message):
    result = landmark("train", "--data", tiny_dataset, "--model", "scratch_cnn", *args, artifacts=tmp_path)
    assert message in one_line_error(result)
    assert run_folders(tmp_path) == []


def test_resume_with_a_damaged_config_is_one_line(tiny_dataset, tmp_path):
    run = create_run(tiny_config(tiny_dataset, epochs=1), tmp_path)
    (run / "config.json").write_text('{"model": "scratch_cnn", ')
    assert "config.json is damaged" in one_line_error(landmark("train", "--resume", run, artifacts=tmp_path))


class Payload:  # what an attacker pickles into a checkpoint
    def __reduce__(self):
        return (os.system, ("touch /tmp/landmark-pwned",))


def test_a_pickle_checkpoint_is_never_run_and_fails_the_run_in_one_line(tiny_dataset, tmp_path):
    run = create_run(tiny_config(tiny_dataset, epochs=1), tmp_path)
    torch.save({"model": Payload()}, run / "checkpoint_last.pt")
    result = landmark("train", "--resume", run, artifacts=tmp_path)
    assert "cannot be read as a plain weights checkpoint" in one_line_error(result)
    assert not Path("/tmp/landmark-pwned").exists()
    assert read_status(run)["state"] == "failed"


def test_runs_lists_everything_despite_a_damaged_status_and_survives_a_closed_pipe(finished_copy, tiny_dataset, tmp_path):
    artifacts = tmp_path / "artifacts"
    damaged = create_run(tiny_config(tiny_dataset, epochs=1), artifacts)
    (damaged / "status.json").write_text("{not json")
    result = landmark("runs", artifacts=artifacts)
    assert result.returncode == 0
    assert damaged.name in result.stdout
    assert finished_copy.name in result.stdout
    piped = subprocess.run(f"{sys.executable} -m landmark_core runs | head -1", shell=True, capture_output=True,
                           text=True, env={**os.environ, "LANDMARK_ARTIFACTS": str(artifacts)}, timeout=120)
    assert piped.stdout.count("\n") == 1, piped.stderr
    assert "Error" not in piped.stderr, piped.stderr


def test_an_unwritable_tag_output_is_one_line(finished_copy, tmp_path):
    blocked = tmp_path / "out"
    blocked.write_text("a file where the output folder should be")
    photo = read_json(finished_copy / "predictions.json")[0]["path"]
    result = landmark("tag", finished_copy, photo, "--out", blocked, "--min-confidence", "0", "--tag-unfamiliar",
                      artifacts=tmp_path / "artifacts")
    assert "out" in one_line_error(result)


def test_a_relative_data_path_is_stored_absolute(tiny_dataset, tmp_path):
    shutil.copytree(tiny_dataset, tmp_path / "photos")
    result = landmark("train", "--data", "photos", "--model", "scratch_cnn", "--epochs", "1", "--image-size", "32",
                      "--batch-size", "8", "--device", "cpu", cwd=tmp_path, artifacts=tmp_path / "artifacts")
    assert result.returncode == 0, result.stderr
    run = Path(result.stdout.strip().splitlines()[-1])
    run = run if run.is_absolute() else tmp_path / run
    assert read_json(run / "config.json")["data"] == str((tmp_path / "photos").resolve())
    assert landmark("evaluate", run, cwd="/", artifacts=tmp_path / "artifacts").returncode == 0


# --- 10. Datasets --------------------------------------------------------------------------------

def test_datasets_that_cannot_train_a_classifier(tiny_dataset, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(tiny_dataset / "train" / scan_dataset(tiny_dataset).classes[0], one / "only_class")
    with pytest.raises(DataError, match="at least 2"):
        create_run(tiny_config(one), tmp_path / "artifacts")
    only_test = tmp_path / "only_test"
    shutil.copytree(tiny_dataset / "test", only_test / "test")
    with pytest.raises(DataError, match="no train/"):
        scan_dataset(only_test)
    looped = tmp_path / "looped"
    shutil.copytree(tiny_dataset, looped)
    (looped / "train" / "zz_everything").symlink_to(looped / "train", target_is_directory=True)
    with pytest.raises(DataError, match="links back"):
        scan_dataset(looped)
    assert run_folders(tmp_path / "artifacts") == []


def test_stats_leave_the_photos_folder_alone_and_find_truncated_jpegs(tiny_dataset, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(tiny_dataset, photos)
    jpeg = next((photos / "train").rglob("*.jpg"))
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) * 2 // 3])  # a copy that stopped two thirds of the way
    result = landmark("data", "stats", photos, artifacts=tmp_path / "artifacts")
    assert result.returncode == 0, result.stderr
    assert jpeg.name in result.stdout + result.stderr
    assert not (photos / ".landmark_cache").exists()
    assert sorted(p.name for p in photos.iterdir()) == sorted(p.name for p in tiny_dataset.iterdir())
    assert cache_dir_for(photos).is_dir()


def test_tag_progress_ends_its_line(finished_copy, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    source = read_json(finished_copy / "predictions.json")[0]["path"]
    for i in range(50):
        shutil.copy(source, photos / f"p{i:02d}.jpg")
    result = landmark("tag", finished_copy, photos, "--out", tmp_path / "out", artifacts=tmp_path / "artifacts")
    assert result.returncode == 0, result.stderr
    summary = next(line for line in result.stderr.splitlines() if "tagged when" in line)
    assert summary.startswith("tagged when")  # on a line of its own, not glued to the last progress update


# --- fuzz: the whole tag path, with thin and huge aspect ratios ----------------------------------

@pytest.fixture(scope="module")
def fuzz_predictor(trained_run):
    return Predictor(trained_run)  # read only


@settings(max_examples=int(os.environ.get("LANDMARK_FUZZ_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(width=st.integers(1, 4000), height=st.integers(1, 4000), thin=st.sampled_from([None, 1, 2, 7]),
       fmt=st.sampled_from(["PNG", "JPEG", "GIF"]), cut=st.one_of(st.none(), st.floats(0.1, 0.99)))
def test_fuzzed_photos_through_the_whole_tag_path(fuzz_predictor, tmp_path_factory, width, height, thin, fmt, cut):
    if thin is not None:  # a strip: one side tiny, the other as long as the format allows
        longest = 200_000 if fmt == "PNG" else 65_000
        width, height = (thin, min(longest, height * 50)) if width < height else (min(longest, width * 50), thin)
    folder = tmp_path_factory.mktemp("fuzzed")
    buffer = io.BytesIO()
    Image.new("RGB" if fmt != "GIF" else "P", (width, height)).save(buffer, fmt)
    data = buffer.getvalue()
    (folder / f"photo.{fmt.lower()}").write_bytes(data[: int(len(data) * cut)] if cut else data)
    counts = tag_files(fuzz_predictor, [folder], out_dir=folder / "out", threshold=0.0, open_set=False,
                       report_path=folder / "out" / "report.csv")
    assert sum(counts[s] for s in STATUSES) == 1
    row = next(csv.DictReader(open(folder / "out" / "report.csv")))
    assert row["status"] in STATUSES
    assert row["status"] != "unreadable" or row["error"]


def test_out_cannot_be_the_folder_being_tagged(finished_copy, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(read_json(finished_copy / "predictions.json")[0]["path"], photos / "p.jpg")
    before = (photos / "p.jpg").read_bytes()
    result = landmark("tag", finished_copy, photos, "--out", photos, "--min-confidence", "0", "--tag-unfamiliar",
                      "--report", tmp_path / "r.csv", artifacts=tmp_path / "artifacts")
    assert "would overwrite the originals" in one_line_error(result)
    assert (photos / "p.jpg").read_bytes() == before
