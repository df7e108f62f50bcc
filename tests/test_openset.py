"""The open-set decision: familiarity, its threshold, unknown/ folders, and predict, tag and CLI agreeing on it."""
import collections
import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from landmark_core.scoring import openset
from landmark_core.cli import main
from landmark_core.data import scan_dataset
from landmark_core.export.exporter import FORMAT_TOLERANCE, export_run
from landmark_core.core.fileio import read_json
from landmark_core.tagging.predict import Predictor
from landmark_core.tagging.decision import decide_for
from landmark_core.tagging.batch import tag_files

from helpers import DRAWN_KINDS, drawn_image


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
    assert pseudo.familiarity[0] == pytest.approx(np.cos(np.pi / 4 - angle), abs=1e-5)  # class 1 at probability 1
    assert pseudo.predicted[0] == 1
    assert pseudo.probability[0] == pytest.approx(1.0)


def test_threshold_from_pseudo_unknowns_and_the_stricter_of_real_unknowns():
    pseudo = np.linspace(0, 1, 101)
    alone = openset.choose_familiarity_threshold(pseudo, passing=0.1)
    assert alone["threshold"] == pytest.approx(0.9)
    assert alone["basis"] == ["leave-one-class-out"]
    unknown = np.linspace(0.5, 0.99, 50)  # real unknowns that look more familiar than the pseudo ones
    both = openset.choose_familiarity_threshold(pseudo, unknown, np.ones(50, bool), passing=0.1)
    assert both["basis"] == ["leave-one-class-out", "unknown photos"]
    assert (unknown >= both["threshold"]).mean() <= openset.MAX_UNKNOWN_TAGGED
    assert both["threshold"] > alone["threshold"]
    # none would be tagged anyway
    unsure = openset.choose_familiarity_threshold(pseudo, unknown, np.zeros(50, bool), passing=0.1)
    assert unsure["threshold"] == alone["threshold"]
    too_few = openset.choose_familiarity_threshold(pseudo, unknown[:5], np.ones(5, bool), passing=0.1)
    assert too_few["basis"] == ["leave-one-class-out"]
    stricter = openset.choose_familiarity_threshold(pseudo, passing=0.05)  # a run's pseudo_unknown_pass
    assert stricter["threshold"] == pytest.approx(0.95)


def test_pseudo_unknown_pass_is_a_share_recorded_with_the_run():
    from landmark_core.runs.config import TrainConfig
    from landmark_core.core.errors import LandmarkError
    assert TrainConfig.from_dict({"data": "x", "model": "efficientnet_lite2"}).pseudo_unknown_pass == 0.10  # before
    assert TrainConfig(data="x", model="efficientnet_lite2", device="cpu").resolved().pseudo_unknown_pass == 0.07
    assert TrainConfig(data="x", model="efficientnet_lite0", device="cpu").resolved().pseudo_unknown_pass == 0.10
    assert TrainConfig(data="x", model="efficientnet_lite2", pseudo_unknown_pass=0.2,
                       device="cpu").resolved().pseudo_unknown_pass == 0.2
    for wrong in (0, 1, -0.1, 1.5, float("nan"), "0.1", True):
        with pytest.raises(LandmarkError, match="pseudo_unknown_pass must be a number in"):
            TrainConfig(data="x", model="efficientnet_lite2", pseudo_unknown_pass=wrong, device="cpu").resolved()


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
    assert dataset.unknown_calibration
    assert dataset.unknown_evaluation  # the root folder is split between both
    # the halves do not move when the folder grows
    shutil.copy(some[0], data / "unknown" / "zz_new.jpg")
    again = scan_dataset(data)
    assert set(dataset.unknown_calibration) <= set(again.unknown_calibration)
    # a flat layout (class folders at the root) has its unknown/ too
    flat = tmp_path / "flat"
    shutil.copytree(data / "train", flat)
    shutil.copytree(data / "unknown", flat / "unknown")
    assert "unknown" not in scan_dataset(flat).classes
    assert scan_dataset(flat).unknown_evaluation


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


