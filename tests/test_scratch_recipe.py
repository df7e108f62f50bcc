"""The scratch recipe's parts: TrivialAugment, mixup and cutmix, epochs from the dataset's size, and the time a
run will take, measured before it starts."""
import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from landmark_core import data as data_lib
from landmark_core.core.errors import LandmarkError
from landmark_core.runs.config import TrainConfig
from landmark_core.training.engine import Engine
from landmark_core.training.estimate import (estimate, estimate_in_a_training_process, estimate_run,
                                              measure_steps)
from landmark_core.models.registry import build_model, get_spec
from landmark_core.pipeline import create_run
from landmark_core.training.prepare import prepare_data, resolved_for_dataset
from landmark_core.runs.run import Run

from helpers import tiny_config
from helpers import landmark


def _loader(split, **options):
    return data_lib.BatchLoader(split, batch_size=8, image_size=32, mean=[0.5] * 3, std=[0.25] * 3, shuffle=True,
                                augment=1.0, seed=3, **options)


def test_trivial_augment_is_reproducible_per_epoch_and_adds_to_the_full_recipe(tiny_dataset):
    split = data_lib.decode_split(data_lib.scan_dataset(tiny_dataset).train, 37)
    trivial, full = _loader(split, augmentation="trivial"), _loader(split, augmentation="full")
    trivial.set_epoch(1)
    first, again = next(iter(trivial))[0], next(iter(trivial))[0]
    trivial.set_epoch(2)
    later = next(iter(trivial))[0]
    full.set_epoch(1)
    plain = next(iter(full))[0]
    assert torch.equal(first, again)  # a resumed run sees the same photos
    assert not torch.equal(first, later)
    # the same crops, then one more operation on most photos: some differ from the full recipe's, by far more
    # than the uint8 rounding the operations need (1/255 of the 0-1 range, 1/64 after the std of 0.25)
    changed = [(a - b).abs().max().item() > 0.1 for a, b in zip(first, plain)]
    assert sum(changed) >= len(changed) // 2
    low, high = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    assert first.min() >= low - 1e-6
    assert first.max() <= high + 1e-6


def test_trivial_augment_of_a_share_of_the_batch_is_that_share_of_the_whole(tiny_dataset):
    """A process of a distributed run augments its rows as the single process augments those rows."""
    images = torch.rand(6, 3, 32, 32)
    whole = data_lib.trivial_augment_batch(images, torch.Generator().manual_seed(5))
    share = data_lib.trivial_augment_batch(images[2:4], torch.Generator().manual_seed(5), rows=slice(2, 4), drawn=6)
    assert whole.dtype == torch.uint8
    assert torch.equal(whole[2:4], share)


def _engine(tiny_dataset, **overrides) -> Engine:
    config = tiny_config(tiny_dataset, **overrides).resolved()
    data = prepare_data(config)
    model = build_model(config.model, len(data.classes), pretrained=False, **config.model_options)
    return Engine(config, model, data, torch.device("cpu"))


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixing_blends_each_photo_with_a_partner_and_says_by_how_much(tiny_dataset, kind):
    engine = _engine(tiny_dataset, **{"mixup": 0.0, "cutmix": 0.0, kind: 1.0})
    inputs = torch.rand(8, 3, 32, 32)
    labels = torch.arange(8)
    engine.epoch, engine.batch = 3, 2
    mixed, partners, share = engine._mix(inputs, labels)
    again = engine._mix(inputs, labels)
    assert torch.equal(mixed, again[0])
    assert torch.equal(partners, again[1])
    assert share == again[2]  # resumable
    assert 0 <= share <= 1
    assert sorted(partners.tolist()) == list(range(8))  # a permutation of the batch
    partner_pixels = inputs[partners]
    if kind == "mixup":
        assert torch.allclose(mixed, share * inputs + (1 - share) * partner_pixels, atol=1e-6)
    else:
        # every pixel is the photo's own or its partner's, and the partner's cover 1 - share of the image
        own = (mixed == inputs).all(dim=1)
        theirs = (mixed == partner_pixels).all(dim=1)
        assert bool((own | theirs).all())
        paired = [i for i in range(8) if partners[i] != labels[i]]  # a photo paired with itself shows no box
        assert paired
        for i in paired:
            assert abs((theirs[i] & ~own[i]).float().mean().item() - (1 - share)) < 1e-6


