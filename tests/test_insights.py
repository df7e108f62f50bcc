"""Dashboard tables built from run folders: curves, live progress, confusion cells, comparisons, thresholds."""
import shutil

import pytest
import torch

from landmark_core.evaluation.evaluate import choose_threshold
from landmark_core.core.fileio import read_json, write_json_atomic
from landmark_core.runs.progress import run_progress
from landmark_core.reports.insights import (cell_images, comparison, confusion_frame, curves_frame, batch_losses,
                                            short_label, top_losses)
from landmark_core.training.engine import autocast_dtype


def test_short_labels_stay_readable():
    assert short_label("16.Eiffel_Tower") == "16 Eiffel Tower"
    assert short_label("11.Mount_Rushmore_National_Memorial").endswith("…")


def test_curves_and_progress_of_a_finished_run(trained_run):
    curves = curves_frame([trained_run])
    assert set(curves["metric"]) == {"loss", "accuracy"}
    assert set(curves["split"]) == {"train", "val"}
    assert sorted(curves["epoch"].unique()) == [1, 2]
    progress = run_progress(trained_run)
    assert progress.state == "finished"
    assert progress.fraction == 1.0
    assert progress.eta is None
    assert progress.describe().startswith("finished · 2 of 2 epochs · trained in ")
    assert progress.elapsed >= progress.train_seconds > 0
    assert list(batch_losses(trained_run)["batch"]) == sorted(batch_losses(trained_run)["batch"])


def test_confusion_frame_and_cells_match_predictions(trained_run):
    evaluation = read_json(trained_run / "evaluation.json")
    cells = confusion_frame(evaluation, normalize=True)
    assert len(cells) == 9
    assert cells.groupby("true")["share"].sum().round(6).isin([0.0, 1.0]).all()
    for row in cells.itertuples():
        assert len(cell_images(trained_run, row.true, row.predicted)) == row.count
    losses = top_losses(trained_run, 5)
    assert list(losses["loss"]) == sorted(losses["loss"], reverse=True)


def test_comparison_of_two_runs(trained_run, tmp_path):
    other = tmp_path / "runs" / "other"
    shutil.copytree(trained_run, other)
    rows = read_json(other / "predictions.json")
    rows[0]["predicted"] = (rows[0]["true"] + 1) % 3 if rows[0]["predicted"] == rows[0]["true"] else rows[0]["true"]
    write_json_atomic(other / "predictions.json", rows)
    result = comparison([trained_run, other])
    assert len(result["metrics"]) == 2
    assert list(result["disagreements"]["path"]) == [rows[0]["path"]]
    assert "difference" in result["per_class"]


def test_threshold_ignores_accuracy_measured_on_few_images():
    curve = [{"threshold": 0.0, "coverage": 1.0, "accepted": 100, "accuracy": 0.7},
             {"threshold": 0.5, "coverage": 0.5, "accepted": 50, "accuracy": 0.985},
             {"threshold": 0.9, "coverage": 0.02, "accepted": 2, "accuracy": 1.0}]
    assert choose_threshold(curve) == 0.5
    assert choose_threshold(curve[:1] + curve[2:]) == 0.9  # nothing trustworthy: the strictest
    perfect = [{"threshold": t, "coverage": 1.0, "accepted": 40, "accuracy": 1.0} for t in (0.0, 0.3, 0.5, 0.7)]
    assert choose_threshold(perfect) == 0.5  # a flawless small validation split never lowers it below even odds


def test_mixed_precision_only_where_it_pays():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("off", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_runs_on_different_datasets_share_no_photo_and_no_class(trained_run, tmp_path):
    """Issue 24, item 2: runs on different datasets have nothing per photo to compare, and a class only one of them
    knows has no difference (it drew empty bars on a 0.000000 axis)."""
    other = tmp_path / "runs" / "elsewhere"
    shutil.copytree(trained_run, other)
    rows = read_json(other / "predictions.json")
    write_json_atomic(other / "predictions.json", [{**r, "path": "/elsewhere/" + r["path"].rsplit("/", 1)[-1]} for r in rows])
    evaluation = read_json(other / "evaluation.json")
    evaluation["per_class"] = [{**row, "class": "99.Somewhere_" + row["class"]} for row in evaluation["per_class"]]
    write_json_atomic(other / "evaluation.json", evaluation)
    result = comparison([trained_run, other])
    assert result["shared_photos"] == 0
    assert result["disagreements"].empty
    assert result["test_photos"] == {trained_run.name: len(rows), "elsewhere": len(rows)}
    assert result["per_class"].empty or result["per_class"]["difference"].notna().all()
    assert len(result["per_class"]) == 0
