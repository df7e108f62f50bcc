"""Grad-CAM: where in a photo a run's model looked for the class it predicts (captum's ``LayerGradCam``).

The layer is found, not named per model: the last module whose output is still a spatial feature map
(N, C, H, W with H, W > 1) when the backbone runs, so every registered model is explained the same way. The
photo goes through the run's own preprocessing (the resize and centre crop training used, the model's
normalisation), so the heatmap lines up with the square the model saw.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ..core.errors import LandmarkError
from ..core.images import ImageSource, load_square
from ..runs.config import run_preprocessing
from ..training.checkpoints import load_run_model


@dataclass
class Explanation:
    photo: Image.Image        # the centre crop the model saw
    heatmap: np.ndarray       # (H, W) in 0-1, the crop's size
    class_index: int
    class_name: str
    probability: float        # softmax probability of the explained class (uncalibrated)

    def overlay(self, strength: float = 0.5) -> Image.Image:
        """The heatmap (turbo colours, hot = important) blended over the photo."""
        from matplotlib import colormaps
        colours = (colormaps["turbo"](self.heatmap)[..., :3] * 255).astype(np.uint8)
        return Image.blend(self.photo, Image.fromarray(colours), strength)


def last_spatial_layer(model: nn.Module, image_size: int) -> nn.Module:
    """The last module of ``model.backbone`` (in execution order) whose output is a feature map larger than 1x1."""
    found: list[nn.Module] = []

    def record(module, inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-1] > 1 and output.shape[-2] > 1:
            found.append(module)

    hooks = [m.register_forward_hook(record) for m in model.backbone.modules() if m is not model.backbone]
    try:
        with torch.no_grad():
            model.backbone(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    if not found:
        raise ValueError("the backbone has no spatial feature map to explain")
    return found[-1]


class Explainer:
    """A run's model, ready to explain photos (built once; cheap per photo)."""

    def __init__(self, run_dir: str | Path, checkpoint: str = "best", device: torch.device | str = "cpu"):
        from captum.attr import LayerGradCam
        self.model, meta = load_run_model(Path(run_dir), checkpoint, device)
        self.model.float().eval()
        self.config = meta["config"]
        self.classes: list[str] = list(meta["classes"])
        self.mean = torch.tensor(meta["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(meta["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.preprocessing = run_preprocessing(self.config)
        self.device = torch.device(device)
        self.layer = last_spatial_layer(self.model, self.config.image_size)
        self.grad_cam = LayerGradCam(self.model, self.layer)
        self._lock = threading.Lock()

    def explain(self, source: ImageSource, target: int | str | None = None) -> Explanation:
        """Grad-CAM of ``target`` (a class index or name; default: the model's top prediction) for one photo."""
        size = self.config.image_size
        square = load_square(source, self.preprocessing.resize_size, self.preprocessing.interpolation)
        offset = (square.shape[0] - size) // 2
        crop = np.ascontiguousarray(square[offset:offset + size, offset:offset + size])
        pixels = torch.from_numpy(crop).permute(2, 0, 1)[None].float().div(255)
        inputs = ((pixels - self.mean) / self.std).to(self.device).requires_grad_(True)
        with torch.no_grad():
            probabilities = F.softmax(self.model(inputs).float(), dim=1)[0].cpu()
        if target is None:
            index = int(probabilities.argmax())
        elif isinstance(target, str):
            if target not in self.classes:
                raise LandmarkError(f"{target!r} is not a class of this run ({', '.join(self.classes[:5])}, …)")
            index = self.classes.index(target)
        else:
            index = int(target)
            if not 0 <= index < len(self.classes):
                raise LandmarkError(f"class index {index} is out of range (0-{len(self.classes) - 1})")
        with self._lock:  # captum hooks the layer while it attributes: one photo at a time (the app shares this)
            attribution = self.grad_cam.attribute(inputs, target=index, relu_attributions=True)
        upsampled = F.interpolate(attribution.detach().float(), size=(size, size), mode="bilinear", align_corners=False)
        heatmap = upsampled[0, 0].cpu().numpy()
        peak = float(heatmap.max())
        heatmap = heatmap / peak if peak > 0 else np.zeros_like(heatmap)
        return Explanation(Image.fromarray(crop), heatmap.astype(np.float32), index, self.classes[index],
                           float(probabilities[index]))