def test_a_run_that_mixes_photos_trains_with_finite_losses_and_accuracies(tiny_dataset, artifacts):
    from landmark_core.pipeline import train_new
    run = train_new(tiny_config(tiny_dataset, epochs=2, mixup=0.4, cutmix=1.0, augmentation="trivial"), artifacts,
                    evaluate_and_export=False)
    epochs = [r for r in Run(run).metrics if r["kind"] == "epoch"]
    assert len(epochs) == 2
    assert all(0 <= r["train_acc"] <= 1 and np.isfinite(r["train_loss"]) for r in epochs)


def test_a_run_recorded_before_mixing_existed_trained_without_it():
    recorded = TrainConfig(data="x").resolved().to_dict()
    del recorded["mixup"], recorded["cutmix"]
    config = TrainConfig.from_dict(recorded).resolved()
    assert config.mixup == 0
    assert config.cutmix == 0


@pytest.mark.parametrize("value", [-1.0, float("nan"), 1e9])
def test_mixing_strengths_out_of_range_are_refused(value):
    from landmark_core.core.errors import LandmarkError
    with pytest.raises(LandmarkError, match="mixup must be"):
        TrainConfig(data="x", mixup=value).resolved()


def test_scratch_epochs_follow_the_dataset_size_within_their_range():
    defaults = get_spec("scratch_cnn").train_defaults
    low, high = defaults["epoch_range"]
    passes = defaults["photo_passes"]
    config = TrainConfig(data="x", model="scratch_cnn")
    assert config.resolved().epochs == defaults["epochs"]  # the size unknown
    assert config.resolved(training_photos=round(passes / (low + 1))).epochs == low + 1
    assert config.resolved(training_photos=10 * passes).epochs == low  # a large set: fewer epochs, not hours
    assert config.resolved(training_photos=1).epochs == high
    assert TrainConfig(data="x", model="scratch_cnn", epochs=3).resolved(training_photos=1).epochs == 3  # asked for


def test_a_new_run_records_the_epochs_its_dataset_size_gives(tiny_dataset, artifacts):
    config = TrainConfig(data=str(tiny_dataset), model="scratch_cnn", device="cpu")
    run = create_run(config, artifacts)
    photos = len(data_lib.scan_dataset(tiny_dataset).train)
    assert Run(run).config().epochs == config.resolved(training_photos=photos).epochs
    assert json.loads((run / "status.json").read_text())["epochs"] == Run(run).config().epochs


def test_the_estimate_times_real_steps_and_adds_up_the_run(tiny_dataset):
    config = tiny_config(tiny_dataset, epochs=5)
    cost = estimate(config)
    resolved, dataset = resolved_for_dataset(config)
    assert cost.epochs == 5
    assert cost.full_epochs == 5
    trained, _ = data_lib.stratified_split(dataset.train, resolved.val_fraction, resolved.seed)
    assert cost.train_batches == math.ceil(len(trained) / 8)
    assert cost.steps.train_batch > 0
    assert cost.steps.eval_batch > 0
    assert cost.decode_seconds > 0
    assert cost.training_seconds == pytest.approx(5 * cost.seconds_per_epoch)
    assert cost.seconds == pytest.approx(cost.decode_seconds + cost.training_seconds + cost.frozen_seconds
                                         + cost.evaluation_seconds)
    assert "5 epochs of about" in cost.describe()
    assert "measured on this machine" in cost.describe()


def test_a_run_that_only_fits_a_head_on_frozen_features_is_timed_without_training_steps(tiny_dataset):
    config = TrainConfig(data=str(tiny_dataset), model="efficientnet_lite0", image_size=64, batch_size=8,
                         pretrained=False, epochs=2, freeze_epochs=2, device="cpu")
    steps = measure_steps(config, 3, training=False)
    assert steps.train_batch == 0
    assert steps.eval_batch > 0
    cost = estimate(config)
    assert cost.full_epochs == 0
    assert cost.training_seconds == 0
    assert cost.frozen_seconds > 0
    assert "frozen-backbone epochs" in cost.describe()
    assert "epochs of about" not in cost.describe()


