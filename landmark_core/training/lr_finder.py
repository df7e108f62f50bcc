"""The learning-rate range test (Smith 2017, as fastai's ``lr_find``): train a throwaway copy of a run's model
for a few dozen steps while the learning rate grows exponentially, and read a good rate off the loss curve.

The sweep trains what the run's learning rate will drive: the head on cached features when frozen epochs take
SGD steps, otherwise the whole network (the backbone at ``backbone_lr_scale`` of the rate, as in training).
Nothing is written to any run folder.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..core.enums import TextEnum
from ..core.errors import LandmarkError
from ..core.fileio import process_alive, read_json, write_json_atomic
from ..core.locations import artifacts_dir, dataset_folder_argument
from ..models.registry import build_model
from ..runs.config import TrainConfig, resolve_device
from .engine import Engine
from .prepare import prepare_data


@dataclass
class LRFinderResult:
    learning_rates: list[float]
    losses: list[float]          # exponentially smoothed, bias-corrected (fastai's β = 0.98)
    suggestion: float | None     # the rate where the smoothed loss falls fastest, before its minimum
    trained: str                 # "head" or "whole network"


def find_learning_rate(config: TrainConfig, *, start_lr: float = 1e-6, end_lr: float = 1.0, steps: int = 80,
                       progress: Callable[[int, int], None] | None = None) -> LRFinderResult:
    """Sweep the learning rate from ``start_lr`` to ``end_lr`` over ``steps`` batches; stop once the loss explodes."""
    config = config.resolved()
    device = resolve_device(config.device)
    prepared = prepare_data(config)
    torch.manual_seed(config.seed)
    model = build_model(config.model, len(prepared.classes), pretrained=config.pretrained,
                        weights_path=config.weights_path, **config.model_options)
    head_only = config.freeze_epochs > 0 and config.head_solver == "sgd"
    # the fine-tuning phase is what the rate drives when frozen epochs fit the head by L-BFGS
    engine = Engine(replace(config, freeze_epochs=config.freeze_epochs if head_only else 0), model, prepared, device)
    network, batches, _ = engine._loaders()
    network.train()
    engine.scheduler = None  # the sweep sets the rate itself (a scheduler built by the engine has already scaled it)
    base = [1.0, config.backbone_lr_scale]  # head, backbone: the groups the engine's optimizer is built with
    rates, smoothed, average, best = [], [], 0.0, math.inf
    for step, (inputs, labels) in enumerate(itertools.islice(_endless(batches), steps), start=1):
        rate = start_lr * (end_lr / start_lr) ** ((step - 1) / max(1, steps - 1))
        for group, share in zip(engine.optimizer.param_groups, base):
            group["lr"] = rate * share
        loss = engine.criterion(network(inputs).float(), labels) / max(float(engine._loss_weight(labels)), 1e-12)
        engine.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        engine.optimizer.step()
        average = 0.98 * average + 0.02 * loss.item()
        current = average / (1 - 0.98 ** step)
        rates.append(rate)
        smoothed.append(current)
        if progress:
            progress(step, steps)
        best = min(best, current)
        if not math.isfinite(current) or current > 4 * best:
            break
    return LRFinderResult(rates, smoothed, suggest(rates, smoothed), "head" if head_only else "whole network")


def _endless(batches):
    """Batches epoch after epoch (each reshuffled); nothing when there are none."""
    epoch = 0
    while True:
        batches.set_epoch(epoch)
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            return
        epoch += 1


def suggest(rates: list[float], losses: list[float]) -> float | None:
    """A rate in the loss's longest valley (fastai's "valley" rule): the longest run of ever lower smoothed losses,
    looked for only once the loss has started to fall (a tenth of its drop below its start), and a rate part-way down it, where the loss still falls steadily
    (the bottom of a valley is already too high a rate). None without a clear descent.

    The steepest point of the whole curve is no answer: the first few smoothed points of a sweep are noisy, and
    their slope is often the steepest (a suggestion at the curve's first rate, 1e-6, that trains nothing)."""
    finite = [(r, l) for r, l in zip(rates, losses) if math.isfinite(l)]
    if len(finite) < 5:
        return None
    rates_arr, losses_arr = np.array([r for r, _ in finite]), np.array([l for _, l in finite])
    plateau, lowest = float(np.median(losses_arr[:5])), float(losses_arr.min())
    if not plateau - lowest > 0.05 * abs(plateau):  # a flat curve's noise is no descent
        return None
    # the loss has started to fall: it stays a tenth of its whole drop below where it started for three points
    # (a noisy point on the plateau does not)
    below = losses_arr < plateau - 0.1 * (plateau - lowest)
    sustained = [i for i in range(len(below)) if below[i:i + 3].all()]
    if not sustained:
        return None
    begin = sustained[0]
    curve = losses_arr[begin:]
    # longest[i]: length of the longest chain of ever lower losses ending at point i; before[i]: its previous point
    longest, before = np.ones(len(curve), dtype=int), np.full(len(curve), -1)
    for i in range(1, len(curve)):
        lower_before = np.nonzero(curve[:i] > curve[i])[0]
        if len(lower_before):
            j = int(lower_before[np.argmax(longest[lower_before])])
            longest[i], before[i] = longest[j] + 1, j
    end = int(np.argmax(longest))
    start = end
    while before[start] >= 0:
        start = int(before[start])
    if longest[end] < 4:  # a valley of at least four ever lower points
        return None
    # part-way down: past the valley's first third, short of its bottom
    return float(rates_arr[begin + start + (end - start) // 2])


class SweepState(TextEnum):
    NONE = "none"  # never started for this model and dataset
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"  # it said why, or its process is gone without a result


class Sweep:
    """The one handle on a learning-rate sweep that runs in its own process, like a training run: the page that
    starts it stays responsive and may be left, and any page or session reads its progress and result.

    Its folder (``artifacts/lr-sweeps/<model>-<dataset hash>``) holds ``status.json`` (state, pid, batches done of
    the total, error), ``result.json`` and the process's ``log.txt``; the last sweep of a model on a dataset is
    kept until the next one replaces it.
    """
    STATUS, RESULT, LOG = "status.json", "result.json", "log.txt"

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @classmethod
    def of(cls, data: str, model: str, artifacts: Path | None = None) -> "Sweep":
        key = hashlib.sha1(dataset_folder_argument(data).encode()).hexdigest()[:10]
        return cls((artifacts or artifacts_dir()) / "lr-sweeps" / f"{model}-{key}")

    @classmethod
    def start(cls, data: str, model: str, *, steps: int = 80, artifacts: Path | None = None) -> "Sweep":
        """Launch ``landmark lr-find --into`` for the model's default settings on ``data``; a sweep already running
        for the pair is a LandmarkError (one at a time: it takes the cores)."""
        sweep = cls.of(data, model, artifacts)
        if sweep.state == SweepState.RUNNING:
            raise LandmarkError(f"a learning-rate sweep of {model} on this dataset is running already")
        sweep.folder.mkdir(parents=True, exist_ok=True)
        (sweep.folder / cls.RESULT).unlink(missing_ok=True)
        args = [sys.executable, "-m", "landmark_core", "lr-find", "--data", dataset_folder_argument(data),
                "--model", model, "--steps", str(steps), "--into", str(sweep.folder)]
        # written before the process starts, which from then on writes the status alone (its own pid included)
        write_json_atomic(sweep.folder / cls.STATUS, {"state": SweepState.RUNNING.value, "pid": None,
                                                      "launched": time.time(), "done": 0, "total": steps,
                                                      "model": model, "data": str(data)})
        with open(sweep.folder / cls.LOG, "wb") as log:
            subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return sweep

    def _status(self) -> dict:
        try:
            status = read_json(self.folder / self.STATUS, default={}) or {}
        except (ValueError, OSError):
            status = {}
        return status if isinstance(status, dict) else {}

    #: A sweep whose process has not started within this, or has written nothing for this long, is taken as
    #: dead (a pid reused after a restart must not keep a sweep "running" for ever).
    SILENT_SECONDS = 600

    @property
    def state(self) -> SweepState:
        status = self._status()
        try:
            state = SweepState(status.get("state", "none"))
        except (ValueError, TypeError):
            return SweepState.FAILED
        if state != SweepState.RUNNING:
            return state
        try:
            silent = time.time() - (self.folder / self.STATUS).stat().st_mtime
        except OSError:
            silent = 0.0
        alive = process_alive(status.get("pid")) if status.get("pid") else True  # launched, not started yet
        if not alive or silent > self.SILENT_SECONDS:
            return SweepState.FINISHED if (self.folder / self.RESULT).exists() else SweepState.FAILED
        return state

    def record_failure(self, error: BaseException) -> None:
        """Say why the sweep ended without a result (what ``landmark lr-find --into`` does on any failure)."""
        reason = str(error) if isinstance(error, LandmarkError) else f"{type(error).__name__}: {error}"
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / self.STATUS, {**self._status(), "state": SweepState.FAILED.value,
                                                      "pid": os.getpid(), "error": reason})

    @property
    def progress(self) -> tuple[int, int]:
        status = self._status()
        return int(status.get("done") or 0), int(status.get("total") or 0)

    @property
    def error(self) -> str | None:
        status = self._status()
        if status.get("error"):
            return str(status["error"])
        if self.state == SweepState.FAILED:
            return f"the sweep's process ended without a result (its output: {self.folder / self.LOG})"
        return None

    @property
    def result(self) -> LRFinderResult | None:
        try:
            values = read_json(self.folder / self.RESULT, default=None)
            return LRFinderResult(**values) if isinstance(values, dict) else None
        except (ValueError, OSError, TypeError):
            return None

    def run_here(self, config: TrainConfig, steps: int = 80) -> LRFinderResult:
        """Sweep in this process, keeping the folder's status current (what ``landmark lr-find --into`` runs)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        base = {"state": SweepState.RUNNING.value, "pid": os.getpid(), "done": 0, "total": steps,
                "model": config.model, "data": config.data}
        write_json_atomic(self.folder / self.STATUS, base)
        written = [0.0]

        def report(done: int, total: int) -> None:
            if time.time() - written[0] >= 0.5 or done == total:
                written[0] = time.time()
                write_json_atomic(self.folder / self.STATUS, {**base, "done": done, "total": total})

        try:
            result = find_learning_rate(config, steps=steps, progress=report)
        except BaseException as error:
            self.record_failure(error)
            raise
        write_json_atomic(self.folder / self.RESULT, asdict(result))
        done = len(result.learning_rates)
        write_json_atomic(self.folder / self.STATUS, {**base, "state": SweepState.FINISHED.value, "done": done,
                                                      "total": done})
        return result
