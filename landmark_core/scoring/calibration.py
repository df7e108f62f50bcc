"""Calibrated probabilities: temperature scaling, expected calibration error, and the operating points they give.

A network's softmax is usually over- or under-confident; the tag threshold and
the coverage/precision curve only mean what they say when "90% sure" is right
about 90% of the time. Temperature scaling (Guo et al., 2017) divides the logits
by one scalar fit on held-out validation data; it never changes which class
ranks first, so accuracy is untouched.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` best classes, best first (all of them when there are fewer than ``k``)."""
    scores = np.asarray(scores)
    k = max(1, min(k, scores.shape[-1]))
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


def top_k_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Whether each row's label is among its ``k`` best-scored classes (top-k accuracy is the mean)."""
    return (top_k_indices(scores, k) == np.asarray(labels)[:, None]).any(-1)


#: Bins of the expected calibration error (the usual 15 equal-width confidence bins).
ECE_BINS = 15


#: Standard deviation of the prior on log T (see :func:`fit_temperature`).
LOG_TEMPERATURE_PRIOR_STD = 0.5


def fit_temperature(logits: np.ndarray, labels: np.ndarray, prior_std: float = LOG_TEMPERATURE_PRIOR_STD) -> float:
    """The most likely temperature T for ``softmax(logits / T)`` given the validation photos (a MAP estimate).

    One parameter, so a bounded 1-D search is exact and cannot overfit a small
    validation split the way a vector or matrix scaling would. A weak Gaussian
    prior on log T around 0 (T = 1) matters only when the data say little: when
    every validation photo is already right, the likelihood alone keeps rising
    as T shrinks to zero and would make every prediction 100% sure, unknown
    photos included; with the prior such a split gives T a little under 1. With
    a few hundred photos and some errors the likelihood dominates.
    """
    if len(labels) < 2:
        return 1.0
    logits_t = torch.as_tensor(logits, dtype=torch.float64)
    labels_t = torch.as_tensor(labels, dtype=torch.long)

    def nll(log_t: float) -> float:
        total = float(F.cross_entropy(logits_t / np.exp(log_t), labels_t, reduction="sum"))
        return total + log_t ** 2 / (2 * prior_std ** 2)

    # golden-section search on log T in [log 0.05, log 20]: NLL is unimodal in T
    low, high = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    return float(np.exp((low + high) / 2))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    if logits.size == 0:
        return logits.astype(np.float64)
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def _confidence_bins(probs: np.ndarray, labels: np.ndarray, bins: int):
    """Per equal-width confidence bin: (low edge, high edge, members mask), with each photo's confidence and rightness."""
    confidence = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [(edges[b], edges[b + 1], which == b) for b in range(bins) if (which == b).any()], confidence, correct


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float | None:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by the bin's share of images."""
    if len(labels) == 0:
        return None
    groups, confidence, correct = _confidence_bins(probs, labels, bins)
    return float(sum(members.mean() * abs(correct[members].mean() - confidence[members].mean())
                     for _, _, members in groups))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict]:
    """Per confidence bin: mean confidence, accuracy and count (the reliability diagram's points)."""
    if len(labels) == 0:
        return []
    groups, confidence, correct = _confidence_bins(probs, labels, bins)
    return [{"bin_low": float(low), "bin_high": float(high), "count": int(members.sum()),
             "confidence": float(confidence[members].mean()), "accuracy": float(correct[members].mean())}
            for low, high, members in groups]


def coverage_at_precision(probs: np.ndarray, labels: np.ndarray, precision: float) -> dict:
    """The most photos a confidence threshold can accept while the accepted ones are ``precision`` correct.

    Photos are accepted in order of confidence; the answer is the largest prefix
    whose accuracy reaches ``precision`` and the threshold (its last confidence)
    that selects it. ``coverage`` 0 with ``threshold`` None when not even the most
    confident photo is right.
    """
    if len(labels) == 0:
        return {"precision": precision, "coverage": None, "threshold": None, "accepted": 0}
    confidence = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    order = np.argsort(-confidence, kind="stable")
    running = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    # ties: a threshold accepts every photo of equal confidence, so only prefixes that end a tie count
    ends = np.append(confidence[order][1:] < confidence[order][:-1], True)
    qualifying = np.flatnonzero((running >= precision - 1e-12) & ends)
    if len(qualifying) == 0:
        return {"precision": precision, "coverage": 0.0, "threshold": None, "accepted": 0}
    last = int(qualifying[-1])
    return {"precision": precision, "coverage": float((last + 1) / len(order)),
            "threshold": float(confidence[order][last]), "accepted": last + 1}
