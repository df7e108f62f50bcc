"""Managing run folders: rename, delete, and what a run says while it prepares."""
import os

import pytest

from landmark_core.core.errors import RunError
from landmark_core.core.fileio import read_jsonl
from landmark_core.pipeline import create_run, train
from landmark_core.runs.progress import Stage, run_progress
from landmark_core.runs.manage import delete_run, rename_run
from landmark_core.runs.run import list_runs, read_status, write_status

from helpers import tiny_config


def test_rename_keeps_the_run_whole_and_refuses_bad_or_taken_names(tiny_dataset, artifacts):
    first = create_run(tiny_config(tiny_dataset, epochs=1), artifacts)
    second = create_run(tiny_config(tiny_dataset, epochs=1), artifacts)
    renamed = rename_run(first, "baseline-v1")
    assert renamed.name == "baseline-v1"
    assert not first.exists()
    assert {r.run_id for r in list_runs(artifacts)} == {"baseline-v1", second.name}
    for bad in ("", "../escape", "a/b", ".hidden", "x" * 101):
        with pytest.raises(RunError, match="run name"):
            rename_run(renamed, bad)
    with pytest.raises(RunError, match="exists already"):
        rename_run(second, "baseline-v1")
    train(renamed, evaluate_and_export=False)  # a renamed run trains from its new folder
    assert read_status(renamed)["state"] == "finished"


def test_a_training_run_cannot_be_renamed_or_deleted(tiny_dataset, artifacts):
    run_dir = create_run(tiny_config(tiny_dataset, epochs=1), artifacts)
    write_status(run_dir, state="running", pid=os.getpid())  # this process is alive: the run is training
    with pytest.raises(RunError, match="stop it before you rename"):
        rename_run(run_dir, "other")
    with pytest.raises(RunError, match="stop it before you delete"):
        delete_run(run_dir)
    write_status(run_dir, state="cancelled")
    delete_run(run_dir)
    assert not run_dir.exists()
    assert list_runs(artifacts) == []
    assert not any(p.name.startswith(".deleting") for p in (artifacts / "runs").iterdir())
    with pytest.raises(RunError, match="not a run folder"):
        delete_run(artifacts / "runs")


def test_status_says_photos_are_being_decoded_before_the_first_epoch(tiny_dataset, artifacts, tmp_path, monkeypatch):
    monkeypatch.setenv("LANDMARK_CACHE", str(tmp_path / "cold-cache"))  # decoding really happens
    run_dir = create_run(tiny_config(tiny_dataset, epochs=1), artifacts)
    seen = []
    train(run_dir, evaluate_and_export=False, progress=lambda stage, done, total: seen.append(run_progress(run_dir)))
    assert seen
    assert all(p.stage == Stage.DECODING for p in seen)
    assert any(p.decoded and p.decoded[1] > 0 and "decoding photos" in p.describe() for p in seen)
    assert read_status(run_dir).get("stage") is None
    assert run_progress(run_dir).stage is None  # gone once it ends


def test_resume_from_the_app_and_from_the_cli_in_the_background_continues_the_run(tiny_dataset, artifacts):
    """Regression: Resume passed --resume without the run (the log ended in an argparse error and nothing ran)."""
    import subprocess
    import sys
    import time

    from landmark_core.training.events import Callback
    from landmark_core.core.errors import TrainingCancelled
    from landmark_core.runs.launch import launch_background

    class CancelAfterFirstEpoch(Callback):
        def on_epoch_end(self, engine):
            raise TrainingCancelled("test stop")

    def wait_until_done(run_dir):
        deadline = time.time() + 180
        assert read_status(run_dir)["state"] in ("queued", "running")  # at once: not "cancelled" while it starts
        while read_status(run_dir)["state"] in ("queued", "running") and time.time() < deadline:
            time.sleep(0.5)
        return read_status(run_dir)

    for how in ("app", "cli"):
        run_dir = create_run(tiny_config(tiny_dataset, epochs=2), artifacts)
        with pytest.raises(TrainingCancelled):
            train(run_dir, callbacks=[CancelAfterFirstEpoch()])
        assert read_status(run_dir)["state"] == "cancelled"
        if how == "app":  # what the Train page's Resume button calls
            launch_background(run_dir, resume=True)
        else:
            subprocess.run([sys.executable, "-m", "landmark_core", "train", "--resume", str(run_dir), "--background"],
                           env={**os.environ, "LANDMARK_ARTIFACTS": str(artifacts)}, check=True, capture_output=True)
        status = wait_until_done(run_dir)
        assert status["state"] == "finished", (how, status, (run_dir / "log.txt").read_text()[-1500:])
        assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "epoch"] == [1, 2]
