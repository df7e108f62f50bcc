import json

import pytest
import torch

from landmark_core.core.errors import LandmarkError, TrainingCancelled
from landmark_core.core.fileio import read_json, read_jsonl
from landmark_core.runs.run import list_runs, read_status
from landmark_core.runs.config import TrainConfig
from landmark_core.training.events import Callback
from landmark_core.pipeline import create_run, train, train_new

from helpers import tiny_config, CancelAt


def test_config_resolves_model_defaults_and_validates():
    config = TrainConfig(data="x", model="efficientnet_lite0").resolved()
    assert config.freeze_epochs > 0
    assert config.image_size == 224
    assert config.backbone_lr_scale < 1
    assert config.freeze_batchnorm
    assert TrainConfig(data="x").resolved().image_size == 128
    with pytest.raises(LandmarkError, match="optimizer"):
        TrainConfig(data="x", optimizer="lbfgs").resolved()


def test_finished_run_folder_holds_everything(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.json", "status.json", "metrics.jsonl", "split.json", "checkpoint_best.pt", "checkpoint_last.pt",
            "evaluation.json", "predictions.json", "model.ts", "export.json", "preprocessing.json"} <= names
    status = read_json(trained_run / "status.json")
    assert status["state"] == "finished"
    assert status["pid"]
    assert status["train_seconds"] > 0
    records = read_jsonl(trained_run / "metrics.jsonl")
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert any(r["kind"] == "batch" for r in records)
    assert all(0 <= r["val_acc"] <= 1 for r in epochs)
    split = read_json(trained_run / "split.json")
    assert not set(split["val"]) & set(split["train"])
    assert not set(split["test"]) & set(split["train"])


def test_run_can_be_rebuilt_from_its_folder_alone(trained_run):
    from landmark_core.training.checkpoints import load_run_model
    model, meta = load_run_model(trained_run)
    assert meta["config"].model == "scratch_cnn"
    assert len(meta["classes"]) == 3
    assert len(meta["mean"]) == 3


def _final_weights(run_dir):
    return torch.load(run_dir / "checkpoint_last.pt", weights_only=True)["model"]


@pytest.mark.numeric
@pytest.mark.parametrize("cancel", [CancelAt(2), CancelAt(3, batch=2)], ids=["epoch-end", "mid-epoch"])
def test_resume_after_cancel_matches_uninterrupted_run(tiny_dataset, artifacts, cancel):
    config = tiny_config(tiny_dataset, epochs=4, augment=0.5)
    reference = train_new(config, artifacts, evaluate_and_export=False)
    run_dir = create_run(config, artifacts)
    with pytest.raises(TrainingCancelled):
        train(run_dir, callbacks=[cancel], evaluate_and_export=False)
    assert read_status(run_dir)["state"] == "cancelled"
    train(run_dir, resume=True, evaluate_and_export=False)
    expected, resumed = _final_weights(reference), _final_weights(run_dir)
    # the resumed run repeats the uninterrupted run's float operations in the same order on the same kernels
    # (bit-equal here); 1e-5 is slack for nothing but a state the checkpoint failed to restore, which moves
    # weights by a step's size (>= 1e-4)
    assert all(torch.allclose(expected[k].float(), resumed[k].float(), atol=1e-5) for k in expected)
    epochs = [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]
    assert epochs == [1, 2, 3, 4]


def test_cancel_file_stops_training(tiny_dataset, artifacts):
    run_dir = create_run(tiny_config(tiny_dataset, epochs=3), artifacts)

    class RequestCancel(Callback):
        def on_epoch_end(self, engine):
            (run_dir / "CANCEL").touch()

    with pytest.raises(TrainingCancelled):
        train(run_dir, callbacks=[RequestCancel()])
    assert read_status(run_dir)["state"] == "cancelled"
    assert (run_dir / "checkpoint_last.pt").exists()


@pytest.mark.numeric
def test_cached_features_train_the_head_exactly_like_recomputed_ones(tiny_dataset, artifacts):
    common = dict(epochs=2, freeze_epochs=2, augment=0.0, model="efficientnet_lite0", image_size=32,
                  pretrained=False, model_options={}, batch_size=16, head_solver="sgd")
    cached = train_new(tiny_config(tiny_dataset, cache_features=True, **common), artifacts, evaluate_and_export=False)
    plain = train_new(tiny_config(tiny_dataset, cache_features=False, **common), artifacts, evaluate_and_export=False)
    a, b = _final_weights(cached), _final_weights(plain)
    # cached features come from inference batches of another size than the training batches: ~1e-6 convolution
    # rounding on the features, carried through 2 epochs of head steps (weights ~0.1): far below 1e-4, while
    # features of another view or another crop would move the head by its steps' size
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-4) for k in a if k.startswith("head"))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("backbone"))


