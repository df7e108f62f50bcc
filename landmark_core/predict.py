"""Top-k predictions from an exported run, for a path, bytes or a PIL image, with the open-set score."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .calibration import top_k_indices
from .errors import ImageError
from .export import load_exported
from .images import ImageSource, load_rgb
from .places import Place, dataset_places_file, gazetteer
from .runs import Run


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    index: int


@dataclass(frozen=True)
class Assessment:
    """What the model says about one photo: ranked predictions and how familiar the photo looks.

    ``familiarity`` is None for models exported before the open-set decision existed.
    """
    predictions: list[Prediction]
    familiarity: float | None


class Predictor:
    """Loads a run's exported TorchScript model once; each call decodes, orients and classifies.

    ``probability_threshold`` and ``familiarity_threshold`` are the run's default
    tag decision (chosen at evaluation, carried by the exported model);
    ``familiarity_threshold`` is None when the model has no feature bank.
    """

    def __init__(self, run: str | Path | Run, device: torch.device | str = "cpu"):
        self.run = Run.open(run)
        self.run_dir = self.run.path
        self.device = torch.device(device)
        self.module, self.meta = load_exported(self.run_dir, self.device)
        self.classes: list[str] = list(self.meta["classes"])
        self.resize_size: int = int(self.meta["resize_size"])
        self.open_set = hasattr(self.module, "classify") and self.meta.get("familiarity_threshold") is not None
        carried = self.meta.get("probability_threshold")  # the verified export's; older exports: evaluation's
        self.probability_threshold: float = float(carried) if carried is not None else self.run.default_threshold
        self.familiarity_threshold: float | None = (float(self.meta["familiarity_threshold"])
                                                    if self.open_set else None)
        self._places: tuple[object, dict[str, Place | None]] | None = None

    @property
    def places(self) -> dict[str, Place | None]:
        """Each class's place, re-read when the dataset's ``places.csv`` changes (the app edits it)."""
        root = self.run.dataset
        places_file = dataset_places_file(root) if root else None
        version = (str(places_file), places_file.stat().st_mtime_ns) if places_file and places_file.exists() else None
        if self._places is None or self._places[0] != version:
            self._places = (version, gazetteer(root).for_classes(self.classes))
        return self._places[1]

    def _tensor(self, source: ImageSource) -> torch.Tensor:
        image = load_rgb(source, min_side=self.resize_size)
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).to(self.device)

    @torch.inference_mode()
    def classify(self, source: ImageSource) -> tuple[np.ndarray, float | None]:
        """(class probabilities, familiarity or None)."""
        tensor = self._tensor(source)
        if self.open_set:
            probs, familiarity = self.module.classify(tensor)
            result = probs.cpu().numpy(), float(familiarity)
        else:
            result = self.module(tensor).cpu().numpy(), None
        if not np.isfinite(result[0]).all() or (result[1] is not None and not np.isfinite(result[1])):
            raise ImageError("the model gave no finite probabilities for this image")
        return result

    def probabilities(self, source: ImageSource) -> np.ndarray:
        return self.classify(source)[0]

    def _ranked(self, probs: np.ndarray, top_k: int) -> list[Prediction]:
        order = top_k_indices(probs, top_k)
        return [Prediction(self.classes[i], float(probs[i]), int(i)) for i in order]

    def predict(self, source: ImageSource, top_k: int = 5) -> list[Prediction]:
        return self._ranked(self.probabilities(source), top_k)

    def assess(self, source: ImageSource, top_k: int = 5) -> Assessment:
        probs, familiarity = self.classify(source)
        return Assessment(self._ranked(probs, top_k), familiarity)