def _threshold_in_widest_gap(values) -> float:
    """A threshold with values on both sides, as far from every value as they allow: the midpoint of the widest gap
    between consecutive values."""
    ordered = np.sort(np.asarray(values, float))
    gap = int(np.argmax(np.diff(ordered)))
    return float((ordered[gap] + ordered[gap + 1]) / 2)


def _readme_onnx_snippet() -> str:
    """The ONNX Runtime snippet of the README, as printed there."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("**Using an export elsewhere.**"):]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_and_the_model_bundle_print_one_onnx_snippet():
    from landmark_core.export.bundle import _SNIPPETS
    assert _readme_onnx_snippet().replace("RUN/", "").strip() == _SNIPPETS["onnx"].strip()


@pytest.fixture(scope="module")
def whole_photo_run(tiny_dataset, tmp_path_factory) -> Path:
    """A tiny run whose familiarity asks Lite0 too, on the whole photo (the default recipe's check)."""
    from landmark_core.pipeline import train_new
    from helpers import tiny_config
    return train_new(tiny_config(tiny_dataset, familiarity_backbone="own+efficientnet_lite0",
                                 familiarity_view="whole"), tmp_path_factory.mktemp("whole-photo"))


@pytest.mark.numeric
@pytest.mark.parametrize("run_fixture", ["trained_run", "whole_photo_run"])
def test_predict_tag_cli_onnx_and_the_readme_snippet_agree_on_decisions(run_fixture, request, tiny_dataset, tmp_path):
    """The same photo files, five ways: the library, `landmark predict --json`, the tag report, the ONNX export and
    the README's ONNX Runtime snippet (the app: test_app). Thresholds are set so all three outcomes occur. Also
    for a model whose familiarity looks at the whole photo, which the library feeds whole photos, not squares."""
    trained_run = request.getfixturevalue(run_fixture)
    predictor = Predictor(trained_run)
    photos = sorted((tiny_dataset / "unknown").iterdir())[:8] + sorted((tiny_dataset / "test").rglob("*.jpg"))[:8]
    assessments = [predictor.assess(p, top_k=1) for p in photos]
    familiarity = np.array([a.familiarity for a in assessments])
    probability = np.array([a.predictions[0].probability for a in assessments])
    predictor.familiarity_threshold = _threshold_in_widest_gap(familiarity)
    familiar = familiarity >= predictor.familiarity_threshold
    predictor.probability_threshold = _threshold_in_widest_gap(probability[familiar]) if familiar.sum() > 1 else 0.0
    library = {str(p.resolve()): decide_for(predictor, p).status for p in photos}

    # the CLI reads the thresholds the exported model carries: export a copy of the run with these thresholds
    run = trained_run.parent / (trained_run.name + "-thresholds")
    shutil.copytree(trained_run, run)
    try:
        calibration = read_json(run / "calibration.json")
        calibration["best"].update(familiarity_threshold=predictor.familiarity_threshold,
                                   probability_threshold=predictor.probability_threshold)
        (run / "calibration.json").write_text(json.dumps(calibration))
        export_run(run)
        reloaded = Predictor(run)
        assert reloaded.familiarity_threshold == pytest.approx(predictor.familiarity_threshold)
        assert reloaded.probability_threshold == pytest.approx(predictor.probability_threshold)
        output = io.StringIO()
        with contextlib.redirect_stdout(output):  # `landmark predict --json`, in this process
            assert main(["predict", str(run), *map(str, photos), "--json"]) == 0
        assert {str(Path(r["image"]).resolve()): r["outcome"] for r in json.loads(output.getvalue())} == library
        report = tmp_path / "report.csv"
        tag_files(reloaded, photos, out_dir=tmp_path / "out", report_path=report)
        assert {row["file"]: row["status"] for row in csv.DictReader(open(report))} == library

        # ONNX: the Predictor feeds it the squares (or whole photos) it feeds TorchScript (the same numbers within
        # 1e-3, the bound export_run checks on every export: float32 kernels of two runtimes on one graph); the
        # README's snippet feeds whole photos, here the photos as the library decodes them (short side at the
        # model's resize size: the graph's own resize leaves them as they are), so it too is within 1e-3.
        # (Photos of other sizes the graph resizes with ONNX's float kernel: within 6e-2, see export.py.)
        export_run(run, format="onnx")
        onnx = Predictor(run)
        assert onnx.module.__class__.__name__ == "OnnxClassifier"
        at_size = FORMAT_TOLERANCE["onnx"][0]
        snippet = _readme_onnx_snippet().replace("RUN/", f"{run}/")
        judged = collections.Counter()
        for index, (photo, assessment) in enumerate(zip(photos, assessments)):
            expected = library[str(photo.resolve())]
            first, second = np.sort(onnx.probabilities(photo))[::-1][:2]
            margin = abs(assessment.familiarity - predictor.familiarity_threshold)
            if assessment.familiarity >= predictor.familiarity_threshold:  # then the probability decides
                margin = min(margin, abs(assessment.predictions[0].probability - predictor.probability_threshold))
            if min(margin, first - second) <= at_size:
                continue  # on a threshold or between two classes: either answer is within the export's bound
            judged[expected] += 1
            assert decide_for(onnx, photo).status == expected, photo
            decoded = tmp_path / f"decoded-{index}.png"
            Image.fromarray(predictor.decode(photo)).save(decoded)
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(snippet.replace('"photo.jpg"', repr(str(decoded))), {})
            assert printed.getvalue().split() == [assessment.predictions[0].label, expected], photo
        outcomes = {"tagged", "unknown", "abstained"} if familiar.sum() > 1 else {"tagged", "unknown"}
        assert set(judged) == outcomes
        assert sum(judged.values()) >= len(photos) - 2
    finally:
        shutil.rmtree(run)


@pytest.mark.slow
def test_unknown_demo_archetypes_are_mostly_refused(tmp_path):
    """A pretrained backbone's default recipe on four demo landmarks: lighthouses, pyramids, windmills and scenes
    without a landmark (the demo's unknown/ folder) are left untagged at the default operating point, and drawn
    documents, charts, screenshots, floor plans and posters come out unknown."""
    from landmark_core.core.scenes import DEMO_CLASSES
    from landmark_core.core.demo import generate_demo_dataset
    from landmark_core.runs.config import TrainConfig
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
    # drawn images of no place (documents, charts, screenshots, floor plans, posters) come out unknown, read from
    # their files as `landmark tag` reads them
    predictor, outcomes = Predictor(run), collections.Counter()
    for kind in DRAWN_KINDS:
        for seed in range(3):
            path = tmp_path / f"{kind}-{seed}.{'png' if seed % 2 else 'jpg'}"
            drawn_image(kind, seed).save(path)
            decision = decide_for(predictor, path)
            assert decision.status != "tagged", (kind, seed, decision.familiarity, predictor.familiarity_threshold)
            outcomes[decision.status] += 1
    # unknown (no landmark it knows), not merely abstained; one in 15 may sit just above a threshold on some CPU
    assert outcomes["unknown"] >= len(DRAWN_KINDS) * 3 - 1, outcomes


def test_threshold_when_unknown_photos_tie_above_one():
    """float16 feature banks can score a photo a little over 1.0; duplicates tie there."""
    unknown = np.r_[np.linspace(0.1, 0.5, 18), [1.00003, 1.00003]]
    choice = openset.choose_familiarity_threshold(np.linspace(0, 0.5, 50), unknown, np.ones(20, bool), passing=0.1)
    assert choice["threshold"] > 1.00003


def test_lite2_asks_lite0_too_and_other_models_their_own_features_unless_told_otherwise():
    """The measured defaults (config.py, beside familiarity_backbone): Lite2 checks familiarity with its own
    features and Lite0's (both must pass), the other models with their own; a separate familiarity backbone must
    be a pretrained model."""
    from landmark_core.runs.config import TrainConfig
    from landmark_core.core.errors import LandmarkError
    default = TrainConfig(data="x", model="efficientnet_lite2", device="cpu").resolved()
    assert default.joint_familiarity
    assert default.separate_familiarity_backbone == "efficientnet_lite0"
    assert default.familiarity_view == "whole"  # Lite0 looks at the whole photo
    for model in ("efficientnet_lite1", "efficientnet_lite0", "scratch_cnn"):
        config = TrainConfig(data="x", model=model, device="cpu").resolved()
        assert config.separate_familiarity_backbone is None
        assert not config.joint_familiarity
        assert config.familiarity_view == "crop"
    instead = TrainConfig(data="x", model="efficientnet_lite2", familiarity_backbone="efficientnet_lite0",
                          device="cpu").resolved()
    assert instead.separate_familiarity_backbone == "efficientnet_lite0"
    assert not instead.joint_familiarity
    own = TrainConfig(data="x", model="efficientnet_lite2", familiarity_backbone="own", device="cpu").resolved()
    assert own.separate_familiarity_backbone is None
    assert not own.joint_familiarity
    assert own.familiarity_view == "crop"  # the whole-photo default is the other network's: without one, the crop
    with pytest.raises(LandmarkError, match="familiarity_view whole is what a separate familiarity network sees"):
        TrainConfig(data="x", model="efficientnet_lite2", familiarity_backbone="own", familiarity_view="whole",
                    device="cpu").resolved()
    for wrong in ("scratch_cnn", "efficientnet_lite9", "own+scratch_cnn", "own+", 5):  # random weights; no model
        with pytest.raises(LandmarkError, match="familiarity_backbone must be 'own', a pretrained model or own"):
            TrainConfig(data="x", model="efficientnet_lite2", familiarity_backbone=wrong, device="cpu").resolved()


def test_a_joint_check_passes_a_photo_only_when_both_networks_find_it_familiar():
    """Joint familiarity is the lower of the two networks' (the second moved onto the first's scale by the offset
    that aligns their pseudo-unknown thresholds), so one threshold on it is each network's threshold at once."""
    rng = np.random.default_rng(0)
    own_dim, other_dim, per_class = 6, 4, 30
    labels = torch.arange(3).repeat_interleave(per_class)
    centres = torch.from_numpy(rng.normal(size=(3, own_dim + other_dim))).float() * 2
    features = centres[labels] + torch.from_numpy(rng.normal(size=(len(labels), own_dim + other_dim))).float()
    logits = np.eye(3, dtype=np.float32)[labels.numpy()] * 3 + rng.normal(size=(len(labels), 3)).astype(np.float32)
    bank = openset.normalise_features(features, own_dim)
    assert torch.allclose(bank[:, :own_dim].norm(dim=1), torch.ones(len(bank)))
    assert torch.allclose(bank[:, own_dim:].norm(dim=1), torch.ones(len(bank)))
    offset, own_pseudo = openset.joint_offset(features, labels, logits, 1.0, bank, labels, own_dim, 0.1)
    separately = [openset.leave_one_class_out(features[:, part], labels, logits, 1.0, bank[:, part], labels)
                  for part in (slice(0, own_dim), slice(own_dim, None))]
    thresholds = [openset.pseudo_unknown_threshold(scores.familiarity, 0.1) for scores in separately]
    assert offset == pytest.approx(thresholds[0] - thresholds[1])
    np.testing.assert_allclose(own_pseudo, separately[0].familiarity)
    queries = torch.from_numpy(rng.normal(size=(200, own_dim + other_dim))).float() * 2
    probabilities = torch.softmax(torch.from_numpy(rng.normal(size=(200, 3))).float() * 2, dim=1)
    joint = openset.familiarity(queries, bank, labels, probabilities, own_dim, offset).numpy()
    each = [openset.familiarity(queries[:, part], bank[:, part], labels, probabilities).numpy()
            for part in (slice(0, own_dim), slice(own_dim, None))]
    passes_both = (each[0] >= thresholds[0]) & (each[1] >= thresholds[1])
    assert 0 < passes_both.sum() < len(passes_both)
    # at the first network's threshold (up to float rounding of the offset)
    margin = np.minimum(np.abs(each[0] - thresholds[0]), np.abs(each[1] - thresholds[1])) > 1e-5
    np.testing.assert_array_equal((joint >= thresholds[0])[margin], passes_both[margin])


@pytest.mark.numeric
@pytest.mark.parametrize("familiarity_backbone, tta_flip, view", [("efficientnet_lite0", False, "crop"),
                                                                   ("own+efficientnet_lite0", True, "crop"),
                                                                   ("own+efficientnet_lite0", False, "whole")])
def test_a_separate_familiarity_backbone_travels_with_the_export(tiny_dataset, tmp_path, familiarity_backbone,
                                                                 tta_flip, view):
    """A run whose familiarity compares another network's features, instead of or beside its own (flip-averaged
    too), on the classifier's crop or on the whole photo: evaluation keeps them as the bank, and the TorchScript
    and ONNX exports compute each test photo's familiarity as evaluation did."""
    from landmark_core.pipeline import train_new
    from helpers import tiny_config
    run = train_new(tiny_config(tiny_dataset, familiarity_backbone=familiarity_backbone, tta_flip=tta_flip,
                                familiarity_view=view), tmp_path / "artifacts")
    bank = torch.load(run / "feature_bank_best.pt")
    joint = familiarity_backbone.startswith("own+")
    # Lite0's 1280 features, after the tiny classifier's 16 in a joint check
    assert bank["features"].shape[1] == 1280 + (16 if joint else 0)
    offset = read_json(run / "calibration.json")["best"]["familiarity_offset"]
    assert (offset != 0.0) == joint
    evaluated = {row["path"]: row for row in read_json(run / "predictions.json")}
    assert len(evaluated) == len(scan_dataset(tiny_dataset).test)
    at_size = FORMAT_TOLERANCE["onnx"][0]  # evaluation (eager) vs an export: the bound every export is checked to
    for export_format in ("torchscript", "onnx"):
        export_run(run, format=export_format)
        predictor = Predictor(run)
        assert predictor.whole_photo == (view == "whole")
        # fed the whole photo or its centre square (the test photos are 4:3, 3:4 and 3:2 as well as square)
        assert {predictor.decode(path).shape[0] == predictor.decode(path).shape[1]
                for path in evaluated} == ({True, False} if view == "whole" else {True})
        for path, row in evaluated.items():
            assessment = predictor.assess(path, top_k=1)
            assert assessment.familiarity == pytest.approx(row["familiarity"], abs=at_size), (export_format, path)
            assert assessment.predictions[0].index == row["predicted"]


@pytest.mark.numeric
def test_a_whole_photo_model_answers_floats_as_it_answers_uint8_and_squeezes_thin_strips_alike(whole_photo_run,
                                                                                                tiny_dataset, tmp_path):
    """Fed whole photos, the classifier still sees exactly the crop it was trained on (the photo's centre square,
    then its centre: the tiny model's 37 to 32 pixels leave odd margins). A GPU's Predictor feeds floats (there is
    no uint8 resize kernel there): the whole view is rounded to the levels the bank was made of either way. A strip
    thinner than 1:8 keeps a long side of 8 resize sizes, in the Predictor's decoding as in the exported model fed
    the full strip (the README's snippet)."""
    from landmark_core.core.images import load_resized, load_square
    from landmark_core.core.transforms import MAX_WHOLE_PHOTO_ASPECT
    from landmark_core.export.module import build_exportable
    module = build_exportable(whole_photo_run)
    assert (module.resize_size - module.image_size) % 2 == 1
    shapes = set()
    with torch.no_grad():
        for index, photo in enumerate(sorted(tiny_dataset.rglob("*.jpg"))):  # 4:3, 3:4, 3:2 and square photos
            square = torch.from_numpy(load_square(photo, module.resize_size, module.interpolation)).permute(2, 0, 1)
            decoded = torch.from_numpy(load_resized(photo, module.resize_size, module.interpolation)).permute(2, 0, 1)
            shapes.add(tuple(decoded.shape))
            assert torch.equal(module.preprocess(decoded), module.preprocess(square)), photo
            if index % 16:
                continue
            levels, floats = module.classify(decoded), module.classify(decoded.float())
            assert torch.allclose(levels[0], floats[0], atol=1e-4) and abs(float(levels[1] - floats[1])) < 1e-4
        assert any((shape[2] - module.resize_size) % 2 for shape in shapes)  # odd margins around the square
        strip = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 1500, 3), dtype=np.uint8))
        strip.save(tmp_path / "strip.png")
        decoded = load_resized(tmp_path / "strip.png", module.resize_size, module.interpolation)
        assert decoded.shape == (module.resize_size, MAX_WHOLE_PHOTO_ASPECT * module.resize_size, 3)
        full = module.classify(torch.from_numpy(np.array(strip)).permute(2, 0, 1))
        fed = module.classify(torch.from_numpy(decoded).permute(2, 0, 1))
        assert torch.allclose(full[0], fed[0], atol=1e-5) and abs(float(full[1] - fed[1])) < 1e-5


