"""Model registry: one builder per model, each with its preprocessing and metadata.

Every model is a :class:`LandmarkNet`: a ``backbone`` that maps images to a
pooled feature vector and a ``head`` (dropout + linear) that maps features to
class logits. That split is what makes freezing, unfreezing and caching frozen
backbone features the same operation for every model.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Callable

import torch
import torch.nn as nn

from ..core.allocator import freed_memory_is_kept
from ..core.errors import ModelError
from ..core.transforms import freeze_scripted, resize_side_for

RESNET18_CACHE_NAME = "resnet18-f37072fd.pth"


@dataclass(frozen=True)
class Preprocessing:
    """How images reach the model: resize the short side to ``resize_size``, centre-crop ``input_size``.

    ``mean``/``std`` of ``None`` mean "the training split's own statistics"
    (models trained from scratch); they are filled in when a run starts.
    """
    input_size: int
    crop_pct: float = 0.875
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: str = "bilinear"

    @property
    def resize_size(self) -> int:
        return resize_side_for(self.input_size, self.crop_pct)

    def at_size(self, input_size: int) -> "Preprocessing":
        return replace(self, input_size=input_size)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., "LandmarkNet"]
    #: Resolves the preprocessing from the model's own config (weights transforms, timm pretrained_cfg).
    #: A function, so that listing models does not import torchvision and timm.
    resolve_preprocessing: Callable[[], Preprocessing]
    pretrained_source: str
    description: str
    #: Training defaults that suit this model (merged into TrainConfig when a field is left unset).
    train_defaults: dict = field(default_factory=dict)
    #: Starts from weights learned elsewhere (ImageNet); False: from random weights.
    pretrained: bool = True

    @property
    def has_frozen_phase(self) -> bool:
        """Whether its first epochs may train the head alone on a frozen backbone: only a pretrained backbone's
        features are worth keeping as they are (a random one's are not)."""
        return self.pretrained

    @property
    def preprocessing(self) -> Preprocessing:
        return _resolved_preprocessing(self.name)


@lru_cache(maxsize=None)
def _resolved_preprocessing(name: str) -> Preprocessing:
    return _REGISTRY[name].resolve_preprocessing()


def inference_batch_size(device, *, memory_kept: bool | None = None) -> int:
    """The fastest inference batch here: large, unless every large CPU batch pays fresh page faults.

    EfficientNet-Lite0 at 160 px on 2 CPU cores, frozen/eager img/s: with the
    tuned allocator (training processes) 110/94 at 64 vs 105/85 at 16; with
    glibc's defaults 85/60 at 64 vs 93/75 at 16.
    """
    kept = freed_memory_is_kept() if memory_kept is None else memory_kept  # None: as in this process
    if torch.device(device).type != "cpu" or kept:
        return 64
    return 16


def folded_for_inference(module: nn.Module) -> nn.Module:
    """A frozen TorchScript copy of an eval-mode CPU ``module`` with BatchNorm folded into the convolutions.

    EfficientNet-Lite0 features run 1.2-1.4x faster this way on CPUs (BatchNorm
    is a separate memory-bound pass otherwise), for ~2 s of scripting. Accelerators
    and modules TorchScript cannot compile get the module itself.
    """
    if module.training or next(module.parameters()).device.type != "cpu":
        return module
    try:
        return freeze_scripted(module)
    except Exception:  # not scriptable: the eager module gives the same numbers, only slower
        return module


class FlipAveraged(nn.Module):
    """A network's output (in float) averaged over each image and its mirror image: flip test-time augmentation,
    the one rule for training's validation, evaluation and the exported model. Inputs that are no image batch
    (cached features: already flip-averaged when asked) pass through once."""

    def __init__(self, network: nn.Module, enabled: bool = True):
        super().__init__()
        self.network = network
        self.enabled = bool(enabled)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        outputs = self.network(inputs).float()
        if self.enabled and inputs.dim() == 4:
            outputs = (outputs + self.network(inputs.flip(-1)).float()) / 2
        return outputs


class LandmarkNet(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Freeze or unfreeze the backbone; a frozen backbone also keeps its BatchNorm statistics."""
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(trainable)
        self.backbone_frozen = not trainable

    #: Keep the backbone's BatchNorm statistics fixed even while its weights train. Pretrained
    #: backbones fine-tuned on a few thousand photos lose accuracy when BatchNorm re-estimates
    #: its statistics from small batches of a new domain.
    freeze_batchnorm: bool = False

    def train(self, mode: bool = True) -> "LandmarkNet":
        super().train(mode)
        if mode and getattr(self, "backbone_frozen", False):
            self.backbone.eval()
        elif mode and self.freeze_batchnorm:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}") from None


def build_model(name: str, num_classes: int, *, pretrained: bool = True, weights_path: str | None = None,
                **options) -> LandmarkNet:
    """Build a registered model with a fresh ``num_classes`` head.

    ``pretrained=False`` gives random initialisation (always offline);
    ``weights_path`` names a plain state-dict file to use instead of the default
    pretrained source. Extra ``options`` go to the builder (e.g. ``width`` of
    ``scratch_cnn``).
    """
    if num_classes < 1:
        raise ModelError("a model needs at least one class")
    return get_spec(name).builder(num_classes=num_classes, pretrained=pretrained, weights_path=weights_path, **options)


# --- metadata -------------------------------------------------------------------------------

def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@lru_cache(maxsize=32)
def model_info(name: str, image_size: int | None = None, num_classes: int = 50) -> dict:
    """Parameters, forward FLOPs per image at ``image_size``, preprocessing and pretrained source."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = get_spec(name)
    size = image_size or spec.preprocessing.input_size
    model = build_model(name, num_classes, pretrained=False).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return {
        "name": name,
        "description": spec.description,
        "parameters": count_parameters(model),
        "gflops": counter.get_total_flops() / 1e9,
        "image_size": size,
        "preprocessing": spec.preprocessing.at_size(size).__dict__ | {"resize_size": spec.preprocessing.at_size(size).resize_size},
        "pretrained_source": spec.pretrained_source,
    }
