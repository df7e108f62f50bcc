"""The exported module: a run's network with its preprocessing, calibration, familiarity bank and
thresholds inside, so every reader of the file makes the same decision."""
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.transforms import MAX_WHOLE_PHOTO_ASPECT, centre_crop, resize_short_side, squash_levels
from ..models.builders import familiarity_network
from ..models.registry import FlipAveraged, get_spec
from ..runs.config import run_preprocessing
from ..runs.run import Run
from ..scoring.openset import familiarity
from ..training.checkpoints import load_feature_bank, load_run_model

#: What a frozen export keeps besides ``forward``: readers of the file use them.
PRESERVED_ATTRIBUTES = ["class_names", "image_size", "resize_size", "interpolation", "temperature", "flip_tta", "preprocess",
                        "classify", "has_feature_bank", "probability_threshold", "familiarity_threshold",
                        "familiarity_whole_photo"]


class ExportedClassifier(nn.Module):
    """uint8 image(s) in, calibrated class probabilities out, with the run's preprocessing inside.

    The resize runs on uint8 with the model's own filter (timm's config says
    bicubic for EfficientNet-Lite), exactly as training decoded its photos;
    ``flip_tta`` averages the features of the photo and its mirror image, and
    ``temperature`` is the softmax temperature fit on the validation split.
    ``classify`` also returns each photo's familiarity (see :mod:`landmark_core.scoring.openset`),
    computed against the ``feature_bank`` of normalised training features that
    evaluation saved, from the model's own backbone, from a separate
    ``familiarity_network`` on the same crop or, with ``familiarity_whole_photo``, on the whole input photo
    squashed to the input size, or from both (a joint check); the two default thresholds travel with the model.
    A whole-photo model is fed whole photos (any size; ``load_resized`` gives the size it batches at), not squares.
    """
    class_names: List[str]

    def __init__(self, model: nn.Module, class_names: List[str], mean, std, image_size: int, resize_size: int,
                 interpolation: str = "bilinear", temperature: float = 1.0, flip_tta: bool = False,
                 feature_bank: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, probability_threshold: float = 0.5,
                 familiarity_threshold: float = -1.0, familiarity_network: Optional[nn.Module] = None,
                 familiarity_mean=None, familiarity_std=None, familiarity_own_dim: int = 0,
                 familiarity_offset: float = 0.0, familiarity_whole_photo: bool = False):
        super().__init__()
        self.features = FlipAveraged(model.backbone, flip_tta)
        self.head = model.head
        # familiarity from another pretrained network's features (TrainConfig.familiarity_backbone), on the same
        # crop, renormalised from this model's statistics to that network's own
        self.separate_familiarity_backbone = familiarity_network is not None
        self.familiarity_features = FlipAveraged(familiarity_network.backbone if familiarity_network is not None
                                                 else nn.Identity(), flip_tta)
        scale, shift = torch.ones(3), torch.zeros(3)
        if familiarity_network is not None:
            mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
            own_mean = torch.tensor(familiarity_mean, dtype=torch.float32)
            own_std = torch.tensor(familiarity_std, dtype=torch.float32)
            scale, shift = std_t / own_std, (mean_t - own_mean) / own_std
        self.register_buffer("familiarity_scale", scale.view(1, 3, 1, 1))
        self.register_buffer("familiarity_shift", shift.view(1, 3, 1, 1))
        self.familiarity_whole_photo = bool(familiarity_whole_photo) and familiarity_network is not None
        self.whole_photo_max_aspect = float(MAX_WHOLE_PHOTO_ASPECT) if self.familiarity_whole_photo else 0.0
        self.class_names = list(class_names)
        self.image_size = image_size
        self.resize_size = resize_size
        self.interpolation = interpolation
        self.temperature = float(temperature)
        self.flip_tta = bool(flip_tta)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        # a joint check (familiarity_own_dim > 0) compares the classifier's features and the other network's, side
        # by side in one bank; the other's score is moved by familiarity_offset onto the first's scale
        self.familiarity_own_dim = int(familiarity_own_dim) if familiarity_network is not None else 0
        self.familiarity_offset = float(familiarity_offset)
        feature_dim = familiarity_network.feature_dim if familiarity_network is not None else model.feature_dim
        feature_dim += self.familiarity_own_dim
        features, labels = feature_bank if feature_bank is not None else (
            torch.zeros(0, feature_dim, dtype=torch.float16), torch.zeros(0, dtype=torch.long))
        self.register_buffer("bank", features.half())
        self.register_buffer("bank_labels", labels.long())
        self.has_feature_bank = len(labels) > 0
        self.probability_threshold = float(probability_threshold)
        self.familiarity_threshold = float(familiarity_threshold) if self.has_feature_bank else -1.0

    def _resized(self, image: torch.Tensor) -> torch.Tensor:
        """The photo(s) with the short side at the resize size: uint8 through torch's uint8 antialiased kernel
        (what decoding for training used), floats on the 0-255 scale; the long side capped as ``load_resized``
        caps it when the familiarity looks at the whole photo."""
        batch = image.unsqueeze(0) if image.dim() == 3 else image
        batch = batch.contiguous(memory_format=torch.channels_last) if batch.dtype == torch.uint8 else batch.float()
        return resize_short_side(batch, self.resize_size, self.interpolation, self.whole_photo_max_aspect)

    def _normalised(self, levels: torch.Tensor) -> torch.Tensor:
        return (levels.float() / 255.0 - self.mean) / self.std

    def _crop(self, resized: torch.Tensor) -> torch.Tensor:
        """The centre square at the resize size, then its centre crop: as training decoded a photo to a square
        (``load_square``) and cropped that. One crop from a wider photo would be a pixel off whenever the two
        margins are odd."""
        return centre_crop(centre_crop(resized, self.resize_size), self.image_size)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """The classifier's input: the centre crop, normalised."""
        return self._normalised(self._crop(self._resized(image)))

    def _features_and_probabilities(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.features(inputs)
        logits = self.head(features).float()
        return features, F.softmax(logits / self.temperature, dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class probabilities: (C,) for one image, (N, C) for a batch."""
        probs = self._features_and_probabilities(self.preprocess(image))[1]
        return probs[0] if image.dim() == 3 else probs

    @torch.jit.export
    def classify(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(class probabilities, familiarity): familiarity is 1 for every photo when there is no feature bank."""
        resized = self._resized(image)  # once: a full-size photo is resized for the crop and the whole view alike
        inputs = self._normalised(self._crop(resized))
        features, probs = self._features_and_probabilities(inputs)
        if self.has_feature_bank:
            if self.separate_familiarity_backbone:
                # the whole photo squashed to the input size, as evaluation decoded it (load_squashed), or the crop;
                # renormalised from this model's statistics to the other network's own
                seen = (self._normalised(squash_levels(resized, self.image_size)) if self.familiarity_whole_photo
                        else inputs)
                others = self.familiarity_features(seen * self.familiarity_scale + self.familiarity_shift)
                features = torch.cat([features, others], dim=1) if self.familiarity_own_dim > 0 else others
            scores = familiarity(features, self.bank, self.bank_labels, probs, self.familiarity_own_dim,
                                 self.familiarity_offset)
        else:
            scores = torch.ones(probs.shape[0], device=probs.device)
        if image.dim() == 3:
            return probs[0], scores[0]
        return probs, scores


def build_exportable(run: Run | Path, checkpoint: str = "best") -> ExportedClassifier:
    """The run's model wrapped with its preprocessing and, once evaluated, its calibration."""
    run = Run.of(run)
    run_dir = run.path
    model, meta = load_run_model(run_dir, checkpoint, "cpu")
    model = model.to(memory_format=torch.channels_last)  # oneDNN's fast convolution layout: ~1.4x batch throughput on CPU
    config = meta["config"]
    preprocessing = run_preprocessing(config)
    calibration = run.calibration(checkpoint)
    bank = load_feature_bank(run_dir, checkpoint) if "familiarity_threshold" in calibration else None
    return ExportedClassifier(model, meta["classes"], meta["mean"], meta["std"], config.image_size,
                              preprocessing.resize_size, preprocessing.interpolation,
                              float(calibration.get("temperature", 1.0)), bool(config.tta_flip), bank,
                              # evaluated before thresholds were kept per checkpoint: evaluation's own choice
                              float(calibration.get("probability_threshold",
                                                    (run.evaluation or {}).get("default_threshold", 0.5))),
                              float(calibration.get("familiarity_threshold", -1.0)),
                              *_familiarity_network(config, len(meta["classes"]), bank is not None),
                              familiarity_own_dim=model.feature_dim if config.joint_familiarity else 0,
                              familiarity_offset=float(calibration.get("familiarity_offset", 0.0)),
                              familiarity_whole_photo=config.familiarity_view == "whole").eval()


def _familiarity_network(config, num_classes: int, has_bank: bool) -> tuple:
    """(network, its mean, its std) when the run's familiarity check compares another network's features, else
    nothing; channels-last like the classifier."""
    name = config.separate_familiarity_backbone
    if name is None or not has_bank:
        return ()
    preprocessing = get_spec(name).preprocessing
    network = familiarity_network(name, num_classes).to(memory_format=torch.channels_last)
    return network, preprocessing.mean, preprocessing.std
