"""The open-set decision: familiarity, its threshold, unknown/ folders, and predict, tag and CLI agreeing on it."""
import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from landmark_core import openset
from landmark_core.cli import main
from landmark_core.data import scan_dataset
from landmark_core.export import export_run
from landmark_core.fileio import read_json
from landmark_core.predict import Predictor
from landmark_core.tagging import decide_for, tag_files


def test_familiarity_is_the_similarity_to_the_nearest_training_photo_of_the_predicted_class():
    bank = openset.normalise_features(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    labels = torch.tensor([0, 1, 1])
    photo = torch.tensor([[2.0, 0.1]])
    angle = float(np.arctan2(0.1, 2.0))
    sure_of_class_0, torn_towards_1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.4, 0.6]])
    own = openset.familiarity(photo, bank, labels, sure_of_class_0)
    other = openset.familiarity(photo, bank, labels, torn_towards_1)
    assert own.item() == pytest.approx(np.cos(angle), abs=1e-5)  # log(1) adds nothing
    # [1, 1] is nearer than [0, 1]; being torn (60%) costs a tenth of log(0.6)
    assert other.item() == pytest.approx(np.cos(np.pi / 4 - angle) + 0.1 * np.log(0.6), abs=1e-5)
    # leave-one-class-out: the photo's own class leaves the bank and the softmax
    logits = np.log(np.array([[0.7, 0.3]], dtype=np.float32))
    pseudo = openset.leave_one_class_out(photo, torch.tensor([0]), logits, 1.0, bank, labels)
    assert pseudo[0] == pytest.approx(np.cos(np.pi / 4 - angle), abs=1e-5)  # class 1 at probability 1


def test_threshold_from_pseudo_unknowns_and_the_stricter_of_real_unknowns():
    pseudo = np.linspace(0, 1, 101)
    alone = openset.choose_familiarity_threshold(pseudo)
    assert alone["threshold"] == pytest.approx(0.9) and alone["basis"] == ["leave-one-class-out"]
    unknown = np.linspace(0.5, 0.99, 50)  # real unknowns that look more familiar than the pseudo ones
    both = openset.choose_familiarity_threshold(pseudo, unknown, np.ones(50, bool))
    assert both["basis"] == ["leave-one-class-out", "unknown photos"]
    assert (unknown >= both["threshold"]).mean() <= openset.MAX_UNKNOWN_TAGGED
    assert both["threshold"] > alone["threshold"]
    unsure = openset.choose_familiarity_threshold(pseudo, unknown, np.zeros(50, bool))  # none would be tagged anyway
    assert unsure["threshold"] == alone["threshold"]
    too_few = openset.choose_familiarity_threshold(pseudo, unknown[:5], np.ones(5, bool))
    assert too_few["basis"] == ["leave-one-class-out"]


def test_unknown_folders_are_never_a_class(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "train" / "_unknown").mkdir()
    (data / "test" / "Unknown").mkdir()
    some = sorted((data / "unknown").iterdir())
    shutil.copy(some[0], data / "train" / "_unknown" / "a.jpg")
    shutil.copy(some[1], data / "test" / "Unknown" / "b.jpg")
    dataset = scan_dataset(data)
    assert dataset.classes == scan_dataset(tiny_dataset).classes
    assert str(data / "train" / "_unknown" / "a.jpg") in dataset.unknown_calibration
    assert str(data / "test" / "Unknown" / "b.jpg") in dataset.unknown_evaluation
    root_level = [str(p) for p in some]
    assert sorted(set(root_level) & set(dataset.unknown_calibration + dataset.unknown_evaluation)) == root_level
    assert dataset.unknown_calibration and dataset.unknown_evaluation  # the root folder is split between both
    # the halves do not move when the folder grows
    shutil.copy(some[0], data / "unknown" / "zz_new.jpg")
    again = scan_dataset(data)
    assert set(dataset.unknown_calibration) <= set(again.unknown_calibration)
    # a flat layout (class folders at the root) has its unknown/ too
    flat = tmp_path / "flat"
    shutil.copytree(data / "train", flat)
    shutil.copytree(data / "unknown", flat / "unknown")
    assert "unknown" not in scan_dataset(flat).classes and scan_dataset(flat).unknown_evaluation


