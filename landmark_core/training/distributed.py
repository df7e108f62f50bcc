"""Data-parallel training over several processes with PyTorch's own ``torch.distributed`` and torchrun.

A run trains the same way whatever the number of processes: ``batch_size`` is the *global* batch, every
process draws the same epoch permutation and the same augmentation numbers for the whole global batch, and
keeps only its share of the rows (:meth:`World.share`). Gradients are averaged by ``DistributedDataParallel``
with each process's loss scaled to its share of the global batch, so a step is the single-process step. Hence
the learning rate needs no change with the process count, and a run may resume with another process count.

What differs from one process, and why: dropout masks are drawn per process, and on CPUs BatchNorm layers in
training mode normalise over each process's share of the batch (``SyncBatchNorm`` needs GPUs; on GPUs it is
used). With dropout 0 and frozen or synchronised BatchNorm, weights match one process's to float rounding
(``tests/test_distributed.py``); the default pretrained recipe on CPUs (a frozen backbone and a fitted head)
is one of those.

Only rank 0 writes the run folder. Ranks learn of a request to stop together (:meth:`World.any`), so none is
left waiting in a collective; a rank that dies is noticed by torchrun, which stops the others, and the
launcher (:func:`landmark_core.pipeline.train_distributed`) records the dead rank's error as the run's.
"""
from __future__ import annotations

import ctypes
import datetime
import os
import signal
import sys

import torch

from ..core.errors import LandmarkError
from ..core.world import SINGLE_PROCESS, World

#: How long a rank waits in a collective for the others (rank 0 decoding the photos into the shared cache
#: included) before the run fails instead of hanging. ``LANDMARK_DIST_TIMEOUT`` (seconds) overrides it.
DEFAULT_TIMEOUT_S = 1800


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (which sets these for every worker)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ
                                                   and "MASTER_ADDR" in os.environ)


def join(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun set up; returns this rank's world and device.

    CUDA ranks use NCCL and GPU ``LOCAL_RANK``; CPU ranks use gloo. A rank whose launcher dies is stopped
    (SIGTERM via the parent-death signal) rather than left training alone.
    """
    if not launched_by_torchrun():
        return SINGLE_PROCESS, device
    import torch.distributed as dist
    world = World(rank=int(os.environ["RANK"]), size=int(os.environ["WORLD_SIZE"]),
                  local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    if world.size == 1:
        return SINGLE_PROCESS, device
    if device.type == "mps":
        raise LandmarkError("distributed training runs on CUDA GPUs or on CPUs (gloo); not on MPS")
    _stop_with_parent()
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get("LANDMARK_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return world, device


def leave(*, together: bool = False) -> None:
    """Leave the process group (a no-op when there is none, or after leaving).

    ``together``: every rank calls this at the same point, after training, and they meet at a barrier first, so
    none tears gloo down while another still talks to it (a rank that left while rank 0 went on was once seen to
    abort at exit with "terminate called without an active exception"). Rank 0 then evaluates alone.
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def _stop_with_parent() -> None:
    """Ask Linux to send SIGTERM when the torchrun agent dies (SIGKILL included): the rank then cancels the run
    cleanly (rank 0 records it, so it can resume) instead of training on, orphaned, holding the run's lock."""
    if not sys.platform.startswith("linux"):
        return
    try:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def default_processes() -> int:
    """What the Train page offers first: one process per GPU when there are several, else one."""
    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def process_limit() -> int:
    """The most processes one machine should run: one per GPU, or one per CPU core."""
    return torch.cuda.device_count() if torch.cuda.is_available() else max(1, os.cpu_count() or 1)


#: How a rank's failure reads when it only followed another's: stopped by the agent, or left alone in a collective.
_FOLLOWING = ("TrainingCancelled", "DistBackendError", "DistNetworkError", "DistError", "KeyboardInterrupt")


def root_cause(failures: dict) -> str:
    """One line naming the rank that failed first and its error (or the signal that killed it).

    When one rank dies the agent stops the others (SIGTERM) and ranks waiting in a collective fail with a
    connection error; those follow the root cause, so a failure that is neither is preferred.
    """
    described = {rank: _describe(failure) for rank, failure in sorted(failures.items())}
    primary = [rank for rank, text in described.items()
               if not text.startswith(("killed by SIGTERM", "killed by SIGINT")) and not any(k in text for k in _FOLLOWING)]
    rank = (primary or sorted(failures, key=lambda r: (failures[r].timestamp, r)))[0]
    return f"rank {rank} failed: {described[rank]}"


def _describe(failure) -> str:
    if failure.exitcode is not None and failure.exitcode < 0:
        try:
            return f"killed by {signal.Signals(-failure.exitcode).name}"
        except ValueError:
            pass
    data = failure.error_file_data or {}
    message = data.get("message") if isinstance(data, dict) else None
    if isinstance(message, dict):
        message = message.get("message")
    text = str(message or "").strip()
    return text.splitlines()[0] if text else f"exit code {failure.exitcode}"


def record_failure(error: BaseException) -> None:
    """Leave a rank's error where torchrun's agent reads it (its error file), so the launcher can name it."""
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler
        ErrorHandler().record_exception(error)
