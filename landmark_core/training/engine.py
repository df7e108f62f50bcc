"""The training loop: an engine that fires named events to its callbacks (the contract: :mod:`.events`).

Side effects (metrics, checkpoints, status, early stopping, cancellation, console output) are callbacks
(:mod:`.callbacks`). The contract, as in Lightning: callbacks run in ``order``; each event reaches every
callback; a callback ends training by setting ``engine.should_stop`` (the epoch finishes and every callback
sees it); cancellation and failures are exceptions that callbacks hear of through ``on_exception``; a
callback with state returns it from ``state_dict`` and it is saved in ``checkpoint_last.pt``, so a resumed
run continues exactly as the uninterrupted one would have.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import data as data_lib
from ..core.errors import RunError
from ..core.world import SINGLE_PROCESS, World
from ..models.registry import FlipAveraged, LandmarkNet, folded_for_inference
from ..runs.config import TrainConfig
from ..scoring.calibration import top_k_hits
from .events import BatchRecord, Callback, EpochRecord, ordered
from .features import FeatureBatches
from .prepare import PreparedData
from .probe import class_weights, fit_linear_head


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """bfloat16 where it is fast and needs no loss scaling (CUDA with bf16 support); None for full precision."""
    if setting == "off":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


class Engine:
    """The training loop. State a callback may read: ``epoch``, ``batch``, ``last``, ``model``, ``config``, ``world``.

    With a distributed ``world`` the trained module is wrapped in ``DistributedDataParallel`` (anew whenever
    the set of trained parameters changes: head only, then the whole network), every process sees its share
    of each global batch, and every number in ``last`` is reduced over the processes.
    """

    def __init__(self, config: TrainConfig, model: LandmarkNet, data: PreparedData, device: torch.device,
                 callbacks: Sequence[Callback] = (), world: World = SINGLE_PROCESS):
        self.config, self.data, self.device, self.world = config, data, device, world
        if world.is_distributed and device.type == "cuda" and not config.freeze_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch statistics of the global batch
        self.model = model.to(device, memory_format=torch.channels_last if config.channels_last else torch.preserve_format)
        self._replicated: tuple | None = None  # (module, trained-parameter mask, its DistributedDataParallel)
        self.callbacks = ordered(callbacks)
        self.should_stop = False  # set by a callback (early stopping) to end training after this epoch
        loader_args = dict(batch_size=config.batch_size, image_size=config.image_size, mean=data.mean, std=data.std,
                           device=device, seed=config.seed, channels_last=config.channels_last, world=world)
        self.train_loader = data_lib.BatchLoader(data.train, shuffle=True, augment=config.augment,
                                                 augmentation=config.augmentation, **loader_args)
        self.val_loader = data_lib.BatchLoader(data.val, **loader_args)
        self.class_weight = (class_weights(torch.from_numpy(np.asarray(data.train.labels)), len(data.classes)).to(device)
                             if config.class_balanced else None)
        # summed, then divided by the global batch's total weight: each process's share of one mean
        self.criterion = nn.CrossEntropyLoss(weight=self.class_weight, label_smoothing=config.label_smoothing,
                                             reduction="sum")
        self.probing = config.head_solver == "lbfgs" and config.cache_features  # frozen epochs fit the head by L-BFGS
        self.optimizer = self._make_optimizer()
        self.steps_per_epoch = len(self.train_loader)
        self.scheduler = self._make_scheduler()
        self.averaged = self._make_average()
        self.epoch = 0  # epochs completed
        self.batch = 0
        self.last: EpochRecord | BatchRecord | None = None  # what the event being fired is about
        self.best_val_acc = -math.inf
        self.best_val_loss = math.inf
        self._feature_batches: dict[str, FeatureBatches] = {}
        self.started = time.time()
        self.autocast = autocast_dtype(config.mixed_precision, device)
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

    def _make_average(self) -> "torch.optim.swa_utils.AveragedModel | None":
        """The moving average of the weights (and BatchNorm statistics) that validation sees and checkpoints keep:
        a decay per step that spans about ``ema_epochs`` epochs, whatever the dataset's size."""
        if not self.config.ema_epochs:
            return None
        from torch.optim.swa_utils import AveragedModel
        return AveragedModel(self.model, multi_avg_fn=_moving_average(self.config.ema_epochs * self.steps_per_epoch),
                             use_buffers=True)

    @property
    def evaluated_model(self) -> LandmarkNet:
        """The model that validation scores and checkpoints keep: the moving average once it has begun (the first
        step that trains the whole network starts it from the weights then, a frozen phase's fitted head included)."""
        return self.averaged.module if self.averaged is not None and self.averaged.n_averaged > 0 else self.model

    # -- events
    def fire(self, event: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

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
        """Train until the last epoch or until a callback sets ``should_stop``; every callback sees every event.

        Cancellation is an exception (:class:`TrainingCancelled`): callbacks hear of it, and of any other
        failure, through ``on_exception`` before it propagates.
        """
        try:
            self.fire("on_fit_start")
            while self.epoch < self.config.epochs and not self.should_stop:
                self._run_epoch()
            self.fire("on_fit_end")
        except BaseException as error:
            for callback in self.callbacks:
                try:
                    callback.on_exception(self, error)
                except Exception:  # the original failure is what the user must see
                    pass
            raise

    def _run_epoch(self) -> None:
        c = self.config
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
        evaluated = self.evaluated_model if network is self.model else network
        val = evaluate_batches(evaluated, val_batches, tta_flip=c.tta_flip, world=self.world)
        for loss in (train_loss, val["loss"]):
            if loss is not None and not math.isfinite(loss):
                self._diverged(loss)
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val["acc"])
        self.epoch += 1
        self.last = EpochRecord(epoch=self.epoch, epochs=c.epochs, train_loss=train_loss, train_acc=train_acc,
                                val_loss=val["loss"], val_acc=val["acc"], val_top5=val["top5"],
                                lr=self.optimizer.param_groups[0]["lr"],
                                backbone_frozen=network is not self.model or self.epoch <= c.freeze_epochs,
                                epoch_seconds=time.time() - epoch_start, elapsed=time.time() - self.started)
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
            # every process fitted the same features; rank 0's result, so float rounding cannot drift them apart
            self.world.broadcast_(linear.weight)
            self.world.broadcast_(linear.bias)
            logits = head.logits(features)
            # rank 0's numbers: early stopping without a validation split reads the loss, and every process must
            # take the same decision
            summary = self.world.broadcast_(torch.tensor([float(F.cross_entropy(logits, labels)),
                                                          float((logits.argmax(1) == labels).float().mean())],
                                                         dtype=torch.float64))
            loss, accuracy = summary.tolist()
        self.batch = 1
        self.last = BatchRecord(epoch=self.epoch + 1, batch=1, batches=1, loss=loss, weight_decay=head.weight_decay,
                                views=len(labels) // max(1, len(train_batches.labels)),
                                lr=self.optimizer.param_groups[0]["lr"], elapsed=time.time() - self.started)
        self.fire("on_batch_end")
        return loss, accuracy

    def _diverged(self, loss: float) -> None:
        raise RunError(f"training diverged: the loss became {loss} in epoch {self.epoch + 1} "
                       f"(lr {self.config.lr:g}; try a smaller --lr). Nothing was exported.")

    def _replicated_network(self, network: nn.Module) -> nn.Module:
        """``network`` itself in one process; in several, a DistributedDataParallel over its trained parameters,
        built again when they change (the head alone while the backbone is frozen, then everything)."""
        if not self.world.is_distributed:
            return network
        mask = tuple(p.requires_grad for p in network.parameters())
        if self._replicated is None or self._replicated[0] is not network or self._replicated[1] != mask:
            from torch.nn.parallel import DistributedDataParallel
            self._replicated = None  # the old wrapper's gradient hooks go with it
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._replicated = (network, mask, DistributedDataParallel(network, device_ids=ids))
        return self._replicated[2]

    def _loss_weight(self, labels: torch.Tensor) -> torch.Tensor:
        """What the loss of these labels sums over: their class weights (or their count)."""
        if self.class_weight is None:
            return torch.tensor(float(len(labels)))
        return self.class_weight[labels].sum().float().cpu()

    def _train_steps(self, network: nn.Module, train_batches) -> tuple[float, float]:
        device, world = self.device, self.world
        trained = self._replicated_network(network)
        total_loss, correct, seen = 0.0, 0, 0
        mixing = network is self.model and (self.config.mixup > 0 or self.config.cutmix > 0)
        for self.batch, (inputs, labels) in enumerate(train_batches, start=1):
            partners, share = labels, 1.0
            if mixing:
                inputs, partners, share = self._mix(inputs, labels)
            with torch.autocast(device.type, dtype=self.autocast) if self.autocast else contextlib.nullcontext():
                logits = trained(inputs)
                summed = self.criterion(logits.float(), labels)
                if share < 1.0:
                    summed = share * summed + (1 - share) * self.criterion(logits.float(), partners)
            # partners are the batch in another order: share and rest sum over the same total weight
            loss_weight = float(self._loss_weight(labels))
            dominant = labels if share >= 0.5 else partners
            # one collective a step: the global batch's loss weight, summed loss, size and hits
            weight, global_summed, count, hits = world.sum([loss_weight, summed.item(), float(len(labels)),
                                                            (logits.argmax(1) == dominant).sum().item()])
            batch_loss = global_summed / max(weight, 1e-12)
            if not math.isfinite(batch_loss):  # one more step would write non-finite weights into the checkpoints
                self._diverged(batch_loss)
            # DistributedDataParallel averages gradients over processes: scaling by their number makes the step
            # the gradient of the global batch's mean loss, however the batch was shared out
            loss = summed * (world.size / max(weight, 1e-12))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.averaged is not None and network is self.model:
                self.averaged.update_parameters(self.model)
            if self.scheduler is not None and not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step()
            total_loss += batch_loss * count
            correct += int(hits)
            seen += int(count)
            self.last = BatchRecord(epoch=self.epoch + 1, batch=self.batch, batches=len(train_batches), loss=batch_loss,
                                    lr=self.optimizer.param_groups[0]["lr"], elapsed=time.time() - self.started)
            self.fire("on_batch_end")
        return total_loss / max(1, seen), correct / max(1, seen)

    def _mix(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Mixup or cutmix of a batch with itself in a shuffled order: (inputs, the partners' labels, the share
        of each photo's own label). When both are on, each batch takes one of the two.

        The draws depend only on (seed, epoch, batch), so a resumed run mixes as the uninterrupted one did. With
        several processes each mixes within its share of the batch.
        """
        c = self.config
        draws = np.random.default_rng([c.seed, self.epoch, self.batch])
        kinds = [(kind, alpha) for kind, alpha in (("mixup", c.mixup), ("cutmix", c.cutmix)) if alpha > 0]
        kind, alpha = kinds[int(draws.integers(len(kinds)))]
        share = float(draws.beta(alpha, alpha))
        order = torch.from_numpy(draws.permutation(len(labels))).to(inputs.device)
        if kind == "mixup":
            return inputs.mul(share).add_(inputs[order], alpha=1 - share), labels[order], share
        # a box of the partner's pixels covering 1 - share of the image, clipped at the borders (its true area
        # then gives the share)
        height, width = inputs.shape[-2:]
        box_h, box_w = round(height * math.sqrt(1 - share)), round(width * math.sqrt(1 - share))
        y, x = int(draws.integers(height)), int(draws.integers(width))
        top, bottom = max(0, y - box_h // 2), min(height, y + box_h - box_h // 2)
        left, right = max(0, x - box_w // 2), min(width, x + box_w - box_w // 2)
        mixed = inputs.clone()
        mixed[..., top:bottom, left:right] = inputs[order][..., top:bottom, left:right]
        return mixed, labels[order], 1 - (bottom - top) * (right - left) / (height * width)

    # -- state
    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly as the uninterrupted one, callbacks included."""
        averaged = {"trained_model": self.model.state_dict(), "averaged_steps": int(self.averaged.n_averaged)} \
            if self.averaged is not None else {}
        return {"model": self.evaluated_model.state_dict(), **averaged, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None, "epoch": self.epoch,
                "best_val_acc": self.best_val_acc, "best_val_loss": self.best_val_loss,
                "should_stop": self.should_stop, "world_size": self.world.size,
                "callbacks": {callback.state_key: state for callback in self.callbacks
                              if (state := callback.state_dict())}}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state.get("trained_model", state["model"]))
        if self.averaged is not None:
            self.averaged.module.load_state_dict(state["model"])
            self.averaged.n_averaged.fill_(int(state.get("averaged_steps", 0)))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best_val_acc = int(state["epoch"]), float(state["best_val_acc"])
        self.best_val_loss = float(state.get("best_val_loss", math.inf))
        self.should_stop = bool(state.get("should_stop", False))
        saved = state.get("callbacks") or {}
        for callback in self.callbacks:
            if callback.state_key in saved:
                callback.load_state_dict(saved[callback.state_key])
        self.model.set_backbone_trainable(self.epoch >= self.config.freeze_epochs)


def _moving_average(horizon_steps: float) -> Callable:
    """An exponential moving average over about ``horizon_steps`` steps, with a warm-up: step n's decay is at most
    (1 + n) / (10 + n), as in timm's ModelEmaV2, so the random initial weights are forgotten within tens of steps
    and a short run keeps its trained weights rather than an average with the initialisation."""
    target = 1 - 1 / max(1.0, horizon_steps)

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], steps: torch.Tensor) -> None:
        decay = min(target, (1 + float(steps)) / (10 + float(steps)))
        if averaged[0].is_floating_point():  # a group of one dtype; integer buffers (batch counts) are copied
            torch._foreach_lerp_(averaged, current, 1 - decay)
        else:
            for mine, theirs in zip(averaged, current):
                mine.copy_(theirs)
    return update


