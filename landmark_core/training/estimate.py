"""What a run will cost on this machine before it starts: a few real training steps timed, times the run's steps.

A run's time is almost all its training steps, and a step's time depends on the model, the input size, the
batch, the augmentation and the device, not on which photos are in the batch. So a handful of steps on random
pixels of the decoded size, after one warm-up step, measure it: forward, loss, backward and optimizer step, with
the run's own augmentation. Evaluation passes are timed the same way without the backward pass. Decoding is
timed on a few of the dataset's own photos. The figures are for this machine as it is now: while another run
trains, both are slower.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .. import data as data_lib
from ..core.allocator import freed_memory_is_kept
from ..core.errors import LandmarkError
from ..core.locations import dataset_folder_argument
from ..models.registry import build_model, inference_batch_size
from ..runs.config import TrainConfig, device_or_error, run_preprocessing
from .engine import autocast_dtype
from .features import FeatureBatches
from .prepare import resolved_for_dataset

#: Steps timed after the warm-up step: enough to average out a slow first allocation, few enough for ~seconds.
TIMED_STEPS = 3
#: Evaluation batches timed after the warm-up one: the same work every time (no augmentation, no optimizer), so
#: one says as much as three, and a Lite2 run's estimate of the demo (two networks) took 10 s instead of 14.
TIMED_EVAL_STEPS = 1
#: Photos decoded to time decoding (the dataset's first ones).
DECODE_SAMPLE = 16


@dataclass(frozen=True)
class StepTimes:
    """Seconds per training batch (augmentation, forward, backward, step) and per evaluation batch."""
    train_batch: float
    eval_batch: float
    batch_size: int
    eval_batch_size: int
    #: Seconds per evaluation batch of the separate familiarity backbone (0: the run compares its own features).
    familiarity_eval_batch: float = 0.0
    #: Whether the steps ran under the allocator a training process uses (core.allocator), as they should.
    freed_memory_kept: bool = False


@dataclass(frozen=True)
class RunEstimate:
    """The estimated wall time of a run, in parts."""
    epochs: int
    full_epochs: int
    train_batches: int
    seconds_per_epoch: float
    training_seconds: float
    frozen_seconds: float
    evaluation_seconds: float
    decode_seconds: float
    steps: StepTimes

    @classmethod
    def from_dict(cls, values: dict) -> "RunEstimate":
        """The estimate :func:`dataclasses.asdict` wrote (``landmark train --estimate --json``); fields this
        version does not know are left out (a newer library may write more)."""
        def known(kind, given: dict) -> dict:
            names = {field.name for field in dataclasses.fields(kind)}
            return {name: value for name, value in given.items() if name in names}
        return cls(**{**known(cls, values), "steps": StepTimes(**known(StepTimes, values["steps"]))})

    @property
    def seconds(self) -> float:
        """The whole run from a cold start: decoding, every epoch with its validation, the final evaluation."""
        return self.decode_seconds + self.training_seconds + self.frozen_seconds + self.evaluation_seconds

    def describe(self) -> str:
        from ..runs.progress import format_seconds
        parts = []
        if self.full_epochs:
            parts.append(f"{self.full_epochs} epochs of about {format_seconds(self.seconds_per_epoch)} each "
                         f"({self.train_batches} batches of {self.steps.batch_size}, "
                         f"{self.steps.train_batch:.2f} s a batch measured on this machine just now)")
        if self.frozen_seconds:
            parts.append(f"about {format_seconds(self.frozen_seconds)} for the frozen-backbone epochs")
        parts.append(f"about {format_seconds(self.decode_seconds)} decoding the photos when they are not cached yet")
        return f"about {format_seconds(self.seconds)} in all: " + "; ".join(parts) + "."


def _random_batch(count: int, side: int) -> torch.Tensor:
    return torch.randint(0, 256, (count, side, side, 3), dtype=torch.uint8)


def measure_steps(config: TrainConfig, num_classes: int, *, training: bool = True) -> StepTimes:
    """Time :data:`TIMED_STEPS` training steps (unless not ``training``: a run that only fits a head on frozen
    features takes none) and :data:`TIMED_EVAL_STEPS` evaluation batches of ``config``'s model on this machine."""
    config = config.resolved()
    device = device_or_error(config.device)
    preprocessing = run_preprocessing(config)
    model = build_model(config.model, num_classes, pretrained=False, **config.model_options)
    model = model.to(device, memory_format=torch.channels_last if config.channels_last else torch.preserve_format)
    no_photos = data_lib.DecodedSplit(np.zeros((0, preprocessing.resize_size, preprocessing.resize_size, 3), np.uint8),
                                      np.zeros(0, np.int64), [])
    loader = data_lib.BatchLoader(no_photos, batch_size=config.batch_size,
                                  image_size=config.image_size, mean=[0.5] * 3, std=[0.25] * 3, device=device,
                                  augment=config.augment, augmentation=config.augmentation,
                                  channels_last=config.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, num_classes, (config.batch_size,), device=device)

    def train_step() -> None:
        inputs = loader.prepare(_random_batch(config.batch_size, preprocessing.resize_size), generator)
        with autocast():
            loss = criterion(model(inputs).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    eval_size = inference_batch_size(device, memory_kept=True)  # a training process keeps freed memory
    precision = autocast_dtype(config.mixed_precision, device)

    def autocast():
        return torch.autocast(device.type, dtype=precision) if precision else contextlib.nullcontext()

    @torch.no_grad()
    def eval_step() -> None:
        with autocast():
            model(loader.prepare(_random_batch(eval_size, preprocessing.resize_size)))

    def seconds_per_call(step, repeats: int) -> float:
        step()  # warm-up: first allocations, kernel selection
        _synchronize(device)
        began = time.perf_counter()
        for _ in range(repeats):
            step()
        _synchronize(device)
        return (time.perf_counter() - began) / repeats

    model.train()
    train_batch = seconds_per_call(train_step, TIMED_STEPS) if training else 0.0
    model.eval()
    eval_batch = seconds_per_call(eval_step, TIMED_EVAL_STEPS)
    familiarity_batch = 0.0
    if config.separate_familiarity_backbone:  # evaluation passes every split through it too
        model = build_model(config.separate_familiarity_backbone, num_classes, pretrained=False).to(
            device, memory_format=torch.channels_last if config.channels_last else torch.preserve_format).eval()
        familiarity_batch = seconds_per_call(eval_step, TIMED_EVAL_STEPS)
    model = optimizer = None  # freed before the cache is emptied (the step closures hold these cells)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # a process that times the steps and goes on (a notebook) keeps no GPU memory
    return StepTimes(train_batch, eval_batch, config.batch_size, eval_size, familiarity_batch, freed_memory_is_kept())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_decode_seconds(config: TrainConfig, samples: list) -> float:
    """Seconds to decode one photo to the run's size, from the first :data:`DECODE_SAMPLE` of ``samples`` (nothing
    is cached)."""
    samples = list(samples[:DECODE_SAMPLE])
    if not samples:
        return 0.0
    preprocessing = run_preprocessing(config)
    began = time.perf_counter()
    # the decoding threads a run uses (DECODE_SAMPLE photos keep them all busy): photos per second, as a run sees it
    data_lib.decode_split(samples, preprocessing.resize_size, interpolation=preprocessing.interpolation)
    return (time.perf_counter() - began) / len(samples)


def estimate_run(config: TrainConfig, steps: StepTimes, *, trained_photos: int, val_photos: int, test_photos: int,
                 decode_seconds_per_photo: float) -> RunEstimate:
    """The run's time from its step times and the sizes of its splits (``config`` resolved for its dataset)."""
    train_batches = max(1, math.ceil(trained_photos / config.batch_size))

    def eval_seconds(photos: int, flip: bool = bool(config.tta_flip), batch_seconds: float = steps.eval_batch) -> float:
        return math.ceil(photos / steps.eval_batch_size) * batch_seconds * (2 if flip else 1)

    frozen = config.freeze_epochs if config.cache_features else 0
    full_epochs = config.epochs - frozen
    seconds_per_epoch = train_batches * steps.train_batch + eval_seconds(val_photos)
    # frozen epochs with cached features: one backbone pass over the training photos per feature view (flip
    # averaging is one of the views there), and the validation photos once
    views = FeatureBatches.view_count(config.feature_views, config.augment > 0, frozen,
                                      exact_views=config.head_solver == "lbfgs", tta_flip=bool(config.tta_flip))
    frozen_seconds = views * eval_seconds(trained_photos, flip=False) + eval_seconds(val_photos) if frozen else 0.0
    # the final evaluation predicts every split (the training photos give the familiarity's feature bank, through
    # the separate familiarity backbone where there is one), then the export is checked on a batch
    evaluated = trained_photos + val_photos + test_photos
    evaluation = (eval_seconds(evaluated) + eval_seconds(steps.eval_batch_size)
                  + eval_seconds(evaluated + steps.eval_batch_size, batch_seconds=steps.familiarity_eval_batch))
    return RunEstimate(epochs=config.epochs, full_epochs=full_epochs, train_batches=train_batches,
                       seconds_per_epoch=seconds_per_epoch, training_seconds=full_epochs * seconds_per_epoch,
                       frozen_seconds=frozen_seconds, evaluation_seconds=evaluation,
                       # a whole-photo familiarity view decodes every photo a second time, for evaluation
                       decode_seconds=decode_seconds_per_photo * (trained_photos + val_photos + test_photos)
                       * (2 if config.familiarity_view == "whole" else 1),
                       steps=steps)


def estimate(config: TrainConfig) -> RunEstimate:
    """What ``config`` will cost on its dataset on this machine."""
    config, dataset = resolved_for_dataset(config)
    trains_steps = config.epochs > (config.freeze_epochs if config.cache_features else 0)
    steps = measure_steps(config, dataset.num_classes, training=trains_steps)
    trained, validation = data_lib.stratified_split(dataset.train, config.val_fraction, config.seed)
    return estimate_run(config, steps, trained_photos=len(trained), val_photos=len(validation),
                        test_photos=len(dataset.test),
                        decode_seconds_per_photo=measure_decode_seconds(config, dataset.train))


def estimate_in_a_training_process(data: str, model: str, *, timeout_s: float = 600) -> RunEstimate:
    """What a run of ``model`` with its defaults will cost on ``data``, timed by ``landmark train --estimate`` in
    a fresh process: its steps run under the allocator a training process uses (core.allocator). Timed in a
    long-lived process that keeps glibc's defaults, as the app does, every large batch pays fresh page faults:
    there a batch of 64 through Lite2 took 3.3 s instead of 1.3 s, and the Train page said 7m 18s for a demo run
    that took 2m 37s (this way: 2m 25s-2m 50s). A failure is a LandmarkError with the command's own message."""
    args = [sys.executable, "-m", "landmark_core", "train", "--data", dataset_folder_argument(data), "--model", model,
            "--estimate", "--json"]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                              cwd=os.getcwd(), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        raise LandmarkError(f"timing {model}'s steps took over {timeout_s:.0f} s") from None
    if done.returncode < 0:
        raise LandmarkError(f"timing {model}'s steps was stopped by signal {-done.returncode}"
                            + (" (out of memory?)" if -done.returncode == signal.SIGKILL else ""))
    if done.returncode != 0:
        said = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        errors = [line.partition("error: ")[2] for line in said if "error: " in line]  # ours, or argparse's
        raise LandmarkError(errors[-1] if errors else said[-1] if said else f"exit code {done.returncode}")
    try:
        return RunEstimate.from_dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (IndexError, ValueError, KeyError, TypeError) as error:
        raise LandmarkError(f"no estimate in what the timing process printed ({type(error).__name__}: {error})")


def estimate_as_json(config: TrainConfig) -> str:
    """:func:`estimate` of ``config`` on one line, as :meth:`RunEstimate.from_dict` reads it."""
    return json.dumps(dataclasses.asdict(estimate(config)))