def test_a_photo_nearer_to_a_photo_of_another_place_than_to_its_landmark_loses_familiarity():
    """Distractor rows (the dataset's unknown/ photos, label DISTRACTOR) cost a photo DISTRACTOR_WEIGHT times the
    amount by which the nearest of them is nearer than its nearest training photo of the predicted class; a bank
    without them scores as before, and a distractor farther away costs nothing."""
    bank = openset.normalise_features(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    labels = torch.tensor([0, 1])
    photo, sure_of_class_0 = torch.tensor([[1.0, 0.5]]), torch.tensor([[1.0, 0.0]])
    before = openset.familiarity(photo, bank, labels, sure_of_class_0).item()
    near, far = torch.tensor([[1.0, 0.45]]), torch.tensor([[0.2, 1.0]])
    with_near = openset.with_distractors(bank.half(), labels, near)
    after = openset.familiarity(photo, *with_near, sure_of_class_0).item()
    unit = photo / photo.norm()
    nearest_landmark = float(unit @ bank[0])
    nearest_other_place = float(unit @ (near / near.norm())[0])
    assert nearest_other_place > nearest_landmark
    assert after == pytest.approx(before - openset.DISTRACTOR_WEIGHT * (nearest_other_place - nearest_landmark),
                                  abs=2e-3)  # the float16 bank
    assert with_near[1].tolist() == [0, 1, openset.DISTRACTOR]
    assert openset.familiarity(photo, *openset.with_distractors(bank.half(), labels, far),
                               sure_of_class_0).item() == pytest.approx(before, abs=2e-3)
    # a joint check: each network's part meets the distractor's part of its own
    joint_bank, joint_labels = openset.with_distractors(openset.normalise_features(torch.cat([bank, bank], 1), 2),
                                                        labels, torch.cat([near, far], 1), own_dim=2)
    both = openset.familiarity(torch.cat([photo, photo], 1), joint_bank, joint_labels, sure_of_class_0, 2, 0.0)
    assert both.item() == pytest.approx(after, abs=2e-3)  # the first network meets the near one: the lower wins


def test_photos_of_other_places_in_the_bank_are_judged_without_their_own_half():
    """The calibration photos that sit in the bank as distractors would each find itself there (similarity 1); for
    the threshold each is judged with its half of them (first or second, in folder order) taken out, as a new photo
    of another place would be: a copy filed beside it (a burst shot) does not count against it either."""
    rng = np.random.default_rng(1)
    known = torch.from_numpy(rng.normal(size=(30, 8))).float()
    labels = torch.arange(3).repeat_interleave(10)
    others = torch.from_numpy(rng.normal(size=(6, 8))).float()
    others[1] = others[0] * 1.01  # the next file in the folder: a copy
    logits = rng.normal(size=(6, 3)).astype(np.float32)
    bank, bank_labels = openset.with_distractors(openset.normalise_features(known).half(), labels, others)
    scorer = openset.Scorer(bank, bank_labels)
    held_out = scorer.distractors_held_out(others, logits)
    in_bank = scorer(others, logits)
    assert (held_out.familiarity > in_bank.familiarity).all()  # none meets itself
    for index in range(6):
        keep = torch.ones(len(bank_labels), dtype=torch.bool)
        keep[30:33] = index >= 3  # its own half leaves the bank
        keep[33:] = index < 3
        alone = openset.Scorer(bank[keep], bank_labels[keep])(others[index:index + 1], logits[index:index + 1])
        assert held_out.familiarity[index] == pytest.approx(alone.familiarity[0], abs=1e-5)  # float32 rounding
    np.testing.assert_array_equal(held_out.predicted, in_bank.predicted)
    # the copy filed beside the first photo would cost it dearly; held out with it, it costs nothing
    with_copy = openset.Scorer(*openset.with_distractors(bank[:30], labels, others[1:2]))(others[:1], logits[:1])
    assert held_out.familiarity[0] > with_copy.familiarity[0] + 0.1  # 0.45 here: twice (1 - its nearest class row)


def test_photos_added_to_unknown_teach_the_run_what_is_not_its_landmark(teachable):
    """A test photo the run knows, then a copy of it put among the dataset's photos of other places (train/unknown/):
    evaluated again, the run keeps the copy in its bank as a distractor and the export it re-made carries it, so
    the photo now looks less familiar, to the Predictor as to evaluation (the model's weights are unchanged)."""
    from landmark_core.pipeline import reevaluate
    from landmark_core.runs.run import Run
    run, data, _ = teachable
    calibration_photos = len(scan_dataset(data).unknown_calibration)
    assert read_json(run / "evaluation.json")["open_set"]["distractors"] == calibration_photos > 0
    assert read_json(run / "export.json")["feature_bank_distractors"] == calibration_photos
    _, exported_again = reevaluate(run)  # nothing changed: the same bank, the same export
    assert not exported_again
    predictor = Predictor(run)
    photo = max(sorted((data / "test").rglob("*.jpg")), key=lambda p: predictor.assess(p, top_k=1).familiarity)
    before = predictor.assess(photo, top_k=1).familiarity
    (data / "train" / "unknown").mkdir()
    Image.open(photo).save(data / "train" / "unknown" / "not-this-landmark.jpg", quality=90)
    summary, exported_again = reevaluate(run)
    assert exported_again  # the thresholds may not move, the bank did
    assert summary["open_set"]["distractors"] == calibration_photos + 1
    after = Predictor(run).assess(photo, top_k=1).familiarity
    # by exactly the penalty: twice the amount by which the copy is nearer than the landmark's nearest photo
    from landmark_core.export.module import build_exportable
    module = build_exportable(run)
    with torch.no_grad():
        features = module.features(module.preprocess(torch.from_numpy(predictor.decode(photo)).permute(2, 0, 1)))
    bank = torch.load(run / "feature_bank_best.pt")
    similarity = (torch.nn.functional.normalize(features, dim=1) @ bank["features"].float().t())[0]
    predicted = predictor.assess(photo, top_k=1).predictions[0].index
    landmark = similarity[bank["labels"] == predicted].max()
    copy = similarity[bank["labels"] == openset.DISTRACTOR].max()
    assert copy > landmark
    assert before - after == pytest.approx(openset.DISTRACTOR_WEIGHT * float(copy - landmark), abs=2e-3)
    evaluated = {row["path"]: row["familiarity"] for row in Run(run).predictions}
    assert evaluated[str(photo)] == pytest.approx(after, abs=FORMAT_TOLERANCE["torchscript"][0])
