"""Training: one config dataclass, an engine that fires named events, and callbacks.

Reading order: :class:`TrainConfig` (every hyperparameter), :func:`prepare_data`,
:class:`Engine` (the loop; side effects live in callbacks), the callbacks, then
:func:`train` which ties a run folder to all of it and :func:`resume`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import signal
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data as data_lib
from .allocator import keep_freed_memory
from .errors import DataError, LandmarkError, RunError, TrainingCancelled
from .fileio import append_jsonl, read_json, read_jsonl, save_atomic, write_bytes_atomic, write_json_atomic
from .models import LandmarkNet, Preprocessing, build_model, folded_for_inference, get_spec, inference_batch_size
from .probe import class_weights, fit_linear_head
from .runs import new_run_dir, now_iso, write_status

OPTIMIZERS = ("sgd", "adam", "adamw")
#: How frozen-backbone epochs train the head: ``lbfgs`` fits it to the optimum on all feature views so far
#: (landmark_core.probe); ``sgd`` takes minibatch steps with the optimizer, as unfrozen epochs do.
HEAD_SOLVERS = ("lbfgs", "sgd")
SCHEDULERS = ("cosine", "onecycle", "plateau", "none")


#: Upper bounds that keep a typo from asking for terabytes (an image_size of 1,000,000 is a 53 TiB batch).
MAX_IMAGE_SIZE = 1024
MAX_BATCH_SIZE = 4096
MAX_EPOCHS = 10_000


@dataclass
class TrainConfig:
    """Every hyperparameter of a run. ``None`` means "the model's default" (see ``ModelSpec.train_defaults``)."""
    data: str = ""
    model: str = "scratch_cnn"
    image_size: int | None = None
    batch_size: int | None = None
    epochs: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9
    scheduler: str | None = None
    warmup_epochs: float | None = None
    label_smoothing: float | None = None
    augment: float | None = None
    augmentation: str | None = None  # "full" or "crop_flip" (data.AUGMENTATIONS)
    freeze_epochs: int | None = None
    backbone_lr_scale: float | None = None
    freeze_batchnorm: bool | None = None
    head_solver: str | None = None  # HEAD_SOLVERS
    cache_features: bool = True
    feature_views: int | None = None
    tta_flip: bool | None = None  # average the prediction of the photo and its mirror image (eval and export)
    class_balanced: bool = False  # weight the loss by inverse class frequency
    resize_size: int | None = None  # decode size before the centre crop: from the model's crop_pct
    interpolation: str | None = None  # resize filter: from the model's config (bicubic for EfficientNet-Lite)
    calibrate: bool = True  # fit a softmax temperature on the validation split (evaluation, tagging, export)
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    early_stopping_patience: int = 0
    seed: int = 0
    device: str = "auto"
    pretrained: bool = True
    weights_path: str | None = None
    model_options: dict = field(default_factory=dict)
    log_every: int = 10
    mixed_precision: str = "auto"  # "auto": bfloat16 autocast on CUDA GPUs that support it; "off"; "bf16"
    channels_last: bool = True  # ~1.5x faster convolutions on CPU (oneDNN) and on tensor-core GPUs

    _FALLBACKS = {"batch_size": 64, "epochs": 10, "optimizer": "adamw", "lr": 1e-3,
                  "weight_decay": 1e-4, "scheduler": "cosine", "label_smoothing": 0.0, "augment": 0.5,
                  "augmentation": "full", "freeze_epochs": 0, "backbone_lr_scale": 1.0, "freeze_batchnorm": False, "warmup_epochs": 1.0,
                  "head_solver": "sgd", "feature_views": 4, "tta_flip": False}

    def resolved(self) -> "TrainConfig":
        """A copy with every ``None`` replaced by the model's default, validated."""
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
        if self.epochs is None and "fine_tune_epochs" in model_defaults:
            # Device-aware: fine-tuning the whole network pays on a GPU; on a CPU it costs minutes per epoch
            # and did not beat the linear probe on real photos (BENCHMARKS.md, real photos), so CPUs stop there
            # (unless nothing is frozen: then fine-tuning is all there is).
            accelerated = _device_or_error(self.device).type != "cpu"
            fine_tune = accelerated or values["freeze_epochs"] == 0
            values["epochs"] = values["freeze_epochs"] + (model_defaults["fine_tune_epochs"] if fine_tune else 0)
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

        def number(name: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < low or value > high or (low_open and value == low) or (high_open and value == high):
                low_text, high_text = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
                problems.append(f"{name} must be a number in {low_text}, {high_text} (got {value!r})")

        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            problems.append(f"scheduler must be one of {', '.join(SCHEDULERS)}")
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
        number("warmup_epochs", 0, MAX_EPOCHS)
        number("freeze_epochs", 0, MAX_EPOCHS)
        number("backbone_lr_scale", 0, 10)
        number("feature_views", 1, 64)
        number("val_fraction", 0, 1, low_open=True, high_open=True)
        number("test_fraction", 0, 1, low_open=True, high_open=True)
        number("early_stopping_patience", 0, MAX_EPOCHS)
        number("log_every", 1, 1_000_000)
        if self.augmentation not in data_lib.AUGMENTATIONS:
            problems.append(f"augmentation must be one of {', '.join(data_lib.AUGMENTATIONS)}")
        if self.head_solver not in HEAD_SOLVERS:
            problems.append(f"head_solver must be one of {', '.join(HEAD_SOLVERS)}")
        if self.head_solver == "lbfgs" and not self.cache_features and self.freeze_epochs > 0:
            problems.append("head_solver lbfgs fits the head on cached features: drop --no-feature-cache or use sgd")
        if not problems and self.resize_size < self.image_size:
            problems.append("resize_size must be at least image_size")
        if not problems and self.freeze_epochs > self.epochs:
            problems.append(f"freeze_epochs ({self.freeze_epochs}) cannot exceed epochs ({self.epochs})")
        if self.interpolation not in ("bilinear", "bicubic"):
            problems.append("interpolation must be bilinear or bicubic")
        if self.mixed_precision not in ("auto", "off", "bf16"):
            problems.append("mixed_precision must be auto, off or bf16")
        try:
            _device_or_error(self.device)
        except LandmarkError as error:
            problems.append(str(error))
        if problems:
            raise LandmarkError("invalid training config: " + "; ".join(problems))

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
        return cls(**values)


def _autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """bfloat16 where it is fast and needs no loss scaling (CUDA with bf16 support); None for full precision."""
    if setting == "off":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _device_or_error(name: str) -> torch.device:
    try:
        device = resolve_device(name)
    except RuntimeError:
        raise LandmarkError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LandmarkError(f"device {name!r} asked for, but CUDA is not available here (use --device auto or cpu)")
    return device


def resolve_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# --- data -------------------------------------------------------------------------------------

@dataclass
class PreparedData:
    classes: list[str]
    train: data_lib.DecodedSplit
    val: data_lib.DecodedSplit
    test: data_lib.DecodedSplit
    mean: list[float]
    std: list[float]
    split: dict  # paths of each split, saved with the run
    #: Photos of other places (``unknown/`` folders): decoded only when evaluation calibrates the open-set decision.
    unknown_calibration: list[str] = field(default_factory=list)
    unknown_evaluation: list[str] = field(default_factory=list)
    cache_dir: Path | None = None


def run_preprocessing(config: TrainConfig) -> Preprocessing:
    """The run's preprocessing: the model's own (mean/std) with the size, crop and filter the run recorded."""
    config = config if config.resize_size else config.resolved()
    return replace(get_spec(config.model).preprocessing, input_size=config.image_size,
                   crop_pct=config.image_size / config.resize_size, interpolation=config.interpolation)


def prepare_data(config: TrainConfig, progress: Callable[[str, int, int], None] | None = None) -> PreparedData:
    """Scan, split (train/val, seeded and stratified), decode once into the cache, and get normalisation stats."""
    dataset = data_lib.scan_dataset(config.data, test_fraction=config.test_fraction, seed=config.seed)
    train_samples, val_samples = data_lib.stratified_split(dataset.train, config.val_fraction, config.seed)
    cache = data_lib.cache_dir_for(dataset.root)
    preprocessing = run_preprocessing(config)

    def decode(name, samples):
        report = (lambda done, total: progress(f"decoding {name}", done, total)) if progress else None
        return data_lib.decode_split(samples, preprocessing.resize_size, cache_dir=cache, progress=report,
                                     interpolation=preprocessing.interpolation)

    train, val, test = decode("train", train_samples), decode("val", val_samples), decode("test", dataset.test)
    if len(train) == 0:
        raise LandmarkError("no readable training images")
    spec = get_spec(config.model).preprocessing
    if spec.mean is not None:
        mean, std = list(spec.mean), list(spec.std)
    else:  # statistics of the training split only: never of validation or test images
        mean, std = data_lib.channel_stats(train, cache)
    split = {"classes": dataset.classes, "train": train.paths, "val": val.paths, "test": test.paths,
             "skipped": {**train.skipped, **val.skipped, **test.skipped},
             "test_taken_from_train": dataset.test_taken_from_train}
    return PreparedData(dataset.classes, train, val, test, mean, std, split, dataset.unknown_calibration,
                        dataset.unknown_evaluation, cache)


def decode_photos(config: TrainConfig, paths: Sequence[str], cache_dir: Path | None = None) -> data_lib.DecodedSplit:
    """Photos outside the classes (label -1), decoded with the run's preprocessing."""
    preprocessing = run_preprocessing(config)
    return data_lib.decode_split([data_lib.Sample(path, -1) for path in paths], preprocessing.resize_size,
                                 cache_dir=cache_dir, interpolation=preprocessing.interpolation)


# --- engine -----------------------------------------------------------------------------------

class Callback:
    """Override any of the named events; each receives the engine."""

    def on_fit_start(self, engine: "Engine") -> None: ...
    def on_epoch_start(self, engine: "Engine") -> None: ...
    def on_batch_end(self, engine: "Engine") -> None: ...
    def on_epoch_end(self, engine: "Engine") -> None: ...
    def on_fit_end(self, engine: "Engine") -> None: ...


class StopTraining(Exception):
    """Raised by a callback to end training early but successfully (early stopping)."""


class FeatureBatches:
    """Batches of cached backbone features for frozen-backbone epochs.

    With the backbone frozen (and its BatchNorm in eval mode), ``head(backbone(x))``
    equals ``head(cached_features)``; so features of ``views`` copies of the
    training set are computed once and epochs only run the head. The ``epochs``
    frozen epochs use the views in consecutive blocks (8 epochs, 4 views:
    0,0,1,1,2,2,3,3), each computed when its first epoch starts, so the first
    epochs (and an early stop) pay for as few views as possible.

    ``exact_views``: view 0 is the centre crop and view 1 its mirror image (the
    views a flip-averaged prediction sees), later views are augmented; otherwise
    every view is augmented. ``tta_flip``: batches yield the mean of the features
    of views 0 and 1, which through a linear head is the flip-averaged prediction.
    """

    def __init__(self, model: LandmarkNet, loader: data_lib.BatchLoader, views: int, augment: bool, epochs: int,
                 backbone: Callable[[torch.Tensor], torch.Tensor] | None = None, *, exact_views: bool = False,
                 tta_flip: bool = False):
        self.model, self.loader, self.epoch = model, loader, 0
        self.exact_views, self.tta_flip = exact_views, tta_flip
        if exact_views:  # the probe refits on all views so far: the last frozen epoch uses them all
            self.views = max(1, views if augment else min(views, 2))
        else:
            self.views = max(1, min(views if augment else 1, epochs))
        if tta_flip:
            self.views = max(self.views, 2)
        self.epochs = max(1, epochs)
        self.augment = augment
        self.features: dict[int, torch.Tensor] = {}  # view -> (N, D), computed when an epoch first needs it
        self.backbone = backbone  # the frozen backbone; by default folded for inference when first needed
        self.labels = torch.from_numpy(np.asarray(loader.split.labels))

    @torch.no_grad()
    def _view(self, view: int) -> torch.Tensor:
        if view not in self.features:
            self.model.backbone.eval()
            if self.backbone is None:
                self.backbone = folded_for_inference(self.model.backbone)
            exact = self.exact_views and view < 2
            generator = torch.Generator().manual_seed(self.loader.seed * 7919 + view) if self.augment and not exact else None
            chunk = inference_batch_size(self.loader.device)
            chunks = []
            for start in range(0, len(self.loader.split), chunk):
                pixels = torch.from_numpy(np.array(self.loader.split.images[start:start + chunk]))
                inputs = self.loader.prepare(pixels, generator)
                chunks.append(self.backbone(inputs.flip(-1) if exact and view == 1 else inputs).float())
            self.features[view] = torch.cat(chunks) if chunks else torch.zeros(0, self.model.feature_dim)
        return self.features[view]

    def precompute(self) -> "FeatureBatches":
        for view in range(self.views):
            self._view(view)
        return self

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def views_so_far(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of the first views, more each epoch, all of them by the last frozen epoch, with their labels."""
        count = min(self.views, math.ceil((self.epoch + 1) * self.views / self.epochs))
        return torch.cat([self._view(v) for v in range(count)]), self.labels.repeat(count)

    def evaluation_features(self) -> torch.Tensor:
        if self.tta_flip:
            return (self._view(0) + self._view(1)) / 2
        return self._view(0)

    def __iter__(self):
        if self.tta_flip:
            features = self.evaluation_features()
        else:
            features = self._view(min(self.views - 1, self.epoch * self.views // self.epochs))
        generator = torch.Generator().manual_seed(self.loader.seed * 100_003 + self.epoch)
        order = torch.randperm(len(features), generator=generator) if self.loader.shuffle else torch.arange(len(features))
        for start in range(0, len(order), self.loader.batch_size):
            index = order[start:start + self.loader.batch_size]
            yield features[index], self.labels[index].to(features.device)


class Engine:
    """The training loop. State a callback may read: ``epoch``, ``batch``, ``last``, ``model``, ``config``."""

    def __init__(self, config: TrainConfig, model: LandmarkNet, data: PreparedData, device: torch.device,
                 callbacks: Sequence[Callback] = ()):
        self.config, self.data, self.device = config, data, device
        self.model = model.to(device, memory_format=torch.channels_last if config.channels_last else torch.preserve_format)
        self.callbacks = list(callbacks)
        loader_args = dict(batch_size=config.batch_size, image_size=config.image_size, mean=data.mean, std=data.std,
                           device=device, seed=config.seed, channels_last=config.channels_last)
        self.train_loader = data_lib.BatchLoader(data.train, shuffle=True, augment=config.augment,
                                                 augmentation=config.augmentation, **loader_args)
        self.val_loader = data_lib.BatchLoader(data.val, **loader_args)
        self.class_weight = (class_weights(torch.from_numpy(np.asarray(data.train.labels)), len(data.classes)).to(device)
                             if config.class_balanced else None)
        self.criterion = nn.CrossEntropyLoss(weight=self.class_weight, label_smoothing=config.label_smoothing)
        self.probing = config.head_solver == "lbfgs" and config.cache_features  # frozen epochs fit the head by L-BFGS
        self.optimizer = self._make_optimizer()
        self.steps_per_epoch = len(self.train_loader)
        self.scheduler = self._make_scheduler()
        self.epoch = 0  # epochs completed
        self.batch = 0
        self.last: dict = {}
        self.best_val_acc = -math.inf
        self.best_val_loss = math.inf
        self._feature_batches: dict[str, FeatureBatches] = {}
        self.started = time.time()
        self.autocast = _autocast_dtype(config.mixed_precision, device)
        model.freeze_batchnorm = bool(config.freeze_batchnorm)
        if config.freeze_epochs > 0:
            model.set_backbone_trainable(False)

    # -- construction
    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        groups = [{"params": list(self.model.head.parameters()), "lr": c.lr},
                  {"params": list(self.model.backbone.parameters()), "lr": c.lr * c.backbone_lr_scale}]
        if c.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                                   nesterov=c.momentum > 0)  # torch refuses Nesterov without momentum
        if c.optimizer == "adam":
            return torch.optim.Adam(groups, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)

    def _make_scheduler(self):
        c = self.config
        optimizer_epochs = c.epochs - c.freeze_epochs if self.probing else c.epochs  # probe epochs take no steps
        total = max(1, optimizer_epochs * self.steps_per_epoch)
        if c.scheduler == "onecycle":
            if total < 3:  # no room for a warm-up and an annealing phase: keep the learning rate constant
                return None
            # the warm-up phase must end after step 0, or OneCycleLR divides by zero (a few steps in all)
            return torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=[g["lr"] for g in self.optimizer.param_groups],
                                                       total_steps=total, pct_start=max(0.25, 2 / total))
        if c.scheduler == "cosine":
            warmup = max(1, int(c.warmup_epochs * self.steps_per_epoch))

            def factor(step):
                if step < warmup:
                    return (step + 1) / warmup
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        if c.scheduler == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="max", factor=0.3, patience=2)
        return None

    # -- events
    def fire(self, event: str) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self)

    @property
    def backbone_frozen(self) -> bool:
        return self.epoch < self.config.freeze_epochs

    def _loaders(self):
        """Pixel loaders, or cached-feature loaders while the backbone is frozen."""
        if not (self.backbone_frozen and self.config.cache_features):
            return self.model, self.train_loader, self.val_loader
        if not self._feature_batches:
            backbone = folded_for_inference(self.model.backbone.eval())
            c = self.config
            self._feature_batches = {
                "train": FeatureBatches(self.model, self.train_loader, c.feature_views, c.augment > 0, c.freeze_epochs,
                                        backbone, exact_views=self.probing),
                "val": FeatureBatches(self.model, self.val_loader, 1, False, c.freeze_epochs, backbone,
                                      exact_views=True, tta_flip=c.tta_flip)}
        return self.model.head, self._feature_batches["train"], self._feature_batches["val"]

    # -- loop
    def fit(self) -> None:
        self.fire("on_fit_start")
        try:
            while self.epoch < self.config.epochs:
                self._run_epoch()
        except StopTraining:
            pass
        self.fire("on_fit_end")

    def _run_epoch(self) -> None:
        c, device = self.config, self.device
        if self.epoch == c.freeze_epochs and c.freeze_epochs > 0:
            self.model.set_backbone_trainable(True)
            self._feature_batches = {}
        torch.manual_seed(c.seed * 1_000_003 + self.epoch)  # dropout: same on a resumed run
        network, train_batches, val_batches = self._loaders()
        train_batches.set_epoch(self.epoch)
        self.fire("on_epoch_start")
        epoch_start = time.time()
        self.model.train()
        if self.probing and self.backbone_frozen:
            train_loss, train_acc = self._fit_head(train_batches, val_batches)
        else:
            train_loss, train_acc = self._train_steps(network, train_batches)
        val = evaluate_batches(network, val_batches, tta_flip=c.tta_flip)
        for loss in (train_loss, val["loss"]):
            if loss is not None and not math.isfinite(loss):
                self._diverged(loss)
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val["acc"])
        self.epoch += 1
        self.last = {"kind": "epoch", "epoch": self.epoch, "epochs": c.epochs, "train_loss": train_loss,
                     "train_acc": train_acc, "val_loss": val["loss"], "val_acc": val["acc"],
                     "val_top5": val["top5"], "lr": self.optimizer.param_groups[0]["lr"],
                     "backbone_frozen": network is not self.model or self.epoch <= c.freeze_epochs,
                     "epoch_seconds": time.time() - epoch_start, "elapsed": time.time() - self.started}
        self.fire("on_epoch_end")

    def _fit_head(self, train_batches: FeatureBatches, val_batches: FeatureBatches) -> tuple[float, float]:
        """A probe epoch: fit the head by L-BFGS on every feature view so far (one 'batch')."""
        features, labels = train_batches.views_so_far()
        features, labels = features.cpu(), labels.cpu()  # L-BFGS on the CPU: a full batch of a few MB
        validating = len(val_batches.labels) > 0
        head = fit_linear_head(features, labels, len(self.data.classes),
                               val_features=val_batches.evaluation_features().cpu() if validating else None,
                               val_labels=val_batches.labels if validating else None,
                               class_weight=None if self.class_weight is None else self.class_weight.cpu())
        linear = self.model.head[-1]
        with torch.no_grad():
            linear.weight.copy_(head.weight.to(linear.weight.device))
            linear.bias.copy_(head.bias.to(linear.bias.device))
            logits = head.logits(features)
            loss = float(F.cross_entropy(logits, labels))
            accuracy = float((logits.argmax(1) == labels).float().mean())
        self.batch = 1
        self.last = {"kind": "batch", "epoch": self.epoch + 1, "batch": 1, "batches": 1, "loss": loss,
                     "weight_decay": head.weight_decay, "views": len(labels) // max(1, len(train_batches.labels)),
                     "lr": self.optimizer.param_groups[0]["lr"], "elapsed": time.time() - self.started}
        self.fire("on_batch_end")
        return loss, accuracy

    def _diverged(self, loss: float) -> None:
        raise RunError(f"training diverged: the loss became {loss} in epoch {self.epoch + 1} "
                       f"(lr {self.config.lr:g}; try a smaller --lr). Nothing was exported.")

    def _train_steps(self, network: nn.Module, train_batches) -> tuple[float, float]:
        device = self.device
        total_loss, correct, seen = 0.0, 0, 0
        for self.batch, (inputs, labels) in enumerate(train_batches, start=1):
            with torch.autocast(device.type, dtype=self.autocast) if self.autocast else contextlib.nullcontext():
                logits = network(inputs)
                loss = self.criterion(logits.float(), labels)
            if not torch.isfinite(loss):  # one more step would write non-finite weights into the checkpoints
                self._diverged(loss.item())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.scheduler is not None and not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step()
            total_loss += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            self.last = {"kind": "batch", "epoch": self.epoch + 1, "batch": self.batch, "batches": len(train_batches),
                         "loss": loss.item(), "lr": self.optimizer.param_groups[0]["lr"], "elapsed": time.time() - self.started}
            self.fire("on_batch_end")
        return total_loss / max(1, seen), correct / max(1, seen)

    # -- state
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None, "epoch": self.epoch,
                "best_val_acc": self.best_val_acc, "best_val_loss": self.best_val_loss}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best_val_acc = int(state["epoch"]), float(state["best_val_acc"])
        self.best_val_loss = float(state.get("best_val_loss", math.inf))
        self.model.set_backbone_trainable(self.epoch >= self.config.freeze_epochs)


def predict_logits(network: nn.Module, inputs: torch.Tensor, tta_flip: bool = False) -> torch.Tensor:
    """Logits of a batch; with ``tta_flip`` the mean of the images' and their mirror images' logits.

    Feature batches (2-D inputs) already hold flip-averaged features when asked
    (:class:`FeatureBatches`), and a linear head maps the mean to the mean.
    """
    logits = network(inputs).float()
    if tta_flip and inputs.dim() == 4:
        logits = (logits + network(inputs.flip(-1)).float()) / 2
    return logits


@torch.no_grad()
def evaluate_batches(network: nn.Module, batches: Iterable, tta_flip: bool = False) -> dict:
    network.eval()
    total_loss, correct, top5, seen = 0.0, 0, 0, 0
    for inputs, labels in batches:
        logits = predict_logits(network, inputs, tta_flip)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        k = min(5, logits.shape[1])
        top5 += (logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum().item()
        seen += len(labels)
    if seen == 0:
        return {"loss": None, "acc": None, "top5": None}
    return {"loss": total_loss / seen, "acc": correct / seen, "top5": top5 / seen}


# --- callbacks --------------------------------------------------------------------------------

class MetricsLogger(Callback):
    """Appends epoch records, and a batch record every ``every`` batches, to ``metrics.jsonl``."""

    def __init__(self, path: Path, every: int):
        self.path, self.every = path, max(1, every)

    def on_batch_end(self, engine):
        if engine.batch % self.every == 0 or engine.batch == engine.last["batches"]:
            append_jsonl(self.path, engine.last)

    def on_epoch_end(self, engine):
        append_jsonl(self.path, engine.last)


class Checkpointer(Callback):
    """Writes ``checkpoint_last.pt`` every epoch and ``checkpoint_best.pt`` on a new best validation accuracy."""

    def __init__(self, run_dir: Path, config: TrainConfig, meta: dict):
        self.run_dir, self.config, self.meta = run_dir, config, meta

    def on_epoch_end(self, engine):
        val_acc = engine.last["val_acc"] if engine.last["val_acc"] is not None else -engine.last["train_loss"]
        val_loss = engine.last["val_loss"] if engine.last["val_loss"] is not None else engine.last["train_loss"]
        # ties in accuracy are common on small validation splits: the lower loss breaks them
        is_best = val_acc > engine.best_val_acc or (val_acc == engine.best_val_acc and val_loss < engine.best_val_loss)
        if is_best:
            engine.best_val_acc, engine.best_val_loss = val_acc, val_loss
        state = {**engine.state_dict(), "config": self.config.to_dict(), **self.meta}
        if is_best:
            save_atomic(self.run_dir / "checkpoint_best.pt", lambda p: torch.save({**state, "model": engine.model.state_dict()}, p))
        save_atomic(self.run_dir / "checkpoint_last.pt", lambda p: torch.save(state, p))


class EarlyStopping(Callback):
    def __init__(self, patience: int):
        self.patience, self.best, self.bad_epochs = patience, -1.0, 0

    def on_epoch_end(self, engine):
        acc = engine.last["val_acc"] or 0.0
        if acc > self.best:
            self.best, self.bad_epochs = acc, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                raise StopTraining


class StatusUpdater(Callback):
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_epoch_end(self, engine):
        write_status(self.run_dir, epoch=engine.epoch, epochs=engine.config.epochs)


class CancelOnRequest(Callback):
    """Raises :class:`TrainingCancelled` when a ``CANCEL`` file appears in the run folder."""

    def __init__(self, run_dir: Path):
        self.flag = run_dir / "CANCEL"

    def on_batch_end(self, engine):
        if self.flag.exists():
            raise TrainingCancelled("cancelled by request")


class ConsoleProgress(Callback):
    def __init__(self, print_fn: Callable[[str], None] = print):
        self.print = print_fn

    def on_epoch_end(self, engine):
        r = engine.last
        val = f"val loss {r['val_loss']:.3f} acc {r['val_acc']:.3f}" if r["val_acc"] is not None else "no validation"
        self.print(f"epoch {r['epoch']}/{r['epochs']}  train loss {r['train_loss']:.3f} acc {r['train_acc']:.3f}  "
                   f"{val}  {r['epoch_seconds']:.1f}s")


# --- runs -------------------------------------------------------------------------------------

def _raise_cancel(signum, frame):
    raise TrainingCancelled(f"stopped by signal {signum}")


def _restrict_metrics(path: Path, epoch: int) -> None:
    """On resume, drop records of the epoch that was interrupted (it is trained again)."""
    kept = [r for r in read_jsonl(path) if r.get("epoch", 0) <= epoch]
    write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in kept).encode())


def create_run(config: TrainConfig, artifacts: Path | None = None) -> Path:
    """Make a run folder with its resolved ``config.json`` and a queued status; train it later."""
    config = config.resolved()
    if not config.data:
        raise LandmarkError("no dataset given (--data DIR)")
    # absolute, so the run can be evaluated and resumed from any directory
    config = replace(config, data=str(Path(config.data).expanduser().resolve()),
                     weights_path=str(Path(config.weights_path).expanduser().resolve()) if config.weights_path else None)
    dataset = data_lib.scan_dataset(config.data, test_fraction=config.test_fraction, seed=config.seed)  # fail early
    if dataset.num_classes < 2:
        raise DataError(f"{config.data} has {dataset.num_classes} class ({', '.join(dataset.classes)}); "
                        "a classifier needs at least 2")
    run_dir = new_run_dir(config.model, artifacts)
    write_json_atomic(run_dir / "config.json", config.to_dict())
    write_status(run_dir, state="queued", created=now_iso(), epochs=config.epochs, epoch=0)
    return run_dir


def train(run_dir: Path, *, resume: bool = False, callbacks: Sequence[Callback] = (),
          progress: Callable[[str, int, int], None] | None = None, evaluate_and_export: bool = True) -> Path:
    """Train the run in ``run_dir`` (made by :func:`create_run`); return ``run_dir``.

    Status moves queued → running → finished / failed / cancelled. Cancellation
    (a ``CANCEL`` file, SIGTERM or Ctrl-C) is an exception raised inside the loop;
    the last checkpoint stays, so ``resume=True`` continues from it.
    """
    keep_freed_memory()
    config = load_run_config(run_dir)
    previous = read_json(run_dir / "status.json", default={}) or {}
    if previous.get("state") == "finished":
        raise RunError(f"{run_dir.name} has finished: there is nothing to resume (train a new run; "
                       f"`landmark export {run_dir.name}` exports it again)")
    with RunLock(run_dir):
        return _train_locked(run_dir, config, previous, resume=resume, callbacks=callbacks, progress=progress,
                             evaluate_and_export=evaluate_and_export)


def load_run_config(run_dir: Path) -> TrainConfig:
    """The run's resolved config, or a RunError saying the file is damaged."""
    try:
        values = read_json(run_dir / "config.json")
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
        return TrainConfig.from_dict(values).resolved()
    except LandmarkError:
        raise
    except (ValueError, TypeError) as error:
        raise RunError(f"{run_dir.name}/config.json is damaged ({error}); the run cannot be rebuilt from it") from None


class RunLock:
    """One trainer per run: an exclusive ``flock`` on ``run_dir/LOCK`` held while this process trains it.

    The kernel releases the lock when the process ends however it ends (SIGKILL included), so a lock is never
    stale and never confused by a reused pid; the file keeps the holder's pid for the message.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / "LOCK"
        self.handle = None

    def __enter__(self) -> "RunLock":
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunError(f"{self.path.parent.name} is being trained by process {holder}; "
                           f"stop it first (Stop in the app, or: kill {holder})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        # the file stays: unlinking a locked path would let a newcomer lock a different inode of the same name
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _train_locked(run_dir: Path, config: TrainConfig, previous: dict, *, resume: bool, callbacks, progress,
                  evaluate_and_export: bool) -> Path:
    (run_dir / "CANCEL").unlink(missing_ok=True)
    started = time.time()
    write_status(run_dir, state="running", pid=os.getpid(), started=previous.get("started") or now_iso(), error=None)
    old_handler = signal.signal(signal.SIGTERM, _raise_cancel) if _in_main_thread() else None
    try:
        torch.manual_seed(config.seed)
        device = resolve_device(config.device)
        resume_state = _resume_state(run_dir, device) if resume else None  # before decoding: a bad file fails fast
        prepared = prepare_data(config, progress)
        write_json_atomic(run_dir / "split.json", prepared.split)
        torch.manual_seed(config.seed)  # initialisation must not depend on what ran earlier in this process
        model = build_model(config.model, len(prepared.classes), pretrained=config.pretrained,
                            weights_path=config.weights_path, **config.model_options)
        meta = {"classes": prepared.classes, "mean": prepared.mean, "std": prepared.std}
        preprocessing = run_preprocessing(config)
        write_json_atomic(run_dir / "preprocessing.json", {**meta, "image_size": config.image_size,
                                                           "resize_size": preprocessing.resize_size,
                                                           "interpolation": preprocessing.interpolation})
        engine = Engine(config, model, prepared, device, [
            MetricsLogger(run_dir / "metrics.jsonl", config.log_every), Checkpointer(run_dir, config, meta),
            StatusUpdater(run_dir), CancelOnRequest(run_dir),
            *([EarlyStopping(config.early_stopping_patience)] if config.early_stopping_patience else []),
            *callbacks])
        if resume:
            if resume_state is not None:
                engine.load_state_dict(resume_state)
            _restrict_metrics(run_dir / "metrics.jsonl", engine.epoch)
        engine.fit()
        train_seconds = previous.get("train_seconds", 0.0) + time.time() - started
        write_status(run_dir, train_seconds=train_seconds)
        if evaluate_and_export:
            from .evaluate import evaluate_run
            from .export import export_run
            evaluate_run(run_dir, device=device, prepared=prepared)
            export_run(run_dir)
        write_status(run_dir, state="finished", finished=now_iso(), train_seconds=train_seconds)
        return run_dir
    except TrainingCancelled as stop:
        write_status(run_dir, state="cancelled", error=str(stop), finished=now_iso(),
                     train_seconds=previous.get("train_seconds", 0.0) + time.time() - started)
        raise
    except KeyboardInterrupt:
        write_status(run_dir, state="cancelled", error="interrupted (Ctrl-C)", finished=now_iso())
        raise TrainingCancelled("interrupted (Ctrl-C)") from None
    except LandmarkError as error:
        write_status(run_dir, state="failed", error=str(error), finished=now_iso())
        raise
    except OSError as error:  # disk full, permissions: fail the run with the reason
        write_status(run_dir, state="failed", error=f"{error.strerror or error}: {error.filename or ''}".strip(": "),
                     finished=now_iso())
        raise RunError(f"run failed: {error}") from None
    except Exception as error:
        (run_dir / "error.txt").write_text(traceback.format_exc())
        write_status(run_dir, state="failed", error=f"{type(error).__name__}: {error}", finished=now_iso())
        raise
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)


def _resume_state(run_dir: Path, device: torch.device) -> dict | None:
    checkpoint = run_dir / "checkpoint_last.pt"
    if not checkpoint.exists():
        return None
    try:
        return torch.load(checkpoint, map_location=device, weights_only=True)
    except Exception as error:  # a pickle with code in it, or a damaged file: never run it
        raise RunError(f"{checkpoint.name} cannot be read as a plain weights checkpoint "
                       f"({type(error).__name__}); it is damaged or not this app's") from None


def _in_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def train_new(config: TrainConfig, artifacts: Path | None = None, **kwargs) -> Path:
    """Create a run folder for ``config`` and train it in this process."""
    return train(create_run(config, artifacts), **kwargs)