def test_feature_views_are_used_in_blocks_and_computed_only_when_needed(tiny_dataset):
    from landmark_core import data as data_lib
    from landmark_core.models.registry import build_model
    from landmark_core.training.features import FeatureBatches
    split = data_lib.decode_split(data_lib.scan_dataset(tiny_dataset).train, 37)
    loader = data_lib.BatchLoader(split, batch_size=8, image_size=32, mean=[0.5] * 3, std=[0.25] * 3, shuffle=True,
                                  augment=0.5)
    model = build_model("scratch_cnn", 3, pretrained=False, width=8, depth=2)
    model.set_backbone_trainable(False)
    features = FeatureBatches(model, loader, views=2, augment=True, epochs=4)
    computed = []
    for epoch in range(4):
        features.set_epoch(epoch)
        batches = list(features)
        computed.append(sorted(features.features))
        assert sum(len(labels) for _, labels in batches) == len(split)
    assert computed == [[0], [0], [0, 1], [0, 1]]
    assert not torch.allclose(features.features[0], features.features[1])  # two different augmented views


def test_early_stopping_ends_a_run_successfully(tiny_dataset, artifacts):
    run_dir = train_new(tiny_config(tiny_dataset, epochs=30, lr=1e-9, early_stopping_patience=1), artifacts,
                        evaluate_and_export=False)
    epochs = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]
    assert 2 <= len(epochs) < 30


def test_failed_run_records_the_reason(tiny_dataset, artifacts):
    run_dir = create_run(tiny_config(tiny_dataset), artifacts)
    config = read_json(run_dir / "config.json")
    config["model_options"] = {"depth": 0}
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(LandmarkError):
        train(run_dir)
    status = read_status(run_dir)
    assert status["state"] == "failed"
    assert "depth" in status["error"]
    assert [r.state for r in list_runs(artifacts)] == ["failed"]


@pytest.mark.parametrize("model", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_transfer_defaults_use_the_native_size_and_stop_after_the_probe_on_a_cpu(model):
    from landmark_core.models.registry import get_spec
    config = TrainConfig(data="x", model=model, device="cpu").resolved()
    assert config.image_size == get_spec(model).preprocessing.input_size  # 224 / 240 / 260 from timm's config
    assert config.head_solver == "lbfgs"
    assert config.epochs == config.freeze_epochs == config.feature_views
    assert TrainConfig(data="x", model=model, device="cpu", epochs=7).resolved().epochs == 7  # asked for: fine-tune
    # scratch_cnn has no frozen phase: without a dataset size its own default, with one its photos-seen budget
    assert TrainConfig(data="x", model="scratch_cnn", device="cpu").resolved().epochs == \
        get_spec("scratch_cnn").train_defaults["epochs"]


def test_unknown_or_missing_devices_are_clear_errors():
    with pytest.raises(LandmarkError, match="unknown device"):
        TrainConfig(data="x", model="efficientnet_lite0", device="bogus").resolved()
    if not torch.cuda.is_available():
        with pytest.raises(LandmarkError, match="CUDA is not available"):
            TrainConfig(data="x", model="efficientnet_lite0", device="cuda").resolved()


def _probe_config(data, **overrides):
    values = dict(model="efficientnet_lite0", image_size=32, pretrained=False, model_options={}, freeze_epochs=3,
                  feature_views=3, epochs=4, batch_size=8, augment=0.6)
    values.update(overrides)
    return tiny_config(data, **values)


def test_probe_epochs_refit_the_head_on_more_views_then_fine_tune(tiny_dataset, artifacts):
    run_dir = train_new(_probe_config(tiny_dataset), artifacts, evaluate_and_export=False)
    records = read_jsonl(run_dir / "metrics.jsonl")
    probe_batches = [r for r in records if r["kind"] == "batch" and r["epoch"] <= 3]
    assert [r["views"] for r in probe_batches] == [1, 2, 3]
    assert all("weight_decay" in r for r in probe_batches)
    fine_tune = [r for r in records if r["kind"] == "batch" and r["epoch"] == 4]
    assert len(fine_tune) > 1  # the last epoch takes optimizer steps through the whole network
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["backbone_frozen"] for r in epochs] == [True, True, True, False]


