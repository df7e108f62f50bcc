"""This process's place among a run's training processes, and the collectives every layer may call
(one process: rank 0 of 1, and every collective a no-op)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


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
