"""The CLI as a user runs it: real subprocesses, one-line errors, JSON output."""
import json
import os
import subprocess
import sys

import pytest

from landmark_core.cli import main


def run_cli(*args, env_artifacts=None, check=True):
    env = {**os.environ}
    if env_artifacts:
        env["LANDMARK_ARTIFACTS"] = str(env_artifacts)
    result = subprocess.run([sys.executable, "-m", "landmark_core", *map(str, args)], capture_output=True, text=True,
                            env=env, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_help_for_every_command():
    for args in (["--help"], ["data", "--help"], ["train", "--help"], ["predict", "--help"], ["evaluate", "--help"],
                 ["export", "--help"], ["data", "demo", "--help"], ["data", "download", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 0


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "/no/such/folder"], "dataset folder not found"),
    (["predict", "/no/such/run", "x.jpg"], "not a run folder"),
    (["evaluate", "nope"], "not a run folder"),
    (["data", "stats", "/no/such/folder"], "dataset folder not found"),
    (["train"], "--data"),
])
def test_errors_are_one_line_without_traceback(tmp_path, args, message):
    result = run_cli(*args, env_artifacts=tmp_path, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error:")
    assert message in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_train_then_predict_from_the_cli(tiny_dataset, tmp_path):
    result = run_cli("train", "--data", tiny_dataset, "--model", "scratch_cnn", "--epochs", "1", "--image-size", "32",
                     "--batch-size", "8", "--device", "cpu", env_artifacts=tmp_path)
    run_dir = result.stdout.strip().splitlines()[-1]
    assert os.path.isdir(run_dir)
    assert "epoch 1/1" in result.stderr
    # the run's own clock in the progress line, and landmark runs describes the run as the Train page does
    import re
    assert re.search(r"epoch 1/1 .* elapsed \d+m \d\ds", result.stderr), result.stderr
    listed = run_cli("runs", env_artifacts=tmp_path).stdout
    assert re.search(rf"{os.path.basename(run_dir)}  scratch_cnn +finished · 1 of 1 epochs · trained in \d+m \d\ds", listed), listed
    image = next((tiny_dataset / "test").rglob("*.jpg"))
    text = run_cli("predict", run_dir, image, env_artifacts=tmp_path).stdout.splitlines()
    # first line: the photo and the tag decision; then the top-5 (tiny set: 3 classes, so all 3)
    assert text[0].split(": ")[0] == str(image)
    assert len(text) == 1 + 3
    assert text[0].split(": ")[1].split()[0].strip(",") in ("tagged", "unknown", "abstained")
    as_json = json.loads(run_cli("predict", run_dir, image, "--json", env_artifacts=tmp_path).stdout)
    assert as_json[0]["image"] == str(image)
    assert len(as_json[0]["predictions"]) == 3
    assert as_json[0]["outcome"] in ("tagged", "unknown", "abstained")
    assert 0 < as_json[0]["familiarity"] <= 1
    assert as_json[0]["predictions"][0]["class"] in text[1]
    listing = run_cli("runs", env_artifacts=tmp_path).stdout
    assert "finished" in listing
    assert "scratch_cnn" in listing


def test_predict_reports_bad_images_but_predicts_good_ones(trained_run, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    from landmark_core.core.fileio import read_json
    good = read_json(trained_run / "predictions.json")[0]["path"]
    result = run_cli("predict", trained_run, bad, good, "--json", check=False)
    assert result.returncode == 1
    assert "error: bad.jpg" in result.stderr
    rows = json.loads(result.stdout)
    assert "error" in rows[0]
    assert len(rows[1]["predictions"]) == 3


def test_data_demo_and_stats(tmp_path):
    out = tmp_path / "demo"
    run_cli("data", "demo", "--out", out, "--train-per-class", "2", "--test-per-class", "1")
    stats = json.loads(run_cli("data", "stats", out, "--json").stdout)
    assert stats["classes"] >= 10
    assert all(c == {"train": 2, "test": 1} for c in stats["counts"].values())


def test_evaluate_reexports_when_the_calibration_changed(trained_run, tmp_path, monkeypatch, capsys):
    """The tag threshold evaluate writes assumes its calibrated probabilities: the exported model must give them."""
    import shutil
    from landmark_core.runs.run import Run
    EXPORT_META = Run.EXPORT_META
    from landmark_core.core.fileio import read_json, write_json_atomic
    from landmark_core.tagging.predict import Predictor
    monkeypatch.setenv("LANDMARK_ARTIFACTS", str(tmp_path))
    copy = tmp_path / "runs" / trained_run.name
    shutil.copytree(trained_run, copy)
    stale = {**read_json(copy / EXPORT_META), "temperature": 123.0}
    write_json_atomic(copy / EXPORT_META, stale)
    assert main(["evaluate", str(copy)]) == 0
    assert "re-exported" in capsys.readouterr().err
    evaluation = read_json(copy / "evaluation.json")
    assert read_json(copy / EXPORT_META)["temperature"] == pytest.approx(evaluation["calibration"]["temperature"])
    assert Predictor(copy).module.temperature == pytest.approx(evaluation["calibration"]["temperature"])
    assert main(["evaluate", str(copy)]) == 0  # unchanged calibration: the export stays as it is
    assert "re-exported" not in capsys.readouterr().err


def test_reevaluating_a_run_exports_it_again_only_when_its_decision_changed(trained_run, tmp_path):
    """One policy for every caller (the CLI's evaluate, and any library user): the export follows evaluation."""
    import shutil

    from landmark_core.core.fileio import write_json_atomic
    from landmark_core.pipeline import reevaluate
    from landmark_core.runs import Run
    run = Run(shutil.copytree(trained_run, tmp_path / "runs" / trained_run.name))
    _, exported_again = reevaluate(run)
    assert exported_again is False
    write_json_atomic(run.file(Run.EXPORT_META), {**run.export_meta, "probability_threshold": 0.999})
    summary, exported_again = reevaluate(run)
    assert exported_again is True
    assert run.export_meta["probability_threshold"] == pytest.approx(summary["default_threshold"])


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX process priorities")
def test_background_training_yields_the_cpu_to_the_dashboard(tiny_dataset, artifacts):
    """A run launched from the dashboard trains at a lower priority, so the pages stay responsive."""
    import time

    from helpers import tiny_config
    from landmark_core.pipeline import start_run
    from landmark_core.runs.launch import BACKGROUND_NICENESS
    from landmark_core.runs.run import read_status, request_cancel

    run_dir = start_run(tiny_config(tiny_dataset, epochs=200), artifacts=artifacts)  # what the Train page's Start does
    pid = read_status(run_dir)["pid"]
    lowered = min(19, os.getpriority(os.PRIO_PROCESS, 0) + BACKGROUND_NICENESS)
    try:
        deadline, niceness = time.monotonic() + 30, None
        while time.monotonic() < deadline:  # `nice` lowers its own priority, then becomes the trainer
            niceness = os.getpriority(os.PRIO_PROCESS, pid)
            if niceness >= lowered:
                break
            time.sleep(0.05)
        assert niceness >= lowered
    finally:
        request_cancel(run_dir)
        os.waitpid(pid, 0)