@pytest.mark.numeric
def test_probe_head_is_the_optimum_on_the_cached_views(tiny_dataset, artifacts):
    """After a probe-only run, the head is exactly the L-BFGS fit on the views' features."""
    from landmark_core import data as data_lib
    from landmark_core.training.checkpoints import load_run_model
    from landmark_core.training.features import FeatureBatches
    from landmark_core.training.prepare import prepare_data
    from landmark_core.training.probe import fit_linear_head
    run_dir = train_new(_probe_config(tiny_dataset, epochs=2, freeze_epochs=2, feature_views=2), artifacts,
                        evaluate_and_export=False)
    model, meta = load_run_model(run_dir, "last")
    config = meta["config"]
    prepared = prepare_data(config)
    common = dict(batch_size=8, image_size=32, mean=prepared.mean, std=prepared.std, seed=config.seed)
    train_loader = data_lib.BatchLoader(prepared.train, shuffle=True, augment=config.augment, **common)
    val_loader = data_lib.BatchLoader(prepared.val, **common)
    model.set_backbone_trainable(False)
    views = FeatureBatches(model, train_loader, 2, True, 2, exact_views=True)
    views.set_epoch(1)
    features, labels = views.views_so_far()
    val = FeatureBatches(model, val_loader, 1, False, 2, exact_views=True)
    expected = fit_linear_head(features, labels, 3, val_features=val.evaluation_features(), val_labels=val.labels)
    with torch.no_grad():
        trained_logits = model.head(features)
    reference = expected.logits(features)
    # the same optimum up to L-BFGS's stopping tolerance (gradient 1e-6, change 1e-9: logits agree to ~1e-4 of
    # their size; 1e-2 still tells a head fitted on other features, which differs by its own size)
    assert (trained_logits - reference).abs().max() < 1e-2 * reference.abs().max()
    assert torch.equal(trained_logits.argmax(1), reference.argmax(1))


@pytest.mark.numeric
def test_probe_run_resumed_after_a_cancel_matches_the_uninterrupted_run(tiny_dataset, artifacts):
    config = _probe_config(tiny_dataset, epochs=3, freeze_epochs=2, feature_views=2)
    reference = train_new(config, artifacts, evaluate_and_export=False)
    run_dir = create_run(config, artifacts)
    with pytest.raises(TrainingCancelled):
        train(run_dir, callbacks=[CancelAt(1)], evaluate_and_export=False)
    train(run_dir, resume=True, evaluate_and_export=False)
    expected, resumed = _final_weights(reference), _final_weights(run_dir)
    # the resumed run repeats the uninterrupted run's float operations in the same order on the same kernels
    # (bit-equal here); 1e-5 is slack for nothing but a state the checkpoint failed to restore, which moves
    # weights by a step's size (>= 1e-4)
    assert all(torch.allclose(expected[k].float(), resumed[k].float(), atol=1e-5) for k in expected)


def test_a_run_made_before_preprocessing_was_recorded_keeps_what_it_trained_with():
    old = TrainConfig(data="x", model="efficientnet_lite0").resolved().to_dict()
    for key in ("resize_size", "interpolation", "head_solver", "feature_views", "tta_flip", "calibrate", "class_balanced"):
        old.pop(key)
    old.update(image_size=160, epochs=11, freeze_epochs=8)
    config = TrainConfig.from_dict(old).resolved()
    assert (config.resize_size, config.interpolation, config.head_solver) == (183, "bilinear", "sgd")
    new = TrainConfig.from_dict(TrainConfig(data="x", model="efficientnet_lite2").resolved().to_dict())
    assert (new.resize_size, new.interpolation, new.head_solver) == (293, "bicubic", "lbfgs")