def test_evaluation_reports_the_open_set_decision(trained_run):
    evaluation = read_json(trained_run / "evaluation.json")
    open_set = evaluation["open_set"]
    assert open_set["unknown_photos"]["evaluation"] > 0  # the demo generator's unknown/ folder
    assert "leave-one-class-out" in open_set["threshold_basis"]
    for point in (open_set["known"], open_set["unknown"]):
        assert 0 <= point["tagged_share"] <= 1
    assert open_set["auroc"]["unknown photos"]["familiarity"] is not None
    assert len(open_set["curve"]) == len(openset.FAMILIARITY_GRID)
    assert all(p["path"] for p in open_set["unknown_predictions"])
    assert (trained_run / "feature_bank_best.pt").exists()
    assert read_json(trained_run / "export.json")["familiarity_threshold"] == open_set["familiarity_threshold"]


def test_predict_tag_and_cli_agree_on_unknown_decisions(trained_run, tiny_dataset, tmp_path):
    """The same photos, three ways: the library, `landmark predict --json` and the tag report (the app: test_app)."""
    predictor = Predictor(trained_run)
    # threshold the familiarity at the median of these photos so both outcomes occur
    photos = sorted((tiny_dataset / "unknown").iterdir())[:6] + sorted((tiny_dataset / "test").rglob("*.jpg"))[:6]
    familiarity = [predictor.assess(p).familiarity for p in photos]
    predictor.familiarity_threshold = float(np.median(familiarity))
    predictor.probability_threshold = 0.0
    library = {str(p.resolve()): decide_for(predictor, p).status for p in photos}
    assert set(library.values()) == {"tagged", "unknown"}

    # the CLI reads the thresholds the exported model carries: export a copy of the run with these thresholds
    run = trained_run.parent / (trained_run.name + "-thresholds")
    shutil.copytree(trained_run, run)
    try:
        calibration = read_json(run / "calibration.json")
        calibration["best"].update(familiarity_threshold=predictor.familiarity_threshold, probability_threshold=0.0)
        (run / "calibration.json").write_text(json.dumps(calibration))
        export_run(run)
        reloaded = Predictor(run)
        assert reloaded.familiarity_threshold == pytest.approx(predictor.familiarity_threshold)
        output = io.StringIO()
        with contextlib.redirect_stdout(output):  # `landmark predict --json`, in this process
            assert main(["predict", str(run), *map(str, photos), "--json"]) == 0
        assert {str(Path(r["image"]).resolve()): r["outcome"] for r in json.loads(output.getvalue())} == library
        report = tmp_path / "report.csv"
        tag_files(reloaded, photos, out_dir=tmp_path / "out", report_path=report)
        assert {row["file"]: row["status"] for row in csv.DictReader(open(report))} == library
    finally:
        shutil.rmtree(run)


@pytest.mark.slow
def test_unknown_demo_archetypes_are_mostly_refused(tmp_path):
    """A pretrained backbone's default recipe on four demo landmarks: lighthouses, pyramids, windmills and scenes
    without a landmark (the demo's unknown/ folder) are left untagged at the default operating point."""
    from landmark_core.demo import DEMO_CLASSES, generate_demo_dataset
    from landmark_core.config import TrainConfig
    from landmark_core.pipeline import train_new
    data = generate_demo_dataset(tmp_path / "demo", classes=DEMO_CLASSES[:4], train_per_class=16, test_per_class=6,
                                 unknown_per_archetype=10, workers=1)
    run = train_new(TrainConfig(data=str(data), model="efficientnet_lite0", device="cpu", feature_views=2),
                    tmp_path / "artifacts")
    open_set = read_json(run / "evaluation.json")["open_set"]
    assert open_set["unknown"]["count"] >= 15
    assert open_set["unknown"]["tagged_share"] <= 0.1
    assert open_set["known"]["tagged_share"] >= open_set["unknown"]["tagged_share"] + 0.15
    assert open_set["known"]["precision"] >= 0.95
    assert open_set["auroc"]["unknown photos"]["familiarity"] >= 0.8
    # without the open-set check the same thresholds would tag more of them
    assert open_set["unknown_without_open_set"]["tagged_share"] >= open_set["unknown"]["tagged_share"]


def test_threshold_when_unknown_photos_tie_above_one():
    """float16 feature banks can score a photo a little over 1.0; duplicates tie there."""
    unknown = np.r_[np.linspace(0.1, 0.5, 18), [1.00003, 1.00003]]
    choice = openset.choose_familiarity_threshold(np.linspace(0, 0.5, 50), unknown, np.ones(20, bool))
    assert choice["threshold"] > 1.00003
