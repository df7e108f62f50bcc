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
from dataclasses import dataclass

import torch

from .errors import LandmarkError

#: How long a rank waits in a collective for the others (rank 0 decoding the photos into the shared cache
#: included) before the run fails instead of hanging. ``LANDMARK_DIST_TIMEOUT`` (seconds) overrides it.
DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    def share(self, count: int) -> slice:
        """This rank's contiguous share of ``count`` rows (shares differ by at most one row; in rank order)."""
        return slice(count * self.rank // self.size, count * (self.rank + 1) // self.size)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (in float64, so sums of counts stay exact)."""
        if not self.is_distributed:
            return list(values)
        import torch.distributed as dist
        tensor = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank."""
        return bool(self.sum([float(flag)])[0]) if self.is_distributed else flag

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The concatenation, in rank order, of every rank's ``rows`` (shares may differ in length)."""
        if not self.is_distributed:
            return rows
        import torch.distributed as dist
        device = self._device()
        local = rows.to(device)
        lengths = torch.zeros(self.size, dtype=torch.int64, device=device)
        lengths[self.rank] = len(local)
        dist.all_reduce(lengths)
        longest = int(lengths.max())
        padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
        padded[:len(local)] = local
        pieces = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(pieces, padded)
        return torch.cat([piece[:int(n)] for piece, n in zip(pieces, lengths.tolist())]).to(rows.device)

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's values, in place, on every rank."""
        if self.is_distributed:
            import torch.distributed as dist
            staged = tensor.detach().to(self._device())
            dist.broadcast(staged, src=0)
            tensor.data.copy_(staged.to(tensor.device))
        return tensor

    def broadcast_object(self, value):
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.is_distributed:
            return value
        import torch.distributed as dist
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        if self.is_distributed:
            import torch.distributed as dist
            dist.barrier()

    def _device(self) -> torch.device:
        import torch.distributed as dist
        # NCCL moves CUDA tensors only; gloo moves CPU tensors
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


SINGLE_PROCESS = World()


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
