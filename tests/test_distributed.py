"""Data-parallel training: real torchrun launches of 2 CPU processes (gloo on 127.0.0.1)."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from landmark_core.core.world import World
from landmark_core.core.fileio import read_jsonl
from landmark_core.models.registry import build_model
from landmark_core.pipeline import create_run, train, train_distributed
from landmark_core.runs.run import read_status

from helpers import tiny_config

#: Dropout 0, frozen BatchNorm and no mixing: the settings under which a distributed step is the single-process
#: step (dropout masks and CPU BatchNorm statistics are per process, and mixup/cutmix pair photos within each
#: process's share of the batch; see landmark_core.distributed and Engine._mix).
EXACT = dict(model_options={"width": 8, "depth": 2, "dropout": 0.0}, freeze_batchnorm=True, mixup=0.0, cutmix=0.0)


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint_last.pt", weights_only=True)["model"]


def _max_difference(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_shares_cover_every_row_once_in_rank_order():
    for count in range(0, 12):
        for size in (1, 2, 3, 5):
            rows = [i for rank in range(size) for i in range(count)[World(rank, size).share(count)]]
            assert rows == list(range(count))


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()


@pytest.mark.slow
#: lr: SGD steps on the head must reach a head that trains the backbone (L-BFGS fits it outright); without
#: momentum there, whose 10x longer steps after a head of SGD steps amplified rounding to 1.6e-2
@pytest.mark.numeric
@pytest.mark.parametrize(("head_solver", "lr", "momentum"), [("lbfgs", 1e-3, 0.9), ("sgd", 1e-1, 0.0)])
def test_frozen_backbone_features_are_shared_out_and_gathered(tiny_dataset, artifacts, head_solver, lr, momentum):
    """The transfer recipe with 2 processes: augmented feature views computed half per process and gathered, the
    head fitted on them (by L-BFGS, or by SGD steps under a DistributedDataParallel over the head alone), then the
    backbone unfrozen and fine-tuned under a DistributedDataParallel over all parameters (with ``sgd``: the
    wrapper rebuilt).

    The fine-tuning epoch takes small SGD steps (ImageNet weights, BatchNorm statistics fixed, no dropout): steps
    that neither diverge nor amplify float rounding (Adam would: it turns a rounding-sized gradient into a
    learning-rate-sized step), so what differs between the runs is rounding, and each bound below says how much
    rounding can carry.
    """
    config = tiny_config(tiny_dataset, model="efficientnet_lite0", pretrained=True, model_options={"dropout": 0.0},
                         freeze_epochs=1, epochs=2, feature_views=2, head_solver=head_solver, augment=0.5,
                         optimizer="sgd", lr=lr, momentum=momentum, freeze_batchnorm=True)
    single = train(create_run(config, artifacts), evaluate_and_export=False)
    environment = dict(os.environ)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    run_dir = train_distributed(create_run(config, artifacts), 2)
    # the launcher's settings for its ranks, and torchrun's signal handlers, do not stay in this process
    assert dict(os.environ) == environment
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers

    one, two = _epochs(single), _epochs(run_dir)
    assert [e["backbone_frozen"] for e in two] == [True, False]
    assert all(math.isfinite(e["train_loss"]) for e in one + two)
    # epoch 1 fits the head on the gathered features, which equal one process's to float rounding (the share test
    # below: 1e-5); a mean cross-entropy moves by no more than the relative rounding of its logits
    assert abs(one[0]["train_loss"] - two[0]["train_loss"]) <= 1e-4 * one[0]["train_loss"]

    torch.manual_seed(config.seed)  # the initial weights, as the pipeline builds them
    initial = build_model(config.model, 3, pretrained=True, **config.model_options).state_dict()
    a, b = _weights(single), _weights(run_dir)
    # the head: the L-BFGS objective is strongly convex (L2 >= 1e-3 on standardised features), so features that
    # differ by float rounding (~1e-6 relative) move its minimiser by at most ~1e-6 / 1e-3 = 1e-3 of its size;
    # SGD steps (on the head, then on everything) carry rounding-sized differences only, as for the backbone
    for key in ("head.1.weight", "head.1.bias"):
        assert _relative_difference(b[key], a[key]) < 1e-3, key
    # the backbone: what the fine-tuning epoch changed is the same change. Each SGD step's gradient carries float
    # rounding of ~1e-5 relative (sums of up to 1e4 float32 terms), a few steps at lr * curvature << 1 add them up
    # to ~1e-4; a backbone whose gradients were not averaged (no DDP wrapper over it after the unfreeze: rank 0
    # steps on its own half of the batch) is off by about its whole change (measured: 1.05, against 2e-5), so 1e-2 tells
    # the two apart on any CPU
    trained = [k for k in a if k.startswith("backbone") and "running_" not in k and a[k].is_floating_point()]
    change_single = torch.cat([(a[k] - initial[k]).double().flatten() for k in trained])
    change_distributed = torch.cat([(b[k] - initial[k]).double().flatten() for k in trained])
    # storing the weights in float32 rounds each by up to 2**-24 of its size: a change 1000 times that norm keeps
    # storage rounding at 1e-3 of the change, ten times below the bound (measured: 0.040 against 374 in all)
    size = torch.cat([initial[k].double().flatten() for k in trained]).norm()
    assert change_single.norm() > 1e3 * 2 ** -24 * size
    assert _relative_difference(change_distributed, change_single) < 1e-2


def _epochs(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]


def _launch(run_dir: Path, artifacts: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "landmark_core", "train", "--run-dir", str(run_dir), *extra],
                            env={**os.environ, "LANDMARK_ARTIFACTS": str(artifacts)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _wait_for_epochs(run_dir: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if sum(r.get("kind") == "epoch" for r in read_jsonl(run_dir / "metrics.jsonl")) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no epoch {count} (exit {process.poll()}): {process.stderr.read().decode()[-2000:]}"
                         if process.poll() is not None else f"no epoch {count} within {timeout} s")


def _ranks(launcher: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of the launcher's torchrun workers."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != launcher.pid:
                continue
            environ = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in environ:
            ranks[int(environ["RANK"])] = int(entry.name)
    return ranks


def _wait_until_unlocked(run_dir: Path, timeout: float = 60) -> None:
    import fcntl
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(run_dir / "LOCK", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                time.sleep(0.1)
    raise AssertionError("the ranks kept training after their launcher died")


@pytest.mark.numeric
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ranks follow their launcher through PR_SET_PDEATHSIG")
def test_two_processes_killed_and_resumed_train_the_single_process_weights(tiny_dataset, artifacts):
    """Same global batch and seed (augmentation, class weights and label smoothing on): 2 gloo processes, their
    launcher SIGKILLed mid-run and the run resumed, reach one process's weights, and write one copy of each
    artifact."""
    # SGD with short steps: Adam divides each step by the gradient's running scale, which amplifies float rounding
    # from epoch to epoch (measured: 1e-7 after 3 epochs, 4e-3 after 24), and so does Nesterov SGD at lr 0.03
    # (steps of ~0.3 with momentum 0.9: 2.2e-4 after 12 epochs on an AVX-512 EPYC); at lr 0.01 it stays at 3e-8
    config = tiny_config(tiny_dataset, epochs=12, optimizer="sgd", lr=0.01, augment=0.5, class_balanced=True,
                         label_smoothing=0.1, **EXACT)
    single = train(create_run(config, artifacts))
    run_dir = create_run(config, artifacts)
    launcher = _launch(run_dir, artifacts, "--nproc-per-node", "2")
    _wait_for_epochs(run_dir, 3, launcher)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    _wait_until_unlocked(run_dir)  # the orphaned ranks stopped (SIGTERM from the kernel) and released the run
    assert read_status(run_dir)["state"] in ("cancelled", "interrupted")
    assert len(_epochs(run_dir)) < 12
    resumed = subprocess.run([sys.executable, "-m", "landmark_core", "train", "--resume", str(run_dir)],
                             env={**os.environ, "LANDMARK_ARTIFACTS": str(artifacts)}, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    status = read_status(run_dir)
    assert status["state"] == "finished"
    assert status["processes"] == 2  # resumed with the run's own process count
    # 2 processes sum a batch's gradient in another order than 1 (two halves, then the all-reduce): ~1e-7 on
    # weights of size ~1 a step; steps short enough not to amplify it (lr * momentum gain * curvature < 1) add
    # 12 epochs x 5 steps up to at most ~6e-6 (measured: 3e-8 to 1.2e-7 under every kernel setting and 1 thread)
    assert _max_difference(_weights(single), _weights(run_dir)) < 1e-5
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in single.iterdir())
    assert [r["epoch"] for r in _epochs(run_dir)] == list(range(1, 13))
    for one, two in zip(_epochs(single), _epochs(run_dir)):  # metrics reduced over both processes: one's numbers
        # a count of right photos: it changes only if a logit margin lies within the weights' 1e-5 difference
        assert one["val_acc"] == two["val_acc"]
        # a mean cross-entropy of those weights: within their difference times the inputs' scale (~10), << 1e-4
        assert abs(one["train_loss"] - two["train_loss"]) < 1e-4


def test_a_killed_rank_fails_the_run_with_its_error(tiny_dataset, artifacts):
    run_dir = create_run(tiny_config(tiny_dataset, epochs=200, **EXACT), artifacts)
    launcher = _launch(run_dir, artifacts, "--nproc-per-node", "2")
    _wait_for_epochs(run_dir, 1, launcher)
    ranks = _ranks(launcher)
    assert sorted(ranks) == [0, 1]
    os.kill(ranks[1], signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=60)  # no hang: torchrun stops rank 0 and the launcher reports
    assert launcher.returncode != 0
    status = read_status(run_dir)
    assert status["state"] == "failed", status
    assert "rank 1" in status["error"], status
    assert "SIGKILL" in status["error"], status
    assert "rank 1" in stderr.decode()
    assert "model" in torch.load(run_dir / "checkpoint_last.pt", weights_only=True)  # the last epoch is kept


class _ShareWithoutGroup(World):
    """A rank's share computed in this process: the caller concatenates the shares (what all_gather does)."""

    def gather_rows(self, rows):
        return rows


