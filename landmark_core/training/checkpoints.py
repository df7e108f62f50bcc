"""Run checkpoints: written atomically, read as plain weights only (never pickled code), rebuilt into models.

``checkpoint_last.pt`` holds everything a resumed run needs (model, optimizer, scheduler, callback states,
epoch); ``checkpoint_best.pt`` the weights of the best validation epoch. Both carry the run's config, classes
and normalisation, so a model can be rebuilt from either file alone.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.errors import RunError
from ..core.fileio import save_atomic
from ..models.registry import LandmarkNet, build_model
from ..runs.config import TrainConfig
from ..runs.run import Run

CHECKPOINTS = ("best", "last")


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` under a temporary name and rename it: a crash never leaves half a checkpoint."""
    save_atomic(path, lambda temporary: torch.save(state, temporary))


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint's state, or a RunError: a pickle with code in it, or a damaged file, is never run."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        raise RunError(f"{path.name} cannot be read as a plain weights checkpoint ({type(error).__name__}); "
                       "it is damaged or not this app's") from None
    if not isinstance(state, dict) or "model" not in state:
        raise RunError(f"{path.name} is not a checkpoint of this app")
    return state


def load_run_model(run_dir: Path, checkpoint: str = "best", device: torch.device | str = "cpu") -> tuple[LandmarkNet, dict]:
    """Rebuild a run's model from its folder alone; returns (model in eval mode, checkpoint meta)."""
    path = Run(run_dir).checkpoint(checkpoint)
    if not path.exists():
        raise RunError(f"{run_dir.name} has no {path.name} yet (has it trained an epoch?)")
    state = load_checkpoint(path, device)
    config = TrainConfig.from_dict(state["config"])
    model = build_model(config.model, len(state["classes"]), pretrained=False, **config.model_options)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return model, {"config": config, "classes": state["classes"], "mean": state["mean"], "std": state["std"],
                   "epoch": state["epoch"]}


def load_feature_bank(run_dir: Path, checkpoint: str = "best") -> tuple[torch.Tensor, torch.Tensor] | None:
    """(normalised training features (N, D) float16, their labels (N,)) saved by evaluation, or None."""
    path = Run(run_dir).feature_bank(checkpoint)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state["features"], state["labels"]
    except Exception as error:
        raise RunError(f"{path.name} cannot be read ({type(error).__name__}); run landmark evaluate again") from None
