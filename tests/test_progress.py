"""One progress model for a run (issue 24, items 4, 5 and 7): stage, the run's own clock across Stop and Resume,
an ETA only from what the run measured, and a stop that reads as a stop."""
import json
import os
import time

import pytest

from landmark_core.training.events import Callback
from landmark_core.core.errors import TrainingCancelled
from landmark_core.runs.progress import Stage, run_progress
from landmark_core.runs.states import STOPPED_BY_REQUEST, RunState
from landmark_core.runs.launch import launch_background
from landmark_core.runs.run import read_status, write_status, Run

from helpers import tiny_config


def _run_with(tmp_path, status: dict, epochs: list[dict], config: dict) -> "Path":
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / Run.CONFIG).write_text(json.dumps(config))
    (run_dir / Run.STATUS).write_text(json.dumps(status))
    (run_dir / Run.METRICS).write_text("".join(json.dumps({"kind": "epoch", "epoch": i + 1, **e} if isinstance(e, dict)
                                                          else e) + "\n" for i, e in enumerate(epochs)))
    return run_dir


def test_elapsed_is_the_runs_own_clock_and_the_eta_comes_from_measured_epochs(tmp_path):
    """A resumed run: 64 s worked in earlier sessions and 10 s in this one is 74 s, not the time since the run
    was first started (the pause is not counted) and not this session's 10 s alone (time does not go back)."""
    now = time.time()
    run_dir = _run_with(tmp_path, {
        "state": "running", "pid": os.getpid(), "started": "2020-01-01T00:00:00+00:00", "seconds": 64.0,
        "session_started": now - 10, "stage": "training", "epoch_started": now - 15, "batch": 5, "batches": 10,
        "freeze_epochs": 0}, [{"epoch_seconds": 30.0, "backbone_frozen": False}] * 2, {"epochs": 6})
    progress = run_progress(run_dir, now=now)
    assert progress.state == RunState.RUNNING
    assert progress.stage == Stage.TRAINING
    assert progress.elapsed == pytest.approx(74.0)
    # the epoch in progress is half done at the measured pace (30 s an epoch): 15 s, then 3 more epochs of 30 s
    assert progress.eta == pytest.approx(15 + 3 * 30)
    assert progress.fraction == pytest.approx((2 + 0.5) / 6)
    assert progress.describe() == "running · training epoch 3 of 6 · batch 5/10 · elapsed 1m 14s · ETA 1m 45s"


def test_no_eta_while_a_remaining_epochs_length_is_unknown_or_the_stage_has_no_measure(tmp_path):
    now = time.time()
    # one frozen-backbone epoch measured (fast, cached features); the fine-tuning epochs after it are not
    status = {"state": "running", "pid": os.getpid(), "seconds": 0.0, "session_started": now - 5, "stage": "training",
              "epoch_started": now - 1, "batch": 0, "freeze_epochs": 2}
    run_dir = _run_with(tmp_path, status, [{"epoch_seconds": 2.0, "backbone_frozen": True}], {"epochs": 4})
    assert run_progress(run_dir, now=now).eta is None
    for stage, words in (("decoding", "decoding photos"), ("evaluating", "evaluating on the test photos"),
                         ("exporting", "exporting the model")):
        write_status(run_dir, stage=stage)
        progress = run_progress(run_dir, now=now)
        assert progress.stage == Stage(stage)
        assert progress.eta is None
        assert words in progress.describe()
        assert "ETA" not in progress.describe()
    write_status(run_dir, state="cancelled", error=STOPPED_BY_REQUEST, session_started=None, seconds=5.0)
    stopped = run_progress(run_dir, now=now + 100)  # a stopped run's clock stands still, and it has no ETA
    assert stopped.eta is None
    assert stopped.elapsed == 5.0
    assert stopped.stage is None
    assert stopped.label == "stopped"


class _StopAfterFirstEpoch(Callback):
    """Presses Stop the way the app does (the CANCEL flag) once the first epoch has ended."""

    def __init__(self, run_dir):
        self.run_dir = run_dir

    def on_epoch_end(self, engine):
        if engine.epoch == 1:
            (self.run_dir / Run.CANCEL).touch()


