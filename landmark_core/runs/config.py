"""Every hyperparameter of a run in one dataclass, its validation, and the device it runs on.

:class:`TrainConfig` is saved as ``config.json`` in every run folder, so a run can be rebuilt from its folder
alone; the CLI's training flags are generated from its fields (the ``help`` of each :func:`setting`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..core.errors import LandmarkError

if TYPE_CHECKING:
    import torch

    from ..models.registry import Preprocessing

# torch and the model registry (timm) are imported where a config is resolved, not when this module is: the CLI
# builds its flags from TrainConfig, and `landmark runs` or `--help` should not wait seconds for torch.


def setting(default, help: str):
    """A config field with its help text (shown by ``landmark train --help``)."""
    return field(default=default, metadata={"help": help})


OPTIMIZERS = ("sgd", "adam", "adamw")
#: How frozen-backbone epochs train the head: ``lbfgs`` fits it to the optimum on all feature views so far
#: (landmark_core.training.probe); ``sgd`` takes minibatch steps with the optimizer, as unfrozen epochs do.
HEAD_SOLVERS = ("lbfgs", "sgd")
SCHEDULERS = ("cosine", "onecycle", "plateau", "none")
#: ``full``: random resized crop, flip and colour jitter, scaled by the strength.
#: ``crop_flip``: the classic random crop + flip, done on uint8 without resampling (fastest on CPUs).
#: ``trivial``: ``full``, then TrivialAugment's one random operation per photo (torchvision's TrivialAugmentWide).
AUGMENTATIONS = ("full", "crop_flip", "trivial")
INTERPOLATIONS = ("bilinear", "bicubic")
MIXED_PRECISION = ("auto", "off", "bf16")
#: ``familiarity_backbone`` value for the classifier's own features; ``own+MODEL`` asks both networks.
OWN_FEATURES = "own"
JOINT_PREFIX = OWN_FEATURES + "+"
#: What the separate familiarity network sees: the classifier's centre crop, or the whole photo squashed to the
#: input size (its full width: the rest of a building, its surroundings).
FAMILIARITY_VIEWS = ("crop", "whole")
#: The fields that take one of a few values, and those values (validation and the CLI's choices).
CHOICES = {"optimizer": OPTIMIZERS, "scheduler": SCHEDULERS, "head_solver": HEAD_SOLVERS, "augmentation": AUGMENTATIONS,
           "interpolation": INTERPOLATIONS, "mixed_precision": MIXED_PRECISION, "familiarity_view": FAMILIARITY_VIEWS}


#: Upper bounds that keep a typo from asking for terabytes (an image_size of 1,000,000 is a 53 TiB batch).
MAX_IMAGE_SIZE = 1024
MAX_BATCH_SIZE = 4096
MAX_EPOCHS = 10_000


@dataclass
class TrainConfig:
    """Every hyperparameter of a run. ``None`` means "the model's default" (see ``ModelSpec.train_defaults``)."""
    data: str = setting("", "dataset folder (train/ and test/ of class folders, or class folders only), or 'demo'")
    model: str = setting("scratch_cnn", "scratch_cnn (random weights) or a pretrained model from `landmark models` "
                                          "(efficientnet_lite2 was the most accurate on real photos)")
    image_size: int | None = setting(None, "input size in pixels (default: the model's own)")
    batch_size: int | None = setting(None, 'photos per training batch')
    epochs: int | None = setting(None, 'passes over the training split (frozen epochs included)')
    optimizer: str | None = setting(None, 'sgd, adam or adamw')
    lr: float | None = setting(None, 'peak learning rate of the head')
    weight_decay: float | None = setting(None, 'weight decay (L2 for sgd and adam, decoupled for adamw)')
    momentum: float = setting(0.9, 'SGD momentum (Nesterov when above 0)')
    scheduler: str | None = setting(None, 'learning-rate schedule: cosine, onecycle, plateau or none')
    warmup_epochs: float | None = setting(None, 'linear warm-up of the cosine schedule, in epochs')
    label_smoothing: float | None = setting(None, 'label smoothing of the cross-entropy loss, 0-1')
    augment: float | None = setting(None, 'augmentation strength 0-1 (0: centre crops only)')
    augmentation: str | None = setting(None, 'augmentation recipe: full (crop, flip, colour), crop_flip, or trivial '
                                             '(full, then one random TrivialAugment operation per photo)')
    mixup: float | None = setting(None, 'mixup: blend pairs of training photos and their labels, Beta(alpha, alpha) '
                                        'shares (0: off)')
    cutmix: float | None = setting(None, 'cutmix: paste a box of one training photo into another, Beta(alpha, alpha) '
                                         'areas (0: off; with mixup too, each batch takes one of the two; both only '
                                         'in epochs that train the whole network, not on frozen features)')
    keep_best: bool | None = setting(None, "keep the epoch with the best validation accuracy; off: the last epoch "
                                           "(with an annealed learning rate and the weight average, usually the "
                                           "better one; early stopping always keeps the best)")
    ema_epochs: float | None = setting(None, 'validate, keep and export an exponential moving average of the weights '
                                             'over about the last N epochs (0: the weights as trained)')
    freeze_epochs: int | None = setting(None, 'epochs that train only the head on a frozen backbone')
    backbone_lr_scale: float | None = setting(None, "backbone learning rate as a fraction of the head's once unfrozen")
    freeze_batchnorm: bool | None = setting(None, 'keep BatchNorm statistics frozen while fine-tuning')
    head_solver: str | None = setting(None, 'frozen epochs fit the head by lbfgs on cached features, or by sgd steps')
    cache_features: bool = setting(True, 'cache backbone features during frozen epochs')
    feature_views: int | None = setting(None, 'augmented copies of the training set cached for frozen epochs')
    tta_flip: bool | None = setting(None, "average each photo's prediction with its mirror image's (evaluation and export)")
    # Measured on real photos (BENCHMARKS.md tables 8 and 15, README): Lite0's frozen features instead of Lite2's
    # own tag fewer look-alike landmarks (13.6% of 582 instead of 25.1%) but more of another set's (8.2-9.4% instead
    # of 4.2-5.2%); asking both (own+efficientnet_lite0, Lite2's default) tags fewer unknowns than either in every
    # protocol (look-alikes 12.5%) for 4-13 points of known photos and a second, smaller forward pass.
    familiarity_backbone: str | None = setting(None, "whose features the familiarity check compares: 'own' (the "
                                                     "classifier's), a pretrained model's instead, or "
                                                     "own+MODEL: both must find the photo familiar (the default "
                                                     "of efficientnet_lite2: own+efficientnet_lite0)")
    # Measured on real photos (exploration on the default run's frozen features, README "Look-alike landmarks"):
    # Lite0 on the whole photo, squashed, instead of the centre crop: look-alikes tagged at the run's own
    # thresholds 16.6% -> 9.9% for 1.6 points of other-source photos; a square of the same photo gained nothing,
    # and the classifier's own features on the whole photo gained nothing either (so only the other network's view).
    # Tried on the same photos and not kept (README "Tried on the same photos, not kept"): Lite0 fine-tuned with a
    # sub-center ArcFace head, class-conditional thresholds, GeM / R-MAC / regional pooling, matching the CNN's
    # local features, Lite1, 224-448 px, mirrored views. Other-source photos tagged at the threshold that tags 5%
    # of the look-alikes stayed at 36-63% (57% for this view), so the features, not the score, are the limit.
    familiarity_view: str | None = setting(None, "what the separate familiarity network sees: crop (the "
                                                 "classifier's centre crop) or whole (all of the photo, squashed "
                                                 "to the input size; efficientnet_lite2's default)")
    # Measured on real photos (BENCHMARKS.md, tables 8 and 15; efficientnet_lite2's default check): 7% instead of
    # 10% tags 3.4% of 582 look-alike landmarks instead of 6.4%, 10-19% of a set's own held-out landmarks instead
    # of 12-22% and 0.7-2.6% of another set's instead of 2.6-4.1%, for 4.7 points of 319 other-source photos of
    # known landmarks (51.1% tagged, all right) and 0.6-9 of the known test photos. A wrong place is the worst
    # outcome, so 7% is Lite2's default; the other models keep the 10% they were measured with.
    pseudo_unknown_pass: float | None = setting(None, "share of leave-one-class-out pseudo-unknowns (each "
                                                      "training photo judged with its own landmark left out) that "
                                                      "may reach the familiarity threshold: lower tags fewer "
                                                      "unknown landmarks and fewer known ones (efficientnet_lite2: "
                                                      "0.07, others 0.10)")
    class_balanced: bool = setting(False, 'weight the loss by inverse class frequency')
    resize_size: int | None = setting(None, "short side before the centre crop (default: from the model's crop_pct)")
    interpolation: str | None = setting(None, "resize filter, bilinear or bicubic (default: the model's)")
    calibrate: bool = setting(True, 'fit a softmax temperature on the validation split')
    val_fraction: float = setting(0.1, 'fraction of the training photos held out for validation')
    test_fraction: float = setting(0.2, 'test fraction taken off when the dataset has no test/ folder')
    early_stopping_patience: int = setting(0, 'stop after this many epochs without a better validation accuracy (0: off)')
    seed: int = setting(0, 'random seed (split, initialisation, batch order, augmentation)')
    device: str = setting("auto", 'auto, cpu, cuda, cuda:N or mps')
    pretrained: bool = setting(True, "start from the model's ImageNet weights")
    weights_path: str | None = setting(None, 'a local ImageNet weights file for the backbone (e.g. resnet18-f37072fd.pth)')
    model_options: dict = field(default_factory=dict, metadata={"cli": False})  # builder options (tests)
    log_every: int = setting(10, 'write a batch record to metrics.jsonl every N batches')
    mixed_precision: str = setting("auto", 'auto (bfloat16 on CUDA GPUs that support it), off or bf16')
    channels_last: bool = setting(True, 'channels-last memory (faster convolutions on CPUs and tensor-core GPUs)')

    _FALLBACKS = {"batch_size": 64, "epochs": 10, "optimizer": "adamw", "lr": 1e-3,
                  "weight_decay": 1e-4, "scheduler": "cosine", "label_smoothing": 0.0, "augment": 0.5,
                  "augmentation": "full", "freeze_epochs": 0, "backbone_lr_scale": 1.0, "freeze_batchnorm": False, "warmup_epochs": 1.0,
                  "head_solver": "sgd", "feature_views": 4, "tta_flip": False, "mixup": 0.0, "cutmix": 0.0,
                  "ema_epochs": 0.0, "keep_best": True, "familiarity_backbone": OWN_FEATURES,
                  "familiarity_view": "crop", "pseudo_unknown_pass": 0.10}

    def resolved(self, training_photos: int | None = None) -> "TrainConfig":
        """A copy with every ``None`` replaced by the model's default, validated.

        A model whose default training length is a number of photos seen (``photo_passes``) gets its epochs
        from ``training_photos`` (the photos of the dataset's training folder): a larger set trains fewer
        epochs within about the same time, inside ``epoch_range``; without the count, its ``epochs`` default.
        """
        from ..models.registry import get_spec
        spec = get_spec(self.model)
        model_defaults = spec.train_defaults
        # the model's own input size (timm config / torchvision weights) unless the model says otherwise
        defaults = {**self._FALLBACKS, "image_size": spec.preprocessing.input_size, **model_defaults}
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in values.items():
            if value is None and name in defaults:
                values[name] = defaults[name]
        if self.head_solver is None and not self.cache_features:
            values["head_solver"] = "sgd"  # the probe needs cached features
        if self.epochs is None and "photo_passes" in model_defaults and training_photos:
            low, high = model_defaults["epoch_range"]
            values["epochs"] = min(high, max(low, round(model_defaults["photo_passes"] / training_photos)))
        if self.epochs is None and "fine_tune_epochs" in model_defaults:
            # Device-aware: fine-tuning the whole network pays on a GPU; on a CPU it costs minutes per epoch
            # and did not beat the linear probe on real photos (BENCHMARKS.md, real photos), so CPUs stop there
            # (unless nothing is frozen: then fine-tuning is all there is).
            accelerated = device_or_error(self.device).type != "cpu"
            fine_tune = accelerated or values["freeze_epochs"] == 0
            values["epochs"] = values["freeze_epochs"] + (model_defaults["fine_tune_epochs"] if fine_tune else 0)
        if self.familiarity_view is None and values["familiarity_backbone"] in (None, OWN_FEATURES):
            values["familiarity_view"] = "crop"  # the model's whole-photo default is its other network's view
        if self.freeze_epochs is None and isinstance(values["epochs"], int):
            # the model's default frozen epochs shrink to fit a shorter run; only explicit values can conflict
            values["freeze_epochs"] = min(values["freeze_epochs"], values["epochs"])
        preprocessing = spec.preprocessing.at_size(values["image_size"])
        values["resize_size"] = values["resize_size"] or preprocessing.resize_size
        values["interpolation"] = values["interpolation"] or preprocessing.interpolation
        config = TrainConfig(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Every field's range, checked before a run folder is created: a bad value is one line, not a crash later."""
        problems = []
        kinds = {f.name: str(f.type) for f in dataclasses.fields(self)}

        def number(name: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> None:
            value = getattr(self, name)
            integer = kinds[name].startswith("int")
            if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) \
                    or not math.isfinite(value) or value < low or value > high \
                    or (low_open and value == low) or (high_open and value == high):
                low_text, high_text = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
                kind = "a whole number" if integer else "a number"
                problems.append(f"{name} must be {kind} in {low_text}, {high_text} (got {value!r})")

        from ..models.registry import get_spec, list_models
        if self.model not in list_models():
            problems.append(f"model must be one of {', '.join(list_models())} (got {self.model!r})")
        if not isinstance(self.data, str):
            problems.append(f"data must be a folder path (got {self.data!r})")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)} (got {getattr(self, name)!r})")
        for name, kind in kinds.items():
            if kind.startswith("bool") and not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false (got {getattr(self, name)!r})")
        number("epochs", 1, MAX_EPOCHS)
        number("batch_size", 1, MAX_BATCH_SIZE)
        number("image_size", 16, MAX_IMAGE_SIZE)
        if not problems:  # resize_size follows image_size: one message for one mistake
            number("resize_size", 16, 2 * MAX_IMAGE_SIZE)
        number("lr", 0, 1e6, low_open=True)
        number("weight_decay", 0, 10)
        number("momentum", 0, 1, high_open=True)
        number("label_smoothing", 0, 1, high_open=True)
        number("augment", 0, 1)
        number("mixup", 0, 100)
        number("cutmix", 0, 100)
        number("ema_epochs", 0, MAX_EPOCHS)
        number("warmup_epochs", 0, MAX_EPOCHS)
        number("freeze_epochs", 0, MAX_EPOCHS)
        number("backbone_lr_scale", 0, 10)
        number("feature_views", 1, 64)
        number("pseudo_unknown_pass", 0, 1, low_open=True, high_open=True)
        number("val_fraction", 0, 1, low_open=True, high_open=True)
        number("test_fraction", 0, 1, low_open=True, high_open=True)
        number("early_stopping_patience", 0, MAX_EPOCHS)
        number("log_every", 1, 1_000_000)
        number("seed", 0, 2**32 - 1)  # times 1,000,003 per epoch in the engine: well inside torch's 64-bit seeds
        other = self.separate_familiarity_backbone
        if other is not None and (not isinstance(self.familiarity_backbone, str) or other not in list_models()
                                  or not get_spec(other).preprocessing.mean):
            pretrained = [name for name in list_models() if get_spec(name).preprocessing.mean]
            problems.append(f"familiarity_backbone must be {OWN_FEATURES!r}, a pretrained model or "
                            f"{JOINT_PREFIX}MODEL ({', '.join(pretrained)}; got {self.familiarity_backbone!r})")
        if self.familiarity_view == "whole" and other is None:
            problems.append("familiarity_view whole is what a separate familiarity network sees: it needs "
                            f"familiarity_backbone MODEL or {JOINT_PREFIX}MODEL")
        if self.weights_path is not None and not isinstance(self.weights_path, str):
            problems.append(f"weights_path must be a file path (got {self.weights_path!r})")
        if not isinstance(self.model_options, dict):
            problems.append("model_options must be a mapping of builder options")
        if self.head_solver == "lbfgs" and not self.cache_features and self.freeze_epochs > 0:
            problems.append("head_solver lbfgs fits the head on cached features: drop --no-feature-cache or use sgd")
        if not problems and self.resize_size < self.image_size:
            problems.append("resize_size must be at least image_size")
        if not problems and self.freeze_epochs > self.epochs:
            problems.append(f"freeze_epochs ({self.freeze_epochs}) cannot exceed epochs ({self.epochs})")
        try:
            device_or_error(self.device)
        except LandmarkError as error:
            problems.append(str(error))
        if problems:
            raise LandmarkError("invalid training config: " + "; ".join(problems))

    @property
    def frozen_epochs(self) -> int:
        """The first epochs that train only the head on the frozen backbone: a pretrained model's ``freeze_epochs``,
        none for a model from random weights (a resolved config)."""
        from ..models import get_spec
        return int(self.freeze_epochs or 0) if get_spec(self.model).has_frozen_phase else 0

    @property
    def trains_only_the_head(self) -> bool:
        """Every epoch is frozen: the pretrained backbone is never fine-tuned (the default on a CPU)."""
        return 0 < self.frozen_epochs == self.epochs

    def schedule(self) -> str:
        """The epochs in words, as the Train page says them: "12 epochs, the first 12 with the pretrained backbone
        frozen"."""
        frozen = f", the first {self.frozen_epochs} with the pretrained backbone frozen" if self.frozen_epochs else ""
        return f"{self.epochs} epochs{frozen}"

    @property
    def separate_familiarity_backbone(self) -> str | None:
        """The other model whose features the familiarity check compares (instead of the classifier's own, or
        beside them in a joint check), or None when it compares the classifier's own only."""
        if self.familiarity_backbone in (None, OWN_FEATURES):
            return None
        return str(self.familiarity_backbone).removeprefix(JOINT_PREFIX)

    @property
    def joint_familiarity(self) -> bool:
        """Both the classifier's own features and the separate backbone's must find a photo familiar."""
        return str(self.familiarity_backbone).startswith(JOINT_PREFIX)

    @property
    def familiarity_features(self) -> str:
        """In words, whose features the familiarity check compares."""
        other = self.separate_familiarity_backbone
        if other is None:
            return f"{self.model}'s own features"
        view = "the whole photo" if self.familiarity_view == "whole" else f"{self.model}'s crop"
        if self.joint_familiarity:
            return f"{self.model}'s own features and {other}'s on {view}, and both must find a photo familiar"
        return f"{other}'s features (on {view})"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        if "resize_size" not in values and values.get("image_size"):
            # a run made before preprocessing and the head solver were recorded: keep what it trained with
            values.update(resize_size=math.ceil(values["image_size"] / 0.875), interpolation="bilinear")
            values.setdefault("head_solver", "sgd")
        for added_later in ("mixup", "cutmix", "ema_epochs"):  # a run recorded before these trained without them
            values.setdefault(added_later, 0.0)
        values.setdefault("keep_best", True)
        values.setdefault("familiarity_backbone", OWN_FEATURES)  # before the setting, familiarity used these
        values.setdefault("familiarity_view", "crop")  # and before this one, the centre crop
        values.setdefault("pseudo_unknown_pass", 0.10)  # and before this one, 10% of the pseudo-unknowns
        return cls(**values)


def device_or_error(name: str) -> torch.device:
    import torch
    try:
        device = resolve_device(name)
    except RuntimeError:
        raise LandmarkError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LandmarkError(f"device {name!r} asked for, but CUDA is not available here (use --device auto or cpu)")
    return device


def resolve_device(name: str = "auto") -> torch.device:
    import torch
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def run_preprocessing(config: TrainConfig) -> Preprocessing:
    """The run's preprocessing: the model's own (mean/std) with the size, crop and filter the run recorded."""
    from ..models.registry import get_spec
    config = config if config.resize_size else config.resolved()
    return replace(get_spec(config.model).preprocessing, input_size=config.image_size,
                   crop_pct=config.image_size / config.resize_size, interpolation=config.interpolation)