def predict_logits(network: nn.Module, inputs: torch.Tensor, tta_flip: bool = False) -> torch.Tensor:
    """Logits of a batch; with ``tta_flip`` the mean of the images' and their mirror images' logits.

    Feature batches (2-D inputs) already hold flip-averaged features when asked
    (:class:`FeatureBatches`), and a linear head maps the mean to the mean.
    """
    return FlipAveraged(network, tta_flip)(inputs)


@torch.no_grad()
def evaluate_batches(network: nn.Module, batches: Iterable, tta_flip: bool = False, world: World = SINGLE_PROCESS) -> dict:
    """Loss, top-1 and top-5 accuracy over ``batches`` (each process's share, summed over processes)."""
    network.eval()
    total_loss, correct, top5, seen = 0.0, 0, 0, 0
    for inputs, labels in batches:
        logits = predict_logits(network, inputs, tta_flip)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        top5 += int(top_k_hits(logits.cpu().numpy(), labels.cpu().numpy(), 5).sum())
        seen += len(labels)
    total_loss, correct, top5, seen = world.sum([total_loss, correct, top5, seen])
    if seen == 0:
        return {"loss": None, "acc": None, "top5": None}
    return {"loss": total_loss / seen, "acc": correct / seen, "top5": top5 / seen}