def test_stop_then_resume_keeps_the_clock_and_says_stopped_not_failed(tiny_dataset, artifacts, monkeypatch):
    from landmark_core import pipeline
    run_dir = pipeline.create_run(tiny_config(tiny_dataset, epochs=3), artifacts)
    stages = []
    original_evaluate, original_export = pipeline.evaluate_run, pipeline.export_run

    def evaluate_seen(*args, **kwargs):
        stages.append(run_progress(run_dir))
        return original_evaluate(*args, **kwargs)

    def export_seen(*args, **kwargs):
        stages.append(run_progress(run_dir))
        return original_export(*args, **kwargs)

    monkeypatch.setattr(pipeline, "evaluate_run", evaluate_seen)
    monkeypatch.setattr(pipeline, "export_run", export_seen)

    class Watch(Callback):
        def on_batch_end(self, engine):
            stages.append(run_progress(run_dir))

    with pytest.raises(TrainingCancelled):
        pipeline.train(run_dir, callbacks=[_StopAfterFirstEpoch(run_dir), Watch()])
    stopped = run_progress(run_dir)
    assert stopped.state == RunState.CANCELLED
    assert stopped.stopped_by_request
    assert stopped.eta is None
    assert stopped.describe().startswith("stopped after epoch 1 of 3 · elapsed ")
    assert "signal" not in stopped.describe()
    assert "cancel" not in stopped.describe()
    training = [p for p in stages if p.stage == Stage.TRAINING]
    assert training
    assert all(p.describe().startswith("running · training epoch 1 of 3") for p in training[:1])
    first_session = stopped.elapsed
    time.sleep(1.1)  # a pause between Stop and Resume is no working time

    pipeline.train(run_dir, resume=True, callbacks=[Watch()])
    finished = run_progress(run_dir)
    resumed = [p for p in stages if p.stage == Stage.TRAINING][len(training):]
    assert resumed
    assert all(p.elapsed >= first_session for p in resumed)  # never back to this session's own start
    assert all(any(f"training epoch {n} of 3" in p.describe() for n in (2, 3)) for p in resumed)
    assert [p.stage for p in stages[-2:]] == [Stage.EVALUATING, Stage.EXPORTING]
    assert all(p.fraction == 1.0 and p.eta is None for p in stages[-2:])
    assert finished.state == RunState.FINISHED
    assert finished.epoch == 3
    assert finished.elapsed >= finished.train_seconds >= first_session


def test_a_killed_session_counts_up_to_its_last_write_and_resume_does_not_count_the_gap(tiny_dataset, artifacts):
    from landmark_core.pipeline import create_run
    run_dir = create_run(tiny_config(tiny_dataset, epochs=1), artifacts)
    ago = time.time() - 3600
    import datetime as dt
    last_write = dt.datetime.fromtimestamp(ago + 20, dt.timezone.utc).isoformat(timespec="seconds")
    status = {**read_status(run_dir), "state": "running", "pid": 2 ** 22 + 12345, "seconds": 40.0,
              "session_started": ago, "stage": "training", "updated": last_write}
    (run_dir / Run.STATUS).write_text(json.dumps(status))  # as a SIGKILLed trainer left it an hour ago
    interrupted = run_progress(run_dir)
    assert interrupted.state == RunState.INTERRUPTED
    assert interrupted.elapsed == pytest.approx(60.0, abs=1.0)
    assert "interrupted after epoch 0 of 1" in interrupted.describe()
    assert interrupted.eta is None
    pid = launch_background(run_dir, resume=True)  # the app's Resume: the hour since the kill is not working time
    deadline = time.time() + 300  # a fresh interpreter trains, evaluates and exports: minutes on 2 busy cores
    try:
        while read_status(run_dir).get("state") not in ("finished", "failed", "cancelled") and time.time() < deadline:
            time.sleep(0.5)
    finally:
        if read_status(run_dir).get("state") in ("queued", "running"):
            os.killpg(pid, 9)  # never left running past the test
    finished = run_progress(run_dir)
    assert finished.state == RunState.FINISHED, read_status(run_dir)
    assert 60.0 <= finished.elapsed < 60.0 + 600


def test_odd_values_in_a_runs_files_never_break_its_progress(tmp_path):
    """Listing runs must show every run: strings, Infinity and lists where numbers belong count as missing."""
    now = time.time()
    run_dir = _run_with(tmp_path, {
        "state": "running", "pid": os.getpid(), "seconds": float("inf"), "session_started": "yesterday",
        "stage": "decoding", "decoded": ["a", None], "batch": "7", "batches": [3], "processes": "many",
        "freeze_epochs": "2", "epoch_started": -5, "error": 42}, [{"epoch_seconds": "slow"}, "not a record"],
        {"epochs": "abc"})
    progress = run_progress(run_dir, now=now)
    assert progress.epochs is None
    assert progress.processes == 1
    assert progress.batch == 0
    assert progress.elapsed == 0.0
    assert progress.eta is None
    assert progress.error == "42"
    assert "decoding photos" in progress.describe()
    (run_dir / Run.CONFIG).write_text(json.dumps({"epochs": 1e9}))
    write_status(run_dir, stage="training", batch=1, batches=10, epoch_started=now - 1, seconds=1.0)
    absurd = run_progress(run_dir, now=now)
    assert absurd.epochs is None
    assert absurd.eta is None  # an absurd epoch count is no count (and no endless ETA)
    assert "training epoch 2 of ? · batch 1/10" in absurd.describe()  # one epoch record is readable
    (run_dir / Run.STATUS).write_text("[1, 2]")
    assert run_progress(run_dir).state == RunState.DAMAGED


def test_between_epochs_the_eta_counts_the_whole_next_epoch(tmp_path):
    """At an epoch's end the next has not started: its full measured length is still to come (the old epoch's
    start made the ETA one epoch short)."""
    now = time.time()
    run_dir = _run_with(tmp_path, {"state": "running", "pid": os.getpid(), "seconds": 0.0, "session_started": now - 200,
                                   "stage": "training", "epoch_started": None, "batch": 0, "batches": 10,
                                   "freeze_epochs": 0},
                        [{"epoch_seconds": 100.0, "backbone_frozen": False}] * 2, {"epochs": 4})
    assert run_progress(run_dir, now=now).eta == pytest.approx(200.0)