def test_a_separate_familiarity_backbone_is_timed_into_the_evaluation(tiny_dataset):
    """Evaluation also passes every split through the familiarity backbone (Lite0 beside a Lite2, by default)."""
    own = tiny_config(tiny_dataset, epochs=1)
    beside = tiny_config(tiny_dataset, epochs=1, familiarity_backbone="efficientnet_lite0")
    assert measure_steps(own, 3).familiarity_eval_batch == 0
    steps = measure_steps(beside, 3)
    assert steps.familiarity_eval_batch > 0
    resolved, dataset = resolved_for_dataset(beside)
    sizes = dict(trained_photos=30, val_photos=3, test_photos=12, decode_seconds_per_photo=0.0)
    with_it = estimate_run(resolved, steps, **sizes)
    without = estimate_run(resolved, replace(steps, familiarity_eval_batch=0.0), **sizes)
    batches = math.ceil((30 + 3 + 12 + steps.eval_batch_size) / steps.eval_batch_size)
    assert with_it.evaluation_seconds - without.evaluation_seconds == pytest.approx(
        batches * steps.familiarity_eval_batch)


def test_landmark_train_estimate_prints_the_time_and_trains_nothing(tiny_dataset, artifacts):
    result = landmark("train", "--data", str(tiny_dataset), "--image-size", "32", "--batch-size", "8", "--epochs", "3",
                      "--estimate", artifacts=artifacts)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("scratch_cnn on tiny: about ")
    assert "3 epochs of about" in result.stdout
    assert not (artifacts / "runs").exists() or not any((artifacts / "runs").iterdir())


def test_the_apps_estimate_times_the_steps_in_a_process_tuned_as_a_training_one(tiny_dataset, artifacts,
                                                                                tmp_path, monkeypatch):
    """The Train page's estimate comes from `landmark train --estimate --json` in a fresh process: timed in the
    app's own process (glibc's allocator defaults), a batch of 64 through Lite2 took 3.3 s instead of 1.3 s.
    The app may run from any folder, and a dataset folder named like the demo's alias is still that folder."""
    named_demo = tmp_path / "demo"
    shutil.copytree(tiny_dataset, named_demo)
    monkeypatch.chdir(tmp_path)
    cost = estimate_in_a_training_process("demo", "scratch_cnn")  # the relative folder, not the built-in demo
    assert cost.steps.freed_memory_kept  # Linux and glibc here, as on every CI machine
    resolved, dataset = resolved_for_dataset(TrainConfig(data=str(named_demo), model="scratch_cnn"))
    trained, _ = data_lib.stratified_split(dataset.train, resolved.val_fraction, resolved.seed)
    assert (cost.epochs, cost.train_batches, cost.steps.batch_size) == (
        resolved.epochs, math.ceil(len(trained) / resolved.batch_size), resolved.batch_size)
    assert cost.steps.train_batch > 0 and cost.steps.eval_batch > 0
    assert cost.seconds == pytest.approx(cost.decode_seconds + cost.training_seconds + cost.frozen_seconds
                                         + cost.evaluation_seconds)
    with pytest.raises(LandmarkError, match="^dataset folder not found"):
        estimate_in_a_training_process("missing", "scratch_cnn")
    with pytest.raises(LandmarkError, match="^unknown model 'no_such_model'"):
        estimate_in_a_training_process("demo", "no_such_model")
    refused = landmark("train", "--data", str(tiny_dataset), "--json", artifacts=artifacts)
    assert refused.returncode == 2
    assert "--json goes with --estimate" in refused.stderr
    assert not (artifacts / "runs").exists() or not any((artifacts / "runs").iterdir())


