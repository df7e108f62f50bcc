"""Is this a landmark the model knows at all? The open-set half of the tag decision.

A photo library is mostly places the model never learned, and the softmax has
no answer for them: it spreads 100% over the known classes whatever the photo.
So besides "which landmark" we ask "does this photo look like the training
photos of that landmark". The score, *familiarity*, is the cosine similarity
of the photo's backbone feature to its nearest training photo of the predicted
class (the run keeps the normalised training features, a *feature bank*, and
the exported model carries it), plus a tenth of the log of the calibrated top
probability, so a photo that is both close to one training photo and torn
between classes counts as less familiar. ``TrainConfig.familiarity_backbone``
can take another pretrained network's features instead, or ask both networks
(a *joint* check, Lite2's default with Lite0): a photo is familiar only when
it looks like the predicted landmark's training photos to each of them. Measured against the alternatives on
real photos (BENCHMARKS.md, table 8): the softmax probability and the energy
score alone separate known from unknown landmarks less well (AUROC), but for a
tie on the merged sets' held-out classes.

The threshold needs examples of unknown landmarks. Every run has some for
free: each training photo, with its own class taken out of the feature bank
and of the softmax, is a photo of a landmark the rest of the model never saw
(leave-one-class-out pseudo-unknowns). Real unknown photos (an ``unknown/``
folder) tighten it further. A photo is tagged only when both its probability
and its familiarity clear their thresholds.

Photos of other places also count against a photo (*distractors*): the
calibration half of the ``unknown/`` folder (which is where the review's "not
a landmark" verdicts go) joins the bank with the label ``DISTRACTOR``, and a
photo nearer to one of them than to its nearest training photo of the
predicted class loses ``DISTRACTOR_WEIGHT`` times the difference. Measured
(BENCHMARKS.md, table 15): photos of the look-alike place itself stop its
other photos being tagged (Humayun's Tomb as "Taj Mahal"); photos of other
places of the same kind help little. The calibration photos also set the
threshold, which then costs known photos: README, "Photos of other places
teach it".
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

#: With real unknown photos to calibrate on, at most this share of them may be tagged.
MAX_UNKNOWN_TAGGED = 0.05
#: Fewer calibration unknowns than this are too few to set a threshold at a 5% rate.
MIN_CALIBRATION_UNKNOWNS = 20
#: Familiarity thresholds of the curve Evaluate draws.
FAMILIARITY_GRID = [round(t, 2) for t in np.arange(-0.3, 1.0001, 0.01)]


def normalise_features(features: torch.Tensor, own_dim: int = 0) -> torch.Tensor:
    """Unit rows; with ``own_dim`` (a joint check's features, the classifier's then another network's) each part
    is normalised on its own."""
    if own_dim > 0:
        return torch.cat([F.normalize(features[:, :own_dim].float(), dim=1),
                          F.normalize(features[:, own_dim:].float(), dim=1)], dim=1)
    return F.normalize(features.float(), dim=1)


#: Weight of the log top probability in familiarity (chosen on the development sets among 0, 0.03, 0.05, 0.1, 0.2).
PROBABILITY_WEIGHT = 0.1
#: Bank label of a distractor: a photo of another place (the dataset's unknown/ photos), never a class.
DISTRACTOR = -1
#: How much familiarity a photo loses per unit of similarity by which a distractor is nearer to it than its nearest
#: training photo of the predicted class. Chosen on 583 photos of 13 look-alike landmarks with a default 7-wonders
#: run, each third of the landmarks judged with the other two thirds' photos as distractors: 0 / 0.5 / 1 / 2 / 4
#: tagged 45.1 / 45.6 / 48.1 / 51.2 / 50.7% of 319 other-source wonders right at the threshold that tags 5% of the
#: look-alikes (README, "Photos of other places teach it", has the runs at their own thresholds).
DISTRACTOR_WEIGHT = 2.0


def nearest_familiarity(features: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor,
                        probabilities: torch.Tensor, probability_weight: float = PROBABILITY_WEIGHT,
                        distractor_weight: float = DISTRACTOR_WEIGHT) -> torch.Tensor:
    """Familiarity of each photo by one network's features: cosine similarity of its feature (N, D) to the nearest
    bank row (M, D) of its predicted class, plus ``probability_weight`` times the log of its top probability, less
    ``distractor_weight`` times the amount by which its nearest distractor row (label ``DISTRACTOR``) is nearer."""
    top, predicted = probabilities.max(dim=1)
    similarity = F.normalize(features.float(), dim=1) @ bank.float().t()
    same_class = bank_labels.unsqueeze(0) == predicted.unsqueeze(1)
    nearest = similarity.masked_fill(~same_class, -1.0).max(dim=1).values
    distractor = (bank_labels < 0).unsqueeze(0)  # DISTRACTOR rows (TorchScript reads no module constant)
    nearest_distractor = similarity.masked_fill(~distractor, -1.0).max(dim=1).values  # -1 without distractors
    return (nearest + probability_weight * torch.log(top.float().clamp_min(1e-12))
            - distractor_weight * (nearest_distractor - nearest).clamp_min(0.0))


def familiarity(features: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, probabilities: torch.Tensor,
                own_dim: int = 0, offset: float = 0.0) -> torch.Tensor:
    """Familiarity of each photo (features (N, D), bank (M, D) of normalised rows, probabilities (N, C)).

    One network's features: :func:`nearest_familiarity`. A joint check (``own_dim`` > 0: the first ``own_dim``
    columns are the classifier's features, the rest another network's) is the lower of the two, the second moved
    by ``offset`` onto the first's scale (:func:`joint_offset`): a photo passes one threshold only when it looks
    like the predicted landmark's training photos to both networks. TorchScript compiles this function into the
    exported model, so evaluation and prediction compute the same number.
    """
    if own_dim <= 0:
        return nearest_familiarity(features, bank, bank_labels, probabilities)
    own = nearest_familiarity(features[:, :own_dim], bank[:, :own_dim], bank_labels, probabilities)
    other = nearest_familiarity(features[:, own_dim:], bank[:, own_dim:], bank_labels, probabilities)
    return torch.minimum(own, other + offset)


class Scores(NamedTuple):
    probability: np.ndarray  # top calibrated probability
    predicted: np.ndarray
    familiarity: np.ndarray


def leave_one_class_out(features: torch.Tensor, labels: torch.Tensor, logits: np.ndarray, temperature: float,
                        bank: torch.Tensor, bank_labels: torch.Tensor, chunk: int = 1024, *, own_dim: int = 0,
                        offset: float = 0.0) -> Scores:
    """Top probability, predicted class and familiarity of each known photo as if its class had never been
    learned: its own class taken out of the softmax, so the prediction is another class and the familiarity
    compares that class's bank rows only. These pseudo-unknowns are what the familiarity threshold is set from."""
    parts = []
    for start in range(0, len(features), chunk):
        own = labels[start:start + chunk]
        scaled = torch.from_numpy(np.asarray(logits[start:start + chunk], dtype=np.float32)) / temperature
        scaled[torch.arange(len(own)), own] = float("-inf")
        probabilities = torch.softmax(scaled, dim=1)
        top, predicted = probabilities.max(dim=1)
        parts.append((top, predicted, familiarity(features[start:start + chunk], bank, bank_labels, probabilities,
                                                  own_dim, offset)))
    if not parts:
        return Scores(np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))
    return Scores(*(torch.cat(column).numpy() for column in zip(*parts)))