def test_a_run_made_before_the_familiarity_backbone_setting_keeps_its_own_features():
    """A run recorded before the setting compared its own features: resuming or retraining it keeps them, whatever
    the model's default becomes; a recorded setting is kept."""
    old = TrainConfig(data="x", model="efficientnet_lite2", device="cpu").resolved().to_dict()
    old.pop("familiarity_backbone")
    assert TrainConfig.from_dict(old).familiarity_backbone == "own"
    new = TrainConfig(data="x", model="efficientnet_lite2", familiarity_backbone="efficientnet_lite0",
                      device="cpu").resolved().to_dict()
    assert TrainConfig.from_dict(new).resolved().separate_familiarity_backbone == "efficientnet_lite0"
    # and one recorded before the whole-photo view kept Lite0 on the crop: its bank was made from crops
    before_view = TrainConfig(data="x", model="efficientnet_lite2", device="cpu").resolved().to_dict()
    assert before_view["familiarity_view"] == "whole"
    before_view.pop("familiarity_view")
    assert TrainConfig.from_dict(before_view).resolved().familiarity_view == "crop"


def test_transfer_choices_that_do_not_fit_together():
    no_freeze = TrainConfig(data="x", model="efficientnet_lite0", device="cpu", freeze_epochs=0).resolved()
    assert no_freeze.epochs == 3  # nothing frozen: fine-tuning is all there is, even on a CPU
    assert TrainConfig(data="x", model="efficientnet_lite0", cache_features=False).resolved().head_solver == "sgd"
    with pytest.raises(LandmarkError, match="cached features"):
        TrainConfig(data="x", model="efficientnet_lite0", cache_features=False, head_solver="lbfgs").resolved()


class Recorder(Callback):
    """Runs after every built-in callback and notes what it saw."""
    order = 100

    def __init__(self):
        self.epochs, self.errors = [], []

    def on_epoch_end(self, engine):
        self.epochs.append(engine.epoch)

    def on_exception(self, engine, error):
        self.errors.append(type(error).__name__)


@pytest.mark.numeric
def test_early_stopping_resumes_exactly_and_every_callback_sees_the_last_epoch(tiny_dataset, artifacts):
    """Early stopping's counters travel in the checkpoint: cancelled one epoch before it would stop, a resumed
    run stops at the same epoch with the same weights; the epoch it stops in still reaches every callback."""
    config = tiny_config(tiny_dataset, epochs=12, early_stopping_patience=2, lr=3e-2)
    recorder = Recorder()
    reference = train_new(config, artifacts, callbacks=[recorder], evaluate_and_export=False)
    stopped_at = len([r for r in read_jsonl(reference / "metrics.jsonl") if r["kind"] == "epoch"])
    assert 3 <= stopped_at < 12, "the tiny run should stop early (patience 2)"
    assert recorder.epochs == list(range(1, stopped_at + 1))
    assert recorder.errors == []

    run_dir = create_run(config, artifacts)
    cancelled = Recorder()
    with pytest.raises(TrainingCancelled):
        train(run_dir, callbacks=[CancelAt(stopped_at - 1), cancelled], evaluate_and_export=False)
    assert cancelled.errors == ["TrainingCancelled"]  # callbacks hear of cancellation through on_exception
    train(run_dir, resume=True, evaluate_and_export=False)
    resumed_epochs = [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]
    assert resumed_epochs == list(range(1, stopped_at + 1))
    expected, resumed = _final_weights(reference), _final_weights(run_dir)
    # the resumed run repeats the uninterrupted run's float operations in the same order on the same kernels
    # (bit-equal here); 1e-5 is slack for nothing but a state the checkpoint failed to restore, which moves
    # weights by a step's size (>= 1e-4)
    assert all(torch.allclose(expected[k].float(), resumed[k].float(), atol=1e-5) for k in expected)


def test_callbacks_run_in_order():
    from landmark_core.training.callbacks import Checkpointer, EarlyStopping, MetricsLogger, StatusUpdater
    from landmark_core.training.engine import Engine
    from landmark_core.training.events import ordered
    seen = []

    class Named(Callback):
        def __init__(self, name, order):
            self.name, self.order = name, order

        def on_fit_start(self, engine):
            seen.append(self.name)

    engine = Engine.__new__(Engine)  # only the ordering is under test
    engine.callbacks = ordered([Named("late", 50), Named("first", -1), Named("also-late", 50)])
    Engine.fire(engine, "on_fit_start")
    assert seen == ["first", "late", "also-late"]
    assert EarlyStopping.order < Checkpointer.order  # the checkpoint saves early stopping's updated counters
    assert MetricsLogger.order < StatusUpdater.order
    from landmark_core.training.callbacks import CancelOnRequest, ConsoleProgress
    built_in = (MetricsLogger, EarlyStopping, Checkpointer, StatusUpdater, ConsoleProgress)
    assert Callback.order > max(c.order for c in built_in)  # a user's callback sees what the built-ins did
    assert CancelOnRequest.order >= MetricsLogger.order