@pytest.mark.numeric
def test_a_run_with_the_whole_recipe_resumed_mid_epoch_matches_the_uninterrupted_one(tiny_dataset, artifacts):
    """TrivialAugment, mixup, cutmix and the weight average all draw from the run's seed and live in its
    checkpoint: a cancelled run resumed ends with the uninterrupted run's weights and average."""
    from landmark_core.core.errors import TrainingCancelled
    from landmark_core.pipeline import train, train_new
    from helpers import CancelAt
    config = tiny_config(tiny_dataset, epochs=4, augment=0.5, augmentation="trivial", mixup=0.4, cutmix=1.0,
                         ema_epochs=1.0)
    reference = train_new(config, artifacts, evaluate_and_export=False)
    run_dir = create_run(config, artifacts)
    with pytest.raises(TrainingCancelled):
        train(run_dir, callbacks=[CancelAt(3, batch=2)], evaluate_and_export=False)
    train(run_dir, resume=True, evaluate_and_export=False)
    expected = torch.load(reference / "checkpoint_last.pt", weights_only=True)
    resumed = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    for weights in ("model", "trained_model"):  # 1e-5: as in test_train's resume test
        assert all(torch.allclose(expected[weights][k].float(), resumed[weights][k].float(), atol=1e-5)
                   for k in expected[weights]), weights
    assert expected["averaged_steps"] == resumed["averaged_steps"] > 0


def test_the_weight_average_is_what_the_run_keeps(tiny_dataset, artifacts):
    from landmark_core.training.checkpoints import load_run_model
    from landmark_core.pipeline import train_new
    run = train_new(tiny_config(tiny_dataset, epochs=3, ema_epochs=2.0), artifacts)
    state = torch.load(run / "checkpoint_last.pt", weights_only=True)
    averaged, trained = state["model"], state["trained_model"]
    assert state["averaged_steps"] == 3 * math.ceil(len(json.loads((run / "split.json").read_text())["train"]) / 8)
    assert any(not torch.equal(averaged[k], trained[k]) for k in averaged if averaged[k].is_floating_point())
    model, _ = load_run_model(run, "last")
    assert all(torch.equal(model.state_dict()[k], averaged[k]) for k in averaged)


def test_a_transfer_run_averages_only_its_fine_tuned_weights(tiny_dataset, artifacts):
    """The frozen epochs fit a head on cached features; the average starts at the first fine-tuning step, so a
    frozen epoch keeps the fitted head itself and the fine-tuned epoch an average of its own steps."""
    from landmark_core.training.events import Callback
    from landmark_core.pipeline import create_run, train

    class AfterTheProbe(Callback):
        def on_epoch_end(self, engine):
            if engine.epoch == 1:
                self.state = engine.state_dict()

    config = TrainConfig(data=str(tiny_dataset), model="efficientnet_lite0", image_size=64, batch_size=8,
                         pretrained=False, epochs=2, freeze_epochs=1, ema_epochs=1.0, device="cpu")
    probe = AfterTheProbe()
    run = create_run(config, artifacts)
    train(run, callbacks=[probe], evaluate_and_export=False)
    state = torch.load(run / "checkpoint_last.pt", weights_only=True)
    steps = math.ceil(len(json.loads((run / "split.json").read_text())["train"]) / 8)
    assert state["averaged_steps"] == steps  # the fine-tuned epoch's steps, none of the frozen one
    after_probe = probe.state
    assert after_probe["averaged_steps"] == 0
    assert all(torch.equal(after_probe["model"][k], after_probe["trained_model"][k]) for k in after_probe["model"])


@pytest.mark.parametrize("keep_best, patience, kept", [(True, 0, "best"), (False, 0, "last"), (False, 2, "best")])
def test_the_run_keeps_its_best_epoch_or_its_last_as_configured(tiny_dataset, artifacts, keep_best, patience, kept):
    """On a validation split of a few dozen photos the 'best' epoch is often luck (a scratch run kept an epoch
    12 points worse on test than its last): keep_best off keeps the last, unless early stopping ended the run."""
    from landmark_core.core.fileio import read_jsonl
    from landmark_core.pipeline import train_new
    run = train_new(tiny_config(tiny_dataset, epochs=3, keep_best=keep_best, early_stopping_patience=patience), artifacts,
                    evaluate_and_export=False)
    epochs = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"]
    best = max(epochs, key=lambda r: (r["val_acc"], -r["val_loss"]))["epoch"]
    stored = torch.load(run / "checkpoint_best.pt", weights_only=True)["epoch"]
    assert stored == (best if kept == "best" else len(epochs))


def test_landmark_train_estimate_is_refused_for_a_run_that_exists(trained_run, artifacts):
    result = landmark("train", "--resume", str(trained_run), "--estimate", artifacts=artifacts)
    assert result.returncode != 0
    assert "--estimate is for a new run" in result.stderr
