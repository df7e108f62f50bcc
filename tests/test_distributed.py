"""Data-parallel training: real torchrun launches of 2 CPU processes (gloo on 127.0.0.1)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from landmark_core.distributed import World
from landmark_core.fileio import read_jsonl
from landmark_core.pipeline import create_run, train, train_distributed
from landmark_core.runs import read_status

from conftest import tiny_config

#: Dropout 0 and frozen BatchNorm: the settings under which a distributed step is the single-process step
#: (dropout masks and CPU BatchNorm statistics are per process; see landmark_core.distributed).
EXACT = dict(model_options={"width": 8, "depth": 2, "dropout": 0.0}, freeze_batchnorm=True)


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint_last.pt", weights_only=True)["model"]


def _max_difference(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_shares_cover_every_row_once_in_rank_order():
    for count in range(0, 12):
        for size in (1, 2, 3, 5):
            rows = [i for rank in range(size) for i in range(count)[World(rank, size).share(count)]]
            assert rows == list(range(count))


@pytest.mark.slow
def test_frozen_backbone_features_are_shared_out_and_gathered(tiny_dataset, artifacts):
    """A pretrained-style recipe: augmented feature views computed half per process and gathered, the head fitted
    by L-BFGS, then the backbone unfrozen (the DDP wrapper rebuilt over all parameters)."""
    config = tiny_config(tiny_dataset, model="efficientnet_lite0", pretrained=False, model_options={"dropout": 0.0},
                         freeze_epochs=1, epochs=2, feature_views=2, head_solver="lbfgs", augment=0.5)
    single = train(create_run(config, artifacts), evaluate_and_export=False)
    environment = dict(os.environ)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    run_dir = train_distributed(create_run(config, artifacts), 2)
    # the launcher's settings for its ranks, and torchrun's signal handlers, do not stay in this process
    assert dict(os.environ) == environment
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    # the features of each half come from a process with its own thread count; L-BFGS carries the rounding on
    assert _max_difference(_weights(single), _weights(run_dir)) < 1e-3


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ranks follow their launcher through PR_SET_PDEATHSIG")
def test_two_processes_killed_and_resumed_train_the_single_process_weights(tiny_dataset, artifacts):
    """Same global batch and seed (augmentation, class weights and label smoothing on): 2 gloo processes, their
    launcher SIGKILLed mid-run and the run resumed, reach one process's weights, and write one copy of each
    artifact."""
    # SGD: Adam divides each step by the gradient's running scale, which amplifies float rounding from epoch to
    # epoch (measured: 1e-7 after 3 epochs, 4e-3 after 24); SGD keeps it at 1e-7 after 24
    config = tiny_config(tiny_dataset, epochs=12, optimizer="sgd", lr=0.03, augment=0.5, class_balanced=True,
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
    assert status["state"] == "finished" and status["processes"] == 2  # resumed with the run's own process count
    assert _max_difference(_weights(single), _weights(run_dir)) < 1e-5
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in single.iterdir())
    assert [r["epoch"] for r in _epochs(run_dir)] == list(range(1, 13))
    for one, two in zip(_epochs(single), _epochs(run_dir)):  # metrics reduced over both processes: one's numbers
        assert one["val_acc"] == two["val_acc"] and abs(one["train_loss"] - two["train_loss"]) < 1e-4


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
    assert status["state"] == "failed" and "rank 1" in status["error"] and "SIGKILL" in status["error"], status
    assert "rank 1" in stderr.decode()
    assert "model" in torch.load(run_dir / "checkpoint_last.pt", weights_only=True)  # the last epoch is kept


class _ShareWithoutGroup(World):
    """A rank's share computed in this process: the caller concatenates the shares (what all_gather does)."""

    def gather_rows(self, rows):
        return rows


def test_each_share_of_an_augmented_feature_view_is_the_single_process_rows(monkeypatch):
    """Every process draws the augmentation numbers of the chunks before its share too, so its rows are augmented
    exactly as one process augments them (3 processes, a split of 3 chunks: rank 2 starts after a whole chunk)."""
    import numpy as np

    import landmark_core.engine as engine_module
    from landmark_core.data import BatchLoader, DecodedSplit
    from landmark_core.engine import FeatureBatches
    from landmark_core.models import build_model

    monkeypatch.setattr(engine_module, "inference_batch_size", lambda device: 16)
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
        assert shares.shape == single.shape and torch.allclose(shares, single, atol=1e-5), index
