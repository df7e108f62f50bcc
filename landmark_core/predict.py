"""Top-k predictions from an exported run, for a path, bytes or a PIL image."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .export import load_exported
from .images import ImageSource, load_rgb
from .runs import resolve_run


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    index: int


class Predictor:
    """Loads a run's exported TorchScript model once; each call decodes, orients and classifies."""

    def __init__(self, run: str | Path, device: torch.device | str = "cpu"):
        self.run_dir = resolve_run(run)
        self.device = torch.device(device)
        self.module, self.meta = load_exported(self.run_dir, self.device)
        self.classes: list[str] = list(self.meta["classes"])
        self.resize_size: int = int(self.meta["resize_size"])

    def _tensor(self, source: ImageSource) -> torch.Tensor:
        image = load_rgb(source, min_side=self.resize_size)
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).to(self.device)

    @torch.inference_mode()
    def probabilities(self, source: ImageSource) -> np.ndarray:
        return self.module(self._tensor(source)).cpu().numpy()

    def predict(self, source: ImageSource, top_k: int = 5) -> list[Prediction]:
        probs = self.probabilities(source)
        order = np.argsort(-probs)[: max(1, min(top_k, len(probs)))]
        return [Prediction(self.classes[i], float(probs[i]), int(i)) for i in order]

    def predict_many(self, sources: Sequence[ImageSource], top_k: int = 5) -> list[list[Prediction]]:
        return [self.predict(source, top_k) for source in sources]