def pseudo_unknown_threshold(pseudo_unknown: np.ndarray, passing: float) -> float:
    """The level that at most ``passing`` (a share) of the pseudo-unknowns reach."""
    return float(np.quantile(pseudo_unknown, 1 - passing)) if len(pseudo_unknown) else 0.0


def joint_offset(features: torch.Tensor, labels: torch.Tensor, logits: np.ndarray, temperature: float,
                 bank: torch.Tensor, bank_labels: torch.Tensor, own_dim: int,
                 passing: float) -> tuple[float, np.ndarray]:
    """For a joint check: (the offset that puts the second network's familiarity on the first's scale, the first's
    pseudo-unknown familiarity). Each network's pseudo-unknown threshold (``passing`` of its pseudo-unknowns
    through) is set on its own; moved by the offset, the second's lands on the first's, so one threshold on the
    joint score is both thresholds at once."""
    own = leave_one_class_out(features[:, :own_dim], labels, logits, temperature, bank[:, :own_dim], bank_labels)
    other = leave_one_class_out(features[:, own_dim:], labels, logits, temperature, bank[:, own_dim:], bank_labels)
    return (pseudo_unknown_threshold(own.familiarity, passing) - pseudo_unknown_threshold(other.familiarity, passing),
            own.familiarity)