@pytest.mark.numeric
def test_each_share_of_an_augmented_feature_view_is_the_single_process_rows(monkeypatch):
    """Every process draws the augmentation numbers of the chunks before its share too, so its rows are augmented
    exactly as one process augments them (3 processes, a split of 3 chunks: rank 2 starts after a whole chunk)."""
    import numpy as np

    import landmark_core.training.features as features_module
    from landmark_core.data import BatchLoader, DecodedSplit
    from landmark_core.training.features import FeatureBatches
    from landmark_core.models.registry import build_model

    monkeypatch.setattr(features_module, "inference_batch_size", lambda device: 16)
    rng = np.random.default_rng(0)
    split = DecodedSplit(rng.integers(0, 256, (40, 36, 36, 3), dtype=np.uint8), np.arange(40) % 3,
                         [f"photo{i}.jpg" for i in range(40)])
    torch.manual_seed(0)
    model = build_model("scratch_cnn", 3, pretrained=False, width=8, depth=2).eval()

    def view(world, index):
        loader = BatchLoader(split, batch_size=8, image_size=32, mean=[0.5] * 3, std=[0.25] * 3, augment=0.8, seed=3,
                             world=world)
        return FeatureBatches(model, loader, views=4, augment=True, epochs=4, backbone=model.backbone)._view(index)

    for index in range(4):
        single = view(World(), index)
        shares = torch.cat([view(_ShareWithoutGroup(rank, 3), index) for rank in range(3)])
        assert shares.shape == single.shape, index
        # a share is computed in batches of other sizes than one process's: convolution rounding of ~1e-6 on
        # features of size ~1; the same augmentation numbers, or the difference would be of the pixels' size
        assert torch.allclose(shares, single, atol=1e-5), index
