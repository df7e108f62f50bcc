"""The linear probe: a classification head fit in one go on cached backbone features.

With the backbone frozen, training the head is multinomial logistic regression
on fixed features, a convex problem: full-batch L-BFGS solves it to the optimum
in a second or two, where minibatch AdamW epochs only approach it (and add
learning rate, schedule and epoch count to tune). The L2 strength is the one
real choice; it is picked along a warm-started path by the validation loss, with
the one-standard-error rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: L2 strengths tried, strongest first (each fit warm-starts from the previous one). On standardised
#: features with the mean cross-entropy this spans "near class means" to "nearly unregularised".
WEIGHT_DECAYS = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
#: Used when there is no validation split to choose with (the middle of the range that won on real photos).
DEFAULT_WEIGHT_DECAY = 0.03


@dataclass
class LinearHead:
    weight: torch.Tensor  # (C, D), applies to raw (unstandardised) features
    bias: torch.Tensor  # (C,)
    weight_decay: float
    val_loss: float | None
    val_accuracy: float | None = None

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weight.T + self.bias


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, mean 1 over the samples: every class counts the same in the loss."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp_(min=1)
    return len(labels) / (num_classes * counts)


def fit_linear_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                    val_features: torch.Tensor | None = None, val_labels: torch.Tensor | None = None,
                    weight_decays=WEIGHT_DECAYS, class_weight: torch.Tensor | None = None,
                    max_iter: int = 100) -> LinearHead:
    """Logistic regression on ``features`` (N, D) by L-BFGS, L2 strength chosen on the validation features."""
    features = features.float().cpu()
    labels = labels.long().cpu()
    class_weight = None if class_weight is None else class_weight.float().cpu()
    mean = features.mean(0)
    scale = features.std(0, unbiased=False).clamp_(min=1e-6)  # defined for a single sample too
    standardised = (features - mean) / scale  # equal scales: one L2 strength fits every feature, and L-BFGS converges fast
    validating = val_features is not None and val_labels is not None and len(val_labels) > 0
    if not validating and len(weight_decays) > 1:  # nothing to choose with
        weight_decays = (DEFAULT_WEIGHT_DECAY,)
    weight = torch.zeros(features.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    fitted: list[LinearHead] = []
    for decay in weight_decays:
        optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                      tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(standardised @ weight + bias, labels, weight=class_weight)
            loss = loss + decay / 2 * (weight * weight).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():  # fold the standardisation into the layer: the head takes raw features
            head = LinearHead((weight / scale[:, None]).T.clone(), bias - (mean / scale) @ weight, decay, None)
            if validating:
                val_logits = head.logits(val_features.float().cpu())
                head.val_loss = float(F.cross_entropy(val_logits, val_labels.long().cpu()))
                head.val_accuracy = float((val_logits.argmax(1) == val_labels.cpu()).float().mean())
        fitted.append(head)
    if not validating:
        return fitted[0]
    return _one_standard_error_choice(fitted, len(val_labels))


def _one_standard_error_choice(fitted: list[LinearHead], count: int) -> LinearHead:
    """The strongest L2 whose validation accuracy is within one standard error of the best (the 1-SE rule).

    A small validation split often cannot tell the strengths apart: then the
    smoother head wins. Accuracy, not log loss, decides: once every validation
    photo is right, the log loss keeps falling as the L2 weakens and the logits
    grow without bound, which would make the head 100% sure of photos of places
    it never saw.
    """
    best = max(head.val_accuracy for head in fitted)
    standard_error = (best * (1 - best) / count) ** 0.5
    return max((head for head in fitted if head.val_accuracy >= best - standard_error - 1e-9),
               key=lambda head: head.weight_decay)