def with_distractors(bank: torch.Tensor, bank_labels: torch.Tensor, distractors: torch.Tensor,
                     own_dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The bank (normalised rows, float16) with the features of photos of other places appended as distractor rows
    (label ``DISTRACTOR``), normalised as the bank is."""
    if len(distractors) == 0:
        return bank, bank_labels
    rows = normalise_features(distractors, own_dim).to(bank.device, bank.dtype)
    return (torch.cat([bank, rows]), torch.cat([bank_labels, torch.full((len(rows),), DISTRACTOR,
                                                                        dtype=bank_labels.dtype,
                                                                        device=bank_labels.device)]))


def bank_digest(bank: torch.Tensor, bank_labels: torch.Tensor) -> str:
    """A short digest of a feature bank's rows and labels: an export whose bank has another digest is out of date."""
    digest = hashlib.sha256(bank.detach().cpu().contiguous().numpy().tobytes())
    digest.update(bank_labels.detach().cpu().to(torch.int64).numpy().tobytes())
    return digest.hexdigest()[:16]


class Scorer:
    """Top probability, predicted class and familiarity of photos from their features and logits (a joint check's
    features with ``own_dim`` and ``offset``, see :func:`familiarity`)."""

    def __init__(self, bank: torch.Tensor, bank_labels: torch.Tensor, temperature: float = 1.0, own_dim: int = 0,
                 offset: float = 0.0):
        self.bank, self.bank_labels, self.temperature = bank, bank_labels, temperature
        self.own_dim, self.offset = own_dim, offset

    def __call__(self, features: torch.Tensor, logits: np.ndarray) -> Scores:
        if len(logits) == 0:
            return Scores(np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.float32))
        probs = torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)) / self.temperature, dim=1)
        return Scores(probs.max(1).values.numpy(), probs.argmax(1).numpy(),
                      familiarity(features, self.bank, self.bank_labels, probs, self.own_dim, self.offset).numpy())

    def leave_one_class_out(self, features: torch.Tensor, labels: torch.Tensor, logits: np.ndarray) -> Scores:
        return leave_one_class_out(features, labels, logits, self.temperature, self.bank, self.bank_labels,
                                   own_dim=self.own_dim, offset=self.offset)

    def distractors_held_out(self, features: torch.Tensor, logits: np.ndarray) -> Scores:
        """Scores of the bank's own distractor photos (their features and logits, in bank order), each judged as a
        new photo of another place would be: its half of them (the first or the second half, in folder order)
        leaves the bank for it, so a photo meets neither itself nor the burst shots and copies filed beside it."""
        distractor_rows = torch.nonzero(self.bank_labels.cpu() == DISTRACTOR).flatten()
        if len(distractor_rows) != len(features):
            raise ValueError(f"{len(features)} photos for {len(distractor_rows)} distractor rows")
        second_half = torch.arange(len(features)) >= (len(features) + 1) // 2
        merged = Scores(np.zeros(len(features), np.float32), np.zeros(len(features), np.int64),
                        np.zeros(len(features), np.float32))
        for half in (False, True):
            judged = second_half == half
            keep = torch.ones(len(self.bank_labels), dtype=torch.bool)
            keep[distractor_rows[judged]] = False
            keep = keep.to(self.bank_labels.device)
            scores = Scorer(self.bank[keep], self.bank_labels[keep], self.temperature, self.own_dim,
                            self.offset)(features[judged.to(features.device)], np.asarray(logits)[judged.numpy()])
            for column, values in zip(merged, scores):
                column[judged.numpy()] = values
        return merged


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The free-energy score ``T * logsumexp(logits / T)`` (higher: more familiar)."""
    scaled = logits / temperature
    top = scaled.max(1, keepdims=True)
    return temperature * (top[:, 0] + np.log(np.exp(scaled - top).sum(1)))


def auroc(known: np.ndarray, unknown: np.ndarray) -> float | None:
    """Area under the ROC curve of telling known (positive) from unknown photos by a score."""
    if len(known) == 0 or len(unknown) == 0:
        return None
    from sklearn.metrics import roc_auc_score  # imported when used: see evaluate.summarize_predictions
    return float(roc_auc_score(np.r_[np.ones(len(known)), np.zeros(len(unknown))], np.r_[known, unknown]))


def choose_familiarity_threshold(pseudo_unknown: np.ndarray, unknown: np.ndarray | None = None,
                                 unknown_confident: np.ndarray | None = None, *, passing: float) -> dict:
    """The familiarity threshold, and what it was set from.

    From pseudo-unknowns: the level that at most ``passing`` (a run's
    ``pseudo_unknown_pass``) of them reach. With at least ``MIN_CALIBRATION_UNKNOWNS`` real unknown photos, also
    the lowest level at which at most ``MAX_UNKNOWN_TAGGED`` of them would be
    tagged (``unknown_confident``: they also clear the probability threshold);
    the stricter of the two wins, because a wrong place is the worst outcome.
    """
    threshold = pseudo_unknown_threshold(pseudo_unknown, passing)
    basis = ["leave-one-class-out"] if len(pseudo_unknown) else []
    if unknown is not None and len(unknown) >= MIN_CALIBRATION_UNKNOWNS:
        confident = np.ones(len(unknown), bool) if unknown_confident is None else unknown_confident
        candidates = np.sort(np.unique(unknown))
        above_all = float(np.nextafter(unknown.max(), np.inf))  # float16 features can score a little over 1.0
        real = next((float(t) for t in candidates if (confident & (unknown >= t)).mean() <= MAX_UNKNOWN_TAGGED),
                    above_all)
        basis.append("unknown photos")
        threshold = max(threshold, real)
    return {"threshold": float(threshold), "basis": basis,  # not rounded: rounding down would let more through
            "calibration_unknowns": 0 if unknown is None else int(len(unknown))}


TAGGED, UNKNOWN, ABSTAINED = 0, 1, 2


def tag_outcomes(probabilities: np.ndarray, familiarity_scores: np.ndarray, probability_threshold: float,
                 familiarity_threshold: float | None) -> np.ndarray:
    """The joint rule per photo, from a model's probabilities ``(N, C)`` and familiarity ``(N,)``: TAGGED,
    UNKNOWN (not familiar) or ABSTAINED (not sure enough), as :func:`~landmark_core.tagging.decision.decide` takes it for
    one photo without GPS."""
    familiar = (np.ones(len(probabilities), bool) if familiarity_threshold is None
                else familiarity_scores >= familiarity_threshold)
    sure = probabilities.max(1) >= probability_threshold
    return np.where(~familiar, UNKNOWN, np.where(sure, TAGGED, ABSTAINED))


def operating_point(probability: np.ndarray, familiarity_scores: np.ndarray, probability_threshold: float,
                    familiarity_threshold: float, correct: np.ndarray | None = None) -> dict:
    """What the joint rule does to a set of photos: the share tagged and, for known photos, its precision.
    ``probability`` is each photo's top probability."""
    tagged = tag_outcomes(np.asarray(probability).reshape(-1, 1), np.asarray(familiarity_scores),
                          probability_threshold, familiarity_threshold) == TAGGED
    point = {"count": int(len(tagged)), "tagged": int(tagged.sum()),
             "tagged_share": float(tagged.mean()) if len(tagged) else None}
    if correct is not None:
        point["precision"] = float(correct[tagged].mean()) if tagged.any() else None
    return point


def familiarity_curve(known_probability, known_familiarity, known_correct, unknown_probability, unknown_familiarity,
                      probability_threshold: float, held_out: Scores | None = None) -> list[dict]:
    """For each familiarity threshold (at the probability threshold): known coverage and precision, unknowns tagged
    and, with ``held_out`` (the known photos' :func:`leave_one_class_out` scores), the share of them tagged."""
    rows = []
    for threshold in FAMILIARITY_GRID:
        known = operating_point(known_probability, known_familiarity, probability_threshold, threshold, known_correct)
        row = {"threshold": threshold, "known_tagged": known["tagged_share"], "precision": known["precision"]}
        if len(unknown_familiarity):
            row["unknown_tagged"] = operating_point(unknown_probability, unknown_familiarity, probability_threshold,
                                                    threshold)["tagged_share"]
        if held_out is not None and len(held_out.familiarity):
            row["held_out_tagged"] = operating_point(held_out.probability, held_out.familiarity,
                                                     probability_threshold, threshold)["tagged_share"]
        rows.append(row)
    return rows