def test_best_checkpoint_is_written_without_a_validation_split(tmp_path, artifacts):
    """One training photo per class leaves no validation split; the best epoch is then the lowest training loss,
    and a loss above 1 (three classes, a barely moving model) must still give checkpoint_best.pt."""
    from landmark_core.core.demo import generate_demo_dataset
    from helpers import TINY_CLASSES
    data = tmp_path / "one-each"
    generate_demo_dataset(data, classes=TINY_CLASSES, train_per_class=1, test_per_class=1, workers=1)
    run_dir = train_new(tiny_config(data, epochs=1, lr=1e-7, batch_size=3), artifacts)
    record = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "epoch"][0]
    assert record["val_acc"] is None
    assert record["train_loss"] > 1
    assert (run_dir / "checkpoint_best.pt").exists()
    assert read_status(run_dir)["state"] == "finished"


def test_learning_rate_finder_sweeps_until_the_loss_explodes_and_suggests_a_rate(tiny_dataset, artifacts, monkeypatch):
    from landmark_core.training.lr_finder import find_learning_rate, suggest
    applied = []  # the rate the optimizer really steps with (a scheduler built by the engine must not scale it)
    original = torch.optim.Optimizer.zero_grad
    monkeypatch.setattr(torch.optim.Optimizer, "zero_grad",
                        lambda self, *a, **k: (applied.append(self.param_groups[0]["lr"]), original(self, *a, **k))[1])
    result = find_learning_rate(tiny_config(tiny_dataset, model_options={"width": 8, "depth": 2}, scheduler="onecycle"),
                                steps=40, end_lr=10.0)
    rates = result.learning_rates
    assert applied == pytest.approx(rates)
    assert rates == sorted(rates)
    assert rates[0] == pytest.approx(1e-6)
    assert len(rates) <= 40
    assert result.trained == "whole network"
    assert len(result.losses) == len(rates)
    assert result.suggestion is None or rates[0] <= result.suggestion <= rates[-1]
    assert not list(artifacts.glob("runs/*"))  # nothing saved
    # the rule itself: on a curve that falls, bottoms out and explodes, the steepest fall is picked
    curve_rates = [10 ** (-6 + k * 0.25) for k in range(25)]
    curve = [2.0] * 5 + [2.0 - 0.3 * k for k in range(1, 6)] + [0.5] * 5 + [0.5 + k for k in range(10)]
    assert 1e-5 < suggest(curve_rates, curve) < 1e-3


def test_the_suggested_rate_lies_where_the_smoothed_loss_falls_not_at_a_noisy_start():
    """Issue 24, item 1: the steepest point of a sweep was often its noisy first one (1e-6, which trains nothing)."""
    import numpy as np

    from landmark_core.training.lr_finder import suggest
    rates = list(np.geomspace(1e-6, 1, 80))
    log = np.log10(rates)
    for seed in range(10):
        noise = np.random.default_rng(seed).normal(0, 0.02, 80)
        loss = 2.5 - 1.5 / (1 + np.exp(-(log + 3) * 3)) + np.where(log > -1, (log + 1) * 8, 0) + noise
        loss[:3] = [2.8, 2.3, 2.7]  # the first smoothed points jump about: their slope is the steepest
        suggestion = suggest(rates, list(loss))
        assert 3e-4 < suggestion < 3e-2, (seed, suggestion)  # in the fall (1e-4 to 1e-2), not on the plateau
    assert suggest(rates, [1.0] * 80) is None  # no descent: no suggestion


def test_landmark_lr_find_prints_a_rate_on_the_falling_part_of_its_sweep(tiny_dataset, artifacts):
    import json

    from helpers import landmark
    result = landmark("lr-find", "--data", tiny_dataset, "--model", "scratch_cnn", "--image-size", "32",
                      "--batch-size", "8", "--steps", "60", "--json")
    sweep = json.loads(result.stdout)
    rates, losses, suggestion = sweep["learning_rates"], sweep["losses"], sweep["suggestion"]
    assert result.returncode == (0 if suggestion else 1)
    if suggestion is not None:  # on the falling part: below where the loss started, above its lowest point
        at = rates.index(suggestion)
        assert min(losses) < losses[at] < max(losses[:5])
        assert at > 2
    assert not list(artifacts.glob("runs/*"))
    plain = landmark("lr-find", "--data", tiny_dataset, "--model", "scratch_cnn", "--image-size", "32", "--batch-size", "8",
                     "--steps", "60")
    assert plain.returncode == result.returncode
    if suggestion is not None:
        assert float(plain.stdout) == pytest.approx(suggestion, rel=1e-2)


