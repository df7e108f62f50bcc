"""The callback contract of the training loop (Lightning's): named events, ``order``, ``should_stop``,
``on_exception`` and state saved in checkpoints."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

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
