"""Temperature scaling, calibration error, coverage at a precision, and the L-BFGS linear probe."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landmark_core.scoring.calibration import (coverage_at_precision, expected_calibration_error, fit_temperature,
                                               reliability, softmax)
from landmark_core.training.probe import DEFAULT_WEIGHT_DECAY, WEIGHT_DECAYS, class_weights, fit_linear_head


def _sampled(temperature: float, n: int = 4000, classes: int = 5, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / temperature): that temperature is the calibrated one."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, classes))
    probs = softmax(logits, temperature)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, labels


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with(true_temperature):
    logits, labels = _sampled(true_temperature)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.1)


def test_temperature_scaling_lowers_calibration_error_and_keeps_the_ranking():
    logits, labels = _sampled(2.5)  # the raw softmax is overconfident
    temperature = fit_temperature(logits, labels)
    before, after = softmax(logits), softmax(logits, temperature)
    assert expected_calibration_error(after, labels) < 0.03 < expected_calibration_error(before, labels)
    assert (before.argmax(1) == after.argmax(1)).all()
    points = reliability(after, labels)
    assert sum(p["count"] for p in points) == len(labels)
    assert all(abs(p["accuracy"] - p["confidence"]) < 0.1 for p in points if p["count"] > 200)


def test_fit_temperature_without_data_is_one():
    assert fit_temperature(np.zeros((1, 3)), np.array([0])) == 1.0
    assert expected_calibration_error(np.zeros((0, 3)), np.array([], dtype=int)) is None


def test_coverage_at_precision_takes_the_largest_confident_prefix():
    # confidences 0.9 (right), 0.8 (right), 0.7 (wrong), 0.6 (right), 0.5 (wrong)
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.5, 0.5]])
    labels = np.array([0, 0, 0, 0, 1])
    full = coverage_at_precision(probs, labels, 1.0)
    assert full["coverage"] == pytest.approx(0.4)
    assert full["threshold"] == pytest.approx(0.8)
    assert full["accepted"] == 2
    three_quarters = coverage_at_precision(probs, labels, 0.75)
    assert three_quarters["accepted"] == 4
    assert three_quarters["threshold"] == pytest.approx(0.6)
    wrong_first = coverage_at_precision(np.array([[0.1, 0.9]]), np.array([0]), 0.95)
    assert wrong_first["coverage"] == 0.0
    assert wrong_first["threshold"] is None


def test_coverage_at_precision_accepts_ties_together():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    labels = np.array([0, 1, 0])  # the tie at 0.9 holds one right and one wrong answer
    assert coverage_at_precision(probs, labels, 0.9)["accepted"] == 0
    assert coverage_at_precision(probs, labels, 0.5)["accepted"] == 3


def _blobs(n_per_class=40, classes=4, dim=16, seed=0, spread=1.0):
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234)) * 3  # the same classes for every seed
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return features * 7 + 100, labels  # raw features far from zero mean and unit scale, as backbone features are


def test_linear_probe_fits_raw_features_and_folds_the_standardisation():
    features, labels = _blobs()
    val_features, val_labels = _blobs(seed=1)
    head = fit_linear_head(features, labels, 4, val_features=val_features, val_labels=val_labels)
    assert (head.logits(features).argmax(1) == labels).float().mean() == 1.0
    assert (head.logits(val_features).argmax(1) == val_labels).float().mean() >= 0.95
    assert head.weight.shape == (4, 16)
    assert head.bias.shape == (4,)
    assert head.val_loss == pytest.approx(float(F.cross_entropy(head.logits(val_features), val_labels)), rel=1e-4)


def test_linear_probe_takes_the_strongest_weight_decay_within_one_standard_error_of_the_best_accuracy():
    features, labels = _blobs(n_per_class=6, spread=4.0)  # few, noisy samples: regularisation matters
    val_features, val_labels = _blobs(n_per_class=50, spread=4.0, seed=2)
    chosen = fit_linear_head(features, labels, 4, val_features=val_features, val_labels=val_labels)
    accuracy = {}
    for decay in WEIGHT_DECAYS:
        single = fit_linear_head(features, labels, 4, weight_decays=(decay,))
        accuracy[decay] = float((single.logits(val_features).argmax(1) == val_labels).float().mean())
    best = max(accuracy.values())
    bound = best - (best * (1 - best) / len(val_labels)) ** 0.5
    assert chosen.weight_decay == max(d for d in WEIGHT_DECAYS if accuracy[d] >= bound - 1e-6)
    assert chosen.val_accuracy == pytest.approx(accuracy[chosen.weight_decay])
    assert chosen.val_loss == pytest.approx(float(F.cross_entropy(chosen.logits(val_features), val_labels)), rel=1e-4)
    assert fit_linear_head(features, labels, 4).weight_decay == DEFAULT_WEIGHT_DECAY  # nothing to choose with


def test_a_validation_split_with_no_errors_does_not_make_the_head_or_temperature_extreme():
    features, labels = _blobs(spread=0.3)  # every validation photo is easy
    val_features, val_labels = _blobs(n_per_class=5, spread=0.3, seed=3)
    head = fit_linear_head(features, labels, 4, val_features=val_features, val_labels=val_labels)
    assert head.weight_decay == max(WEIGHT_DECAYS)  # the weakest L2 would also be right, with unbounded logits
    temperature = fit_temperature(head.logits(val_features).numpy(), val_labels.numpy())
    unbounded = fit_temperature(head.logits(val_features).numpy(), val_labels.numpy(), prior_std=1e6)
    assert unbounded < 0.06  # the likelihood alone drives T to the edge of the search: every answer 100% sure
    assert 0.2 < temperature < 1.0
    assert softmax(head.logits(val_features).numpy(), temperature).max() < 1 - 1e-6


def test_class_weights_make_every_class_count_the_same():
    labels = torch.tensor([0] * 30 + [1] * 10 + [2] * 20)
    weights = class_weights(labels, 3)
    per_class = torch.stack([weights[c] * (labels == c).sum() for c in range(3)])
    assert torch.allclose(per_class, per_class[0])
    assert weights[labels].mean() == pytest.approx(1.0)


def test_linear_probe_on_a_single_photo_is_finite():
    head = fit_linear_head(torch.randn(1, 8) + 5, torch.tensor([1]), 3)
    assert torch.isfinite(head.weight).all()
    assert torch.isfinite(head.bias).all()