def test_a_background_sweep_reports_progress_and_keeps_its_result(tiny_dataset, artifacts, tmp_path):
    """Issue 24, item 1: the Train page's sweep runs in its own process like a training run; any page reads its
    progress and result from its folder, a second one for the same pair waits, and a failure says why."""
    import time

    from landmark_core.core.errors import LandmarkError
    from landmark_core.training.lr_finder import Sweep, SweepState
    sweep = Sweep.start(str(tiny_dataset), "scratch_cnn", steps=12, artifacts=artifacts)
    assert sweep.state == SweepState.RUNNING
    assert sweep.progress[1] == 12
    with pytest.raises(LandmarkError, match="running already"):
        Sweep.start(str(tiny_dataset), "scratch_cnn", steps=12, artifacts=artifacts)
    seen = []
    deadline = time.time() + 300
    while sweep.state == SweepState.RUNNING and time.time() < deadline:
        seen.append(sweep.progress)
        time.sleep(0.2)
    assert sweep.state == SweepState.FINISHED, (sweep.error, (sweep.folder / Sweep.LOG).read_text()[-2000:])
    result = sweep.result
    assert 1 <= len(result.learning_rates) == len(result.losses) <= 12
    assert sweep.progress == (len(result.learning_rates), len(result.learning_rates))
    done = [d for d, _ in seen]  # what a page polling it saw: batches done, never going back, within the total
    assert done == sorted(done)
    assert all(0 <= d <= total == 12 for d, total in seen)
    assert Sweep.of(str(tiny_dataset), "scratch_cnn", artifacts).result == result  # the same folder for the pair
    assert not list(artifacts.glob("runs/*"))

    missing = Sweep.start(str(tmp_path / "no-such-folder"), "scratch_cnn", steps=12, artifacts=artifacts)
    deadline = time.time() + 300
    while missing.state == SweepState.RUNNING and time.time() < deadline:
        time.sleep(0.2)
    assert missing.state == SweepState.FAILED
    assert "no-such-folder" in missing.error
    assert missing.result is None


def test_missing_weights_of_a_familiarity_backbone_fail_before_training(tiny_dataset, tmp_path, monkeypatch):
    """Evaluation needs them, but a run must not train for an hour to find out: the library's one-line fix, first."""
    from landmark_core.core.errors import ModelError
    from landmark_core.pipeline import train_new
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    with pytest.raises(ModelError, match="resnet18-f37072fd.pth"):
        train_new(tiny_config(tiny_dataset, familiarity_backbone="resnet18"), tmp_path / "artifacts")
    assert not list((tmp_path / "artifacts").rglob("*.pt"))  # no epoch was trained


def test_a_stop_that_a_library_reports_as_its_own_error_still_stops_the_run(tiny_dataset, tmp_path, monkeypatch):
    """torch's load_state_dict reports an exception raised while it copies a tensor (the Stop button's SIGTERM
    landing there while pretrained weights load) as a RuntimeError about that tensor: the run is stopped, not
    failed, and resumes."""
    import os
    import signal

    from landmark_core import pipeline
    from landmark_core.runs import RunState
    build = pipeline.build_model

    def build_while_stopped(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the run's handler raises here, inside the "library"
        except Exception as error:
            raise RuntimeError(f"Error(s) in loading state_dict: an exception occurred : {error.args}.") from None
        return build(*args, **kwargs)

    monkeypatch.setattr(pipeline, "build_model", build_while_stopped)
    run_dir = create_run(tiny_config(tiny_dataset, epochs=1), tmp_path)
    with pytest.raises(TrainingCancelled):
        train(run_dir)
    assert read_status(run_dir)["state"] == RunState.CANCELLED
    monkeypatch.setattr(pipeline, "build_model", build)
    train(run_dir, resume=True)
    assert read_status(run_dir)["state"] == RunState.FINISHED
