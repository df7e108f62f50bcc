"""The callback contract of the training loop (Lightning's): named events, ``order``, ``should_stop``,
``on_exception`` and state saved in checkpoints."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, ClassVar, Sequence

if TYPE_CHECKING:  # the engine calls its callbacks: only their annotations name it
    from .engine import Engine


class Callback:
    """Override any of the named events; each receives the engine (``on_exception`` also the exception).

    ``order``: lower runs first. ``state_key``: where :meth:`state_dict` is kept in checkpoints.
    """
    order: int = 50  # the built-in callbacks run at 0-40: yours see the epoch after they have

    @property
    def state_key(self) -> str:
        return type(self).__name__

    def on_fit_start(self, engine: "Engine") -> None: ...
    def on_epoch_start(self, engine: "Engine") -> None: ...
    def on_batch_end(self, engine: "Engine") -> None: ...
    def on_epoch_end(self, engine: "Engine") -> None: ...
    def on_fit_end(self, engine: "Engine") -> None: ...
    def on_exception(self, engine: "Engine", error: BaseException) -> None: ...

    def state_dict(self) -> dict:
        """State to save with checkpoints; empty for a stateless callback."""
        return {}

    def load_state_dict(self, state: dict) -> None: ...


def ordered(callbacks: Sequence[Callback]) -> list[Callback]:
    """Callbacks by ``order``; equal orders keep the caller's order (Lightning's rule)."""
    return sorted(callbacks, key=lambda callback: callback.order)


@dataclass(frozen=True)
class BatchRecord:
    """A finished training batch, as callbacks read it (``engine.last``) and ``metrics.jsonl`` stores it."""
    kind: ClassVar[str] = "batch"
    epoch: int
    batch: int
    batches: int
    loss: float
    lr: float
    elapsed: float
    weight_decay: float | None = None  # a probe epoch's one "batch": the L-BFGS fit's weight decay
    views: int | None = None  # ... and the augmented views of each photo it was fit on

    def to_dict(self) -> dict:
        return {"kind": self.kind, **{k: v for k, v in asdict(self).items() if v is not None}}


@dataclass(frozen=True)
class EpochRecord:
    """A finished epoch: its losses and accuracies (``val_*`` None without a validation split), rate and times."""
    kind: ClassVar[str] = "epoch"
    epoch: int
    epochs: int
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    val_top5: float | None
    lr: float
    backbone_frozen: bool
    epoch_seconds: float
    elapsed: float

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    @property
    def score(self) -> float:
        """What "better" means for keeping and early stopping: validation accuracy, else the negative training loss."""
        return self.val_acc if self.val_acc is not None else -self.train_loss
