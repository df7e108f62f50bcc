"""Dataset exploration helpers for the dashboard and the CLI."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .. import data as data_lib
from ..core.images import ImageSource, load_square
from ..core.transforms import resize_side_for
from ..runs.config import TrainConfig
from ..training.prepare import decode_for_run


def image_table(report: dict) -> pd.DataFrame:
    """One row per file of a :func:`data.dataset_report`, with aspect ratio and readability."""
    frame = pd.DataFrame(report["images"])
    if frame.empty:
        return pd.DataFrame(columns=["split", "class", "path", "bytes", "width", "height", "format", "aspect", "readable"])
    frame["aspect"] = frame["width"] / frame["height"]
    frame["readable"] = ~frame["path"].isin(set(report["unreadable"]))
    return frame


def augmentation_preview(source: ImageSource, *, strength: float, count: int = 6, image_size: int = 160,
                         seed: int = 0, augmentation: str = "full") -> list[np.ndarray]:
    """The training augmentation (``data.AUGMENTATIONS``) applied ``count`` times to one image (uint8 HxWx3)."""
    square = torch.from_numpy(np.repeat(load_square(source, resize_side_for(image_size))[None], count, axis=0))
    generator = torch.Generator().manual_seed(seed)
    if augmentation == "crop_flip":
        return list(data_lib.crop_flip_batch(square, image_size, generator if strength > 0 else None).numpy())
    out = data_lib.augment_batch(square.permute(0, 3, 1, 2).float() / 255, image_size, strength, generator)
    if augmentation == "trivial" and strength > 0:
        return list(data_lib.trivial_augment_batch(out, generator).permute(0, 2, 3, 1).numpy())
    return [(view.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for view in out]


def training_stats(root: str, *, image_size: int | None = None, val_fraction: float = 0.1,
                   seed: int = 0) -> tuple[list[float], list[float]]:
    """Mean and std of the training split exactly as a scratch_cnn run with these settings computes them."""
    config = TrainConfig(data=root, model="scratch_cnn", image_size=image_size, val_fraction=val_fraction,
                         seed=seed).resolved()
    dataset = data_lib.scan_dataset(root, seed=seed)
    train, _ = data_lib.stratified_split(dataset.train, val_fraction, seed)
    cache = data_lib.cache_dir_for(dataset.root)
    split = decode_for_run(config, train, cache)
    return data_lib.channel_stats(split, cache)
