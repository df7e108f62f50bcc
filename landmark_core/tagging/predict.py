"""Top-k predictions from an exported run, for a path, bytes or a PIL image, with the open-set score."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.errors import ImageError
from ..core.images import ImageSource, load_model_input, same_shape_batches
from ..export.exporter import load_exported
from ..geo.places import Place, dataset_places_file, gazetteer
from ..runs.run import Run
from ..scoring.calibration import top_k_indices


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
    """Loads a run's exported model once; each call decodes, orients and classifies (one photo, or a batch).

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
        self.interpolation: str = str(self.meta.get("interpolation", "bilinear"))
        self.whole_photo: bool = self.meta.get("familiarity_view") == "whole"
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

    def decode(self, source: ImageSource) -> np.ndarray:
        """The photo as the model is fed it: the short side resized to ``resize_size`` and centre-cropped square
        (uint8, S x S x 3), exactly as training decoded its photos; or, for a model whose familiarity also looks
        at the whole photo (export ``familiarity_view`` "whole"), all of it at that short side. Any thread may
        call it; photos of one shape batch together (:meth:`assess_batch`)."""
        return load_model_input(source, self.resize_size, self.interpolation, self.whole_photo)

    @torch.inference_mode()
    def classify_decoded(self, photos: list[np.ndarray]) -> list[tuple[np.ndarray, float | None] | None]:
        """(probabilities, familiarity) per decoded photo (:meth:`decode`), a forward pass per shape; None where
        the model gives non-finite numbers."""
        results: list[tuple[np.ndarray, float | None] | None] = [None] * len(photos)
        for batch in same_shape_batches(photos, max(1, len(photos))):
            for index, result in zip(batch, self._classify_batch(np.stack([photos[i] for i in batch]))):
                results[index] = result
        return results

    def _classify_batch(self, photos: np.ndarray) -> list[tuple[np.ndarray, float | None] | None]:
        batch = torch.from_numpy(photos).permute(0, 3, 1, 2).to(self.device)
        if self.device.type != "cpu":  # torch's antialiased resize has no uint8 kernel on GPUs; on decoded photos
            batch = batch.float()      # it is the identity, and the whole view is rounded to levels either way
        if self.open_set:
            probs, familiarity = self.module.classify(batch)
            rows = zip(probs.cpu().numpy(), familiarity.cpu().numpy().tolist())
        else:
            rows = ((row, None) for row in self.module(batch).cpu().numpy())
        return [(p, f) if np.isfinite(p).all() and (f is None or np.isfinite(f)) else None for p, f in rows]

    def classify(self, source: ImageSource) -> tuple[np.ndarray, float | None]:
        """(class probabilities, familiarity or None)."""
        result = self.classify_decoded([self.decode(source)])[0]
        if result is None:
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

    def assess_batch(self, photos: list[np.ndarray], top_k: int = 5) -> list[Assessment | None]:
        """:meth:`assess` for many photos already decoded (:meth:`decode`), a forward pass per shape; None for a
        photo the model gives non-finite numbers for."""
        if not photos:
            return []
        return [None if result is None else Assessment(self._ranked(result[0], top_k), result[1])
                for result in self.classify_decoded(photos)]
