"""Evaluation of a trained run on its test split.

Writes ``evaluation.json`` (accuracies, confusion matrix, per-class metrics,
most-confused pairs, the confidence/coverage curve) and ``predictions.json``
(one row per test image: path, true class, top-5 with probabilities, loss), so a
UI can list the images behind any confusion-matrix cell and the top losses.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import data as data_lib
from ..core.fileio import save_atomic
from ..models.builders import familiarity_network
from ..models.registry import FlipAveraged, LandmarkNet, get_spec, inference_batch_size
from ..runs.run import Run
from ..scoring import openset
from ..scoring.calibration import (coverage_at_precision, expected_calibration_error, fit_temperature, reliability,
                                   softmax, top_k_hits, top_k_indices)
from ..training.checkpoints import load_run_model
from ..training.prepare import decode_photos, decode_whole_photos, prepare_data

#: Thresholds of the coverage curve: fine steps, because calibrated probabilities spread over the whole range.
THRESHOLDS = [round(t, 2) for t in np.arange(0.0, 1.0, 0.01)]
#: Precision targets whose coverage Evaluate reports.
PRECISION_TARGETS = (0.95, 0.98)


@torch.no_grad()
def split_outputs(model: LandmarkNet, split: data_lib.DecodedSplit, *, image_size: int, mean, std, device,
                  tta_flip: bool = False, batch_size: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """(backbone features (N, D), logits (N, C)) for a decoded split, centre-cropped as at inference.

    With ``tta_flip`` the features are the mean of the photo's and its mirror
    image's, and the logits those of the mean (the same as the mean of the
    logits: the head is linear), exactly as the exported model computes them.
    """
    loader = data_lib.BatchLoader(split, batch_size=batch_size or inference_batch_size(device), image_size=image_size,
                                  mean=mean, std=std, device=device, channels_last=True)
    model.eval()
    features, logits = [torch.zeros(0, model.feature_dim)], [torch.zeros(0, len(model.head[-1].bias))]
    for inputs, _ in loader:
        batch = FlipAveraged(model.backbone, tta_flip)(inputs)
        features.append(batch.cpu())
        logits.append(model.head(batch.to(model.head[-1].weight.dtype)).float().cpu())
    return torch.cat(features), torch.cat(logits).numpy()


def familiarity_outputs(model: LandmarkNet, config, num_classes: int, *, mean, std, cache_dir=None, **options):
    """A function of a decoded split giving (the features the familiarity check compares, the classifier's logits):
    the classifier's own features, those of the run's separate familiarity backbone on the same crop or on the
    whole photo (``TrainConfig.familiarity_view``, decoded from the split's files into ``cache_dir``), or both side
    by side for a joint check, each normalised as its network expects (see ``TrainConfig.familiarity_backbone``)."""
    name = config.separate_familiarity_backbone
    if name is None:
        return lambda split: split_outputs(model, split, mean=mean, std=std, **options)
    network = familiarity_network(name, num_classes).to(options["device"])
    preprocessing = get_spec(name).preprocessing

    def outputs(split):
        own, logits = split_outputs(model, split, mean=mean, std=std, **options)
        seen = decode_whole_photos(config, split, cache_dir) if config.familiarity_view == "whole" else split
        features = split_outputs(network, seen, mean=preprocessing.mean, std=preprocessing.std, **options)[0]
        return (torch.cat([own, features], dim=1) if config.joint_familiarity else features), logits
    return outputs


def split_logits(model: LandmarkNet, split: data_lib.DecodedSplit, **options) -> np.ndarray:
    """Logits (N, C) for a decoded split (see :func:`split_outputs`)."""
    return split_outputs(model, split, **options)[1]


def predict_split(model: LandmarkNet, split: data_lib.DecodedSplit, *, temperature: float = 1.0, **options) -> np.ndarray:
    """Softmax probabilities (N, C) for a decoded split, at ``temperature``."""
    return softmax(split_logits(model, split, **options), temperature)


def coverage_curve(probs: np.ndarray, labels: np.ndarray) -> list[dict]:
    """For each threshold: the share of images whose top probability reaches it, and accuracy on those.

    ``accepted`` is the number of images behind each accuracy, so a reader can
    tell a real 100% from one lucky image.
    """
    if len(labels) == 0:
        return []
    top = probs.max(1)
    correct = probs.argmax(1) == labels
    rows = []
    for threshold in THRESHOLDS:
        accepted = top >= threshold
        rows.append({"threshold": threshold, "coverage": float(accepted.mean()), "accepted": int(accepted.sum()),
                     "accuracy": float(correct[accepted].mean()) if accepted.any() else None})
    return rows


#: The default tag threshold never goes below this calibrated probability: a photo whose best guess is more
#: likely wrong than right is never tagged by default, however well the (small) validation split went.
MIN_DEFAULT_THRESHOLD = 0.5


def choose_threshold(curve: list[dict], target_accuracy: float = 0.98, min_accepted: int = 10,
                     floor: float = MIN_DEFAULT_THRESHOLD) -> float:
    """The lowest threshold (at least ``floor``) whose accepted predictions reach ``target_accuracy``.

    That is the most coverage at that accuracy. Accuracies measured on fewer
    than ``min_accepted`` images are not trusted; when no threshold qualifies,
    the strictest one is returned.
    """
    for row in curve:
        if (row["threshold"] >= floor and row["accuracy"] is not None and row["accepted"] >= min_accepted
                and row["accuracy"] >= target_accuracy):
            return row["threshold"]
    return curve[-1]["threshold"] if curve else 0.5


def summarize_predictions(probs: np.ndarray, labels: np.ndarray, classes: list[str], paths: list[str]) -> tuple[dict, list[dict]]:
    n_classes = len(classes)
    predicted = probs.argmax(1) if len(labels) else np.zeros(0, dtype=int)
    top_k = top_k_indices(probs, 5) if len(labels) else np.zeros((0, min(5, n_classes)), dtype=int)
    # imported here: scikit-learn adds ~2 s to every process that only trains, predicts or reports an error
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
    matrix = confusion_matrix(labels, predicted, labels=list(range(n_classes)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=list(range(n_classes)), zero_division=0)
    pairs = [(int(t), int(p), int(matrix[t, p])) for t in range(n_classes) for p in range(n_classes) if t != p and matrix[t, p] > 0]
    pairs.sort(key=lambda item: -item[2])
    losses = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)) if len(labels) else np.zeros(0)
    summary = {
        "num_images": int(len(labels)),
        "top1": float((predicted == labels).mean()) if len(labels) else None,
        "top5": float(top_k_hits(probs, labels, 5).mean()) if len(labels) else None,
        "mean_loss": float(losses.mean()) if len(labels) else None,
        "classes": classes,
        "confusion_matrix": matrix.tolist(),
        "per_class": [{"class": classes[i], "precision": float(precision[i]), "recall": float(recall[i]),
                       "f1": float(f1[i]), "support": int(support[i])} for i in range(n_classes)],
        "most_confused": [{"true": classes[t], "predicted": classes[p], "count": c} for t, p, c in pairs[:20]],
    }
    rows = [{"path": paths[i], "true": int(labels[i]), "predicted": int(predicted[i]), "loss": float(losses[i]),
             "top5": [[int(c), float(probs[i, c])] for c in top_k[i]]} for i in range(len(labels))]
    return summary, rows


def calibration_report(val_logits: np.ndarray, val_labels: np.ndarray, test_logits: np.ndarray, test_labels: np.ndarray,
                       fit: bool = True) -> dict:
    """Fit the temperature on validation; expected calibration error before and after, on both splits."""
    temperature = fit_temperature(val_logits, val_labels) if fit else 1.0
    report = {"temperature": temperature, "fitted_on": "validation" if fit else None}
    for name, logits, labels in (("validation", val_logits, val_labels), ("test", test_logits, test_labels)):
        report[name] = {"ece_before": expected_calibration_error(softmax(logits), labels),
                        "ece_after": expected_calibration_error(softmax(logits, temperature), labels),
                        "reliability_before": reliability(softmax(logits), labels),
                        "reliability_after": reliability(softmax(logits, temperature), labels)}
    return report


def open_set_report(scorer: openset.Scorer, choice: dict, probability_threshold: float, *,
                    test: tuple[torch.Tensor, np.ndarray], test_labels: np.ndarray,
                    unknown: tuple[torch.Tensor, np.ndarray] | None = None) -> dict:
    """How the joint tag decision does on known test photos and unknown evaluation photos, and how well each
    candidate score tells them apart (AUROC; also against the test photos' own leave-one-class-out scores)."""
    threshold = choice["threshold"]
    known = scorer(*test)
    unknown = unknown or (torch.zeros(0, scorer.bank.shape[1]), np.zeros((0, test[1].shape[1]), np.float32))
    other = scorer(*unknown)
    correct = known.predicted == test_labels
    test_pseudo = scorer.leave_one_class_out(test[0], torch.from_numpy(test_labels), test[1])
    return {
        "score": "familiarity",
        "familiarity_threshold": threshold, "probability_threshold": probability_threshold,
        "threshold_basis": choice["basis"],
        "unknown_photos": {"calibration": choice["calibration_unknowns"], "evaluation": len(other.familiarity)},
        # how well each score tells known test photos from unknown ones (1.0: perfectly, 0.5: chance)
        "auroc": {
            "unknown photos": {
                "familiarity": openset.auroc(known.familiarity, other.familiarity),
                "max_probability": openset.auroc(known.probability, other.probability),
                "energy": openset.auroc(openset.energy(test[1], scorer.temperature),
                                        openset.energy(unknown[1], scorer.temperature)) if len(unknown[1]) else None},
            "leave-one-class-out": {"familiarity": openset.auroc(known.familiarity, test_pseudo.familiarity)}},
        "known": openset.operating_point(known.probability, known.familiarity, probability_threshold, threshold, correct),
        "unknown": openset.operating_point(other.probability, other.familiarity, probability_threshold, threshold),
        # the test photos, each judged as if its landmark had never been learned: the run's own estimate of how
        # photos of landmarks it does not know fare (the held-out-classes protocol without retraining)
        "held_out_classes": openset.operating_point(test_pseudo.probability, test_pseudo.familiarity,
                                                    probability_threshold, threshold),
        "known_without_open_set": openset.operating_point(known.probability, known.familiarity,
                                                          probability_threshold, -1.0, correct),
        "unknown_without_open_set": openset.operating_point(other.probability, other.familiarity,
                                                            probability_threshold, -1.0),
        "curve": openset.familiarity_curve(known.probability, known.familiarity, correct, other.probability,
                                           other.familiarity, probability_threshold, held_out=test_pseudo),
        "test_familiarity": known.familiarity,  # per test photo, for predictions.json (popped before saving)
    }


def evaluate_run(run: Run | Path, *, device: torch.device | str = "cpu", prepared=None, checkpoint: str = "best") -> dict:
    """Evaluate a run on its test split; calibrate probabilities, the tagging threshold and the open-set
    decision on validation (plus unknown photos when the dataset has them)."""
    run = Run.of(run)
    run_dir = run.path
    model, meta = load_run_model(run_dir, checkpoint, device)
    config = meta["config"]
    if prepared is None:
        prepared = prepare_data(config)
    common = dict(image_size=config.image_size, mean=meta["mean"], std=meta["std"], device=device,
                  tta_flip=bool(config.tta_flip))
    outputs = familiarity_outputs(model, config, len(meta["classes"]), cache_dir=prepared.cache_dir, **common)
    test_features, test_logits = outputs(prepared.test)
    val_features, val_logits = outputs(prepared.val)
    train_features, train_logits = outputs(prepared.train)
    calibration = calibration_report(val_logits, prepared.val.labels, test_logits, prepared.test.labels,
                                     fit=bool(config.calibrate))
    temperature = calibration["temperature"]
    test_probs, val_probs = softmax(test_logits, temperature), softmax(val_logits, temperature)
    summary, rows = summarize_predictions(test_probs, prepared.test.labels, meta["classes"], prepared.test.paths)
    val_curve = coverage_curve(val_probs, prepared.val.labels)

    unknowns, unknown_paths = {}, {}
    for name, paths in (("calibration", prepared.unknown_calibration), ("evaluation", prepared.unknown_evaluation)):
        if paths:
            decoded = decode_photos(config, paths, prepared.cache_dir)
            unknowns[name], unknown_paths[name] = outputs(decoded), decoded.paths
    own_dim = model.feature_dim if config.joint_familiarity else 0
    train_labels = torch.from_numpy(np.asarray(prepared.train.labels, dtype=np.int64))
    # the calibration photos of other places also count against any photo nearer to them than to its landmark
    bank, bank_labels = openset.with_distractors(
        openset.normalise_features(train_features, own_dim).half(), train_labels,
        unknowns["calibration"][0] if "calibration" in unknowns else torch.zeros(0, train_features.shape[1]), own_dim)
    val_labels = np.asarray(prepared.val.labels, dtype=np.int64)
    known = (torch.cat([train_features, val_features]), torch.cat([train_labels, torch.from_numpy(val_labels)]),
             np.concatenate([train_logits, val_logits]))
    # a joint check's pseudo-unknown threshold is the classifier's own: the other network's score is moved onto it
    passing = config.pseudo_unknown_pass
    offset, own_pseudo = (openset.joint_offset(*known, temperature, bank, bank_labels, own_dim, passing) if own_dim
                          else (0.0, None))
    scorer = openset.Scorer(bank, bank_labels, temperature, own_dim, offset)
    # The familiarity threshold first (from pseudo-unknowns and any unknown photos), then the probability
    # threshold on the validation photos that pass it: those are the photos the tag decision has to sort out.
    pseudo = own_pseudo if own_dim else scorer.leave_one_class_out(*known).familiarity
    # the calibration photos are in the bank themselves: each is judged with its half of them taken out
    calibration_scores = (scorer.distractors_held_out(*unknowns["calibration"]) if "calibration" in unknowns
                          else None)
    choice = openset.choose_familiarity_threshold(
        pseudo, *((calibration_scores.familiarity, calibration_scores.probability >= MIN_DEFAULT_THRESHOLD)
                  if calibration_scores else ()), passing=passing)
    familiar = scorer(val_features, val_logits).familiarity >= choice["threshold"]
    familiar_curve = coverage_curve(val_probs[familiar], val_labels[familiar])
    default_threshold = choose_threshold(familiar_curve)
    open_set = open_set_report(scorer, choice, default_threshold, test=(test_features, test_logits),
                               test_labels=np.asarray(prepared.test.labels), unknown=unknowns.get("evaluation"))
    open_set["familiarity_features"] = config.familiarity_features
    open_set["distractors"] = int((bank_labels == openset.DISTRACTOR).sum())
    open_set["bank_digest"] = openset.bank_digest(bank, bank_labels)
    open_set["unknown_predictions"] = []  # what each unknown photo got, for the Evaluate gallery
    for name, unknown_outputs in unknowns.items():
        scores = calibration_scores if name == "calibration" else scorer(*unknown_outputs)
        open_set["unknown_predictions"] += [
            {"path": path, "split": name, "predicted": int(p), "probability": float(q), "familiarity": float(f)}
            for path, p, q, f in zip(unknown_paths[name], scores.predicted, scores.probability, scores.familiarity)]
    for row, value in zip(rows, open_set.pop("test_familiarity")):
        row["familiarity"] = float(value)
    summary.update({
        "run_id": run_dir.name, "checkpoint": checkpoint, "epoch": meta["epoch"],
        "tta_flip": bool(config.tta_flip), "calibration": calibration,
        "coverage_curve": {"validation": val_curve, "validation_familiar": familiar_curve,
                           "test": coverage_curve(test_probs, prepared.test.labels)},
        "coverage_at_precision": {
            split: [coverage_at_precision(probs, labels, target) for target in PRECISION_TARGETS]
            for split, probs, labels in (("validation", val_probs, prepared.val.labels),
                                         ("test", test_probs, prepared.test.labels))},
        "default_threshold": default_threshold,
        "default_familiarity_threshold": open_set["familiarity_threshold"],
        "open_set": open_set,
        "skipped_images": run.split.get("skipped", {}),
    })
    save_atomic(run.feature_bank(checkpoint),
                lambda tmp: torch.save({"features": bank, "labels": bank_labels}, tmp))
    run.write_evaluation(summary, rows, {"temperature": temperature, "tta_flip": bool(config.tta_flip),
                                         "probability_threshold": default_threshold,
                                         "familiarity_threshold": open_set["familiarity_threshold"],
                                         "familiarity_offset": offset}, checkpoint)
    return summary
