"""The round trip: a written export, loaded back, must answer as the module it came from."""
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.errors import ModelError
from .module import ExportedClassifier

#: Probe photos of the round trip: odd sizes, both orientations, one smaller than the input.
_PROBE_SHAPES = ((3, 157, 211), (3, 480, 360), (3, 90, 120))


def _probe_photo(shape, generator: torch.Generator) -> torch.Tensor:
    """A smooth random picture (coarse noise, enlarged): like a photo, unlike pixel noise, it does not turn the
    one-level rounding differences between resize kernels (ONNX Runtime vs torch) into large output changes."""
    coarse = torch.rand(1, shape[0], 6, 8, generator=generator) * 255
    return F.interpolate(coarse, size=list(shape[1:]), mode="bilinear", align_corners=False)[0].round().to(torch.uint8)


def check_round_trip(run_dir: Path, wrapper: ExportedClassifier, reloaded: list, at_size: float, resized: float,
                      strict_ranks: bool = True) -> float:
    """The eager model and each reloaded one agree on probe photos, with finite outputs: on one at the model's
    resize size within ``at_size`` with the same top-5; on photos of other sizes within ``resized``, with the same
    top-5 (``strict_ranks``) or the same top class. Returns the largest gap."""
    generator = torch.Generator().manual_seed(0)
    max_diff = 0.0
    shapes = [(3, wrapper.resize_size, wrapper.resize_size), *_PROBE_SHAPES]
    for shape in shapes:
        probe = _probe_photo(shape, generator)
        own_size = shape == shapes[0]
        tolerance = at_size if own_size else resized
        with torch.no_grad():
            expected_probs, expected_score = wrapper.classify(probe)
            if not (torch.isfinite(expected_probs).all() and torch.isfinite(expected_score)):
                raise ModelError(f"{run_dir.name}: the model gives non-finite probabilities (its weights hold NaN or "
                                 "inf); nothing was exported")
            for model in reloaded:
                probs, score = model.classify(probe)
                gap = float(max((probs - expected_probs).abs().max(), (score - expected_score).abs().max()))
                max_diff = max(max_diff, gap)
                if own_size or strict_ranks:
                    same_ranks = torch.equal(top_five(probs), top_five(expected_probs)) or gap <= 1e-6
                else:  # the same top class, unless the probe's top two are closer than the gap (a tie to rounding)
                    top_two = torch.topk(expected_probs, min(2, expected_probs.shape[-1])).values
                    tied = len(top_two) > 1 and float(top_two[0] - top_two[1]) <= gap
                    same_ranks = int(probs.argmax()) == int(expected_probs.argmax()) or tied or gap <= 1e-6
                if not gap <= tolerance or not same_ranks:
                    where = "at the model's input size" if own_size else f"on a {shape[2]}x{shape[1]} photo"
                    raise ModelError(f"export round trip differs by {gap:.2e} {where} (tolerance {tolerance:.0e})"
                                     + ("" if same_ranks else " and ranks the classes differently"))
    return max_diff


def top_five(probabilities: torch.Tensor) -> torch.Tensor:
    return torch.topk(probabilities, min(5, probabilities.shape[-1])).indices
