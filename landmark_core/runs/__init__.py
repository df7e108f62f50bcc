"""Runs: every hyperparameter (``TrainConfig``), the ``Run`` folder object, its states, its progress and
its launch in the background."""
from .run import Run
from .states import RunState

__all__ = ["Run", "RunState"]
