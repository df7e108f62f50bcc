"""Batches from a decoded split, and augmentation done on whole batches as tensors (on the GPU when there is one)."""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import DataError
from ..core.world import SINGLE_PROCESS, World
from ..runs.config import AUGMENTATIONS
from .decode import DecodedSplit

_LUMA = (0.299, 0.587, 0.114)


def augment_batch(batch: torch.Tensor, size: int, strength: float, generator: torch.Generator,
                  normalize: tuple[Sequence[float], Sequence[float]] | None = None,
                  rows: slice | None = None, drawn: int | None = None) -> torch.Tensor:
    """Random resized crop, flip and colour jitter for a whole float batch (N,3,S,S) in 0-1.

    Returns values in 0-1, or ``(x - mean) / std`` with ``normalize=(mean, std)``
    (folded into the colour matrix, so it costs no extra pass).

    ``strength`` 0 gives the centre crop, 1 the full recipe. Two passes over the
    pixels do everything, which matters on CPUs: one ``grid_sample`` for the
    geometry (crops are axis-aligned, so the sampling grid is built from one
    row and one column per image instead of ``affine_grid``'s per-pixel
    product), and one batched 3x3 matrix per image for brightness, contrast and
    saturation together.

    ``batch`` may be the ``rows`` of a batch of ``drawn`` images (a process's share of a global batch): the
    random numbers are drawn for all ``drawn`` and sliced, so an image is augmented the same way whatever the
    number of processes.
    """
    n, device = batch.shape[0], batch.device
    rows = rows if rows is not None else slice(0, n)

    def uniform(low, high):
        return low + (high - low) * torch.rand(drawn or n, generator=generator, device="cpu")[rows]

    side = batch.shape[-1]
    base = size / side  # the centre crop's share of the square
    area = uniform(1.0 - 0.6 * strength, 1.0) * base ** 2
    log_ratio = uniform(-0.3 * strength, 0.3 * strength)
    crop_w = torch.clamp(torch.sqrt(area * torch.exp(log_ratio)), max=1.0)
    crop_h = torch.clamp(torch.sqrt(area / torch.exp(log_ratio)), max=1.0)
    travel = min(1.0, 2 * strength)  # how far from the centre a crop may move
    shift_x = (1 - crop_w) * uniform(-1, 1) * travel
    shift_y = (1 - crop_h) * uniform(-1, 1) * travel
    flip = torch.where(uniform(0, 1) < 0.5 * min(1.0, strength * 2), -1.0, 1.0)

    steps = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1  # output pixel centres in [-1, 1]
    xs = (steps[None, :] * (crop_w * flip)[:, None] + shift_x[:, None]).to(device)
    ys = (steps[None, :] * crop_h[:, None] + shift_y[:, None]).to(device)
    grid = torch.stack((xs[:, None, :].expand(n, size, size), ys[:, :, None].expand(n, size, size)), dim=-1)
    out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # brightness b, contrast c around the image mean m, saturation s around luma, as out = M x + v
    jitter = 0.3 * strength
    b, c, s = uniform(1 - jitter, 1 + jitter), uniform(1 - jitter, 1 + jitter), uniform(1 - jitter, 1 + jitter)
    luma = torch.tensor(_LUMA).expand(n, 3, 3)
    saturation = s[:, None, None] * torch.eye(3) + (1 - s)[:, None, None] * luma
    matrix = (saturation * (c * b)[:, None, None]).to(device)
    mean = out.mean(dim=(1, 2, 3)) * b.to(device)
    offset = ((1 - c).to(device) * mean)[:, None, None].expand(n, 3, 1)  # saturation rows sum to 1
    low, high = [0.0] * 3, [1.0] * 3
    if normalize is not None:  # (M x + v - m) / s = (M / s) x + (v - m) / s, clamped to where 0 and 1 land
        channel_mean, channel_std = (torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1) for v in normalize)
        matrix, offset = matrix / channel_std, (offset - channel_mean) / channel_std
        low = [(0 - m) / s for m, s in zip(*normalize)]
        high = [(1 - m) / s for m, s in zip(*normalize)]
    out = torch.baddbmm(offset, matrix, out.reshape(n, 3, size * size)).reshape(n, 3, size, size)
    for channel in range(3):  # in place, per channel plane: one cheap pass instead of a broadcast clamp
        out[:, channel].clamp_(low[channel], high[channel])
    return out


def crop_flip_batch(pixels: torch.Tensor, size: int, generator: torch.Generator | None,
                    rows: slice | None = None, drawn: int | None = None) -> torch.Tensor:
    """The classic recipe on uint8 (N,S,S,3): a random ``size`` crop and a coin-flip mirror per image.

    No resampling, so it is only copies: the cheapest augmentation there is.
    Without a generator it is the centre crop (a view, no copy). ``rows``/``drawn`` as in :func:`augment_batch`.
    """
    n, side = pixels.shape[0], pixels.shape[1]
    if generator is None:
        offset = (side - size) // 2
        return pixels[:, offset:offset + size, offset:offset + size]
    rows = rows if rows is not None else slice(0, n)
    offsets = torch.randint(0, side - size + 1, (drawn or n, 2), generator=generator)[rows].tolist()
    flips = (torch.rand(drawn or n, generator=generator) < 0.5)[rows].tolist()
    out = torch.empty((n, size, size, 3), dtype=torch.uint8, device=pixels.device)
    for i, ((top, left), flip) in enumerate(zip(offsets, flips)):
        crop = pixels[i, top:top + size, left:left + size]
        out[i] = crop.flip(1) if flip else crop
    return out




def trivial_augment_batch(batch: torch.Tensor, generator: torch.Generator, rows: slice | None = None,
                          drawn: int | None = None) -> torch.Tensor:
    """TrivialAugment (Müller & Hutter, 2021) on a float batch (N,3,S,S) in 0-1: one operation drawn at random,
    at a random magnitude, per image (torchvision's TrivialAugmentWide). Returns uint8 (N,3,S,S).

    torchvision draws from torch's global generator, so each image's draws are seeded from ``generator``
    (inside a forked RNG state, which leaves the caller's stream alone): a resumed run sees the same images.
    ``rows``/``drawn`` as in :func:`augment_batch`.
    """
    from torchvision.transforms import v2  # imported here: the other recipes do not need torchvision

    n = batch.shape[0]
    seeds = torch.randint(0, 2 ** 62, (drawn or n,), generator=generator)[rows if rows is not None else slice(0, n)]
    # uint8: posterize, solarize and equalize are defined on whole-number pixels
    pixels = batch.mul(255).round_().to(torch.uint8)
    operation = v2.TrivialAugmentWide()
    with torch.random.fork_rng(devices=[]):
        for i, seed in enumerate(seeds.tolist()):
            torch.default_generator.manual_seed(seed)  # the CPU generator alone: a GPU's stays as it was
            pixels[i] = operation(pixels[i])
    return pixels


class BatchLoader:
    """Batches from a :class:`DecodedSplit`: uint8 → device → (augment) → normalise.

    The order and augmentation of epoch ``e`` depend only on ``(seed, e)``, so a
    resumed run sees exactly the batches the uninterrupted run would have. ``batch_size``
    is the global batch: in a distributed run each process yields its share of every batch
    (:meth:`World.share`), augmented as the single process would augment those rows.
    """

    def __init__(self, split: DecodedSplit, *, batch_size: int, image_size: int, mean: Sequence[float],
                 std: Sequence[float], device: torch.device | str = "cpu", shuffle: bool = False,
                 augment: float = 0.0, augmentation: str = "full", seed: int = 0, channels_last: bool = False,
                 world: World = SINGLE_PROCESS):
        if augmentation not in AUGMENTATIONS:
            raise DataError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, not {augmentation!r}")
        self.split, self.batch_size, self.image_size = split, batch_size, image_size
        self.device, self.shuffle, self.augment, self.seed = torch.device(device), shuffle, augment, seed
        self.augmentation = augmentation
        self.normalization = ([float(m) for m in mean], [float(s) for s in std])
        mean_t = torch.tensor(self.normalization[0], dtype=torch.float32, device=self.device)
        std_t = torch.tensor(self.normalization[1], dtype=torch.float32, device=self.device)
        # uint8 in HWC order straight to normalised float: x / (255 std) - mean / std, one pass
        self.pixel_scale, self.pixel_shift = 1 / (255 * std_t), -mean_t / std_t
        self.channels_last = channels_last
        self.world = world
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.split)
        order = torch.randperm(n, generator=generator).numpy() if self.shuffle else np.arange(n)
        for start in range(0, n, self.batch_size):
            index = np.sort(order[start:start + self.batch_size]) if not self.shuffle else order[start:start + self.batch_size]
            mine = self.world.share(len(index))
            pixels = torch.from_numpy(np.ascontiguousarray(self.split.images[index[mine]]))
            labels = torch.from_numpy(self.split.labels[index[mine]])
            yield self.prepare(pixels, generator, mine, len(index)), labels.to(self.device, non_blocking=True)

    def prepare(self, pixels: torch.Tensor, generator: torch.Generator | None = None, rows: slice | None = None,
                drawn: int | None = None) -> torch.Tensor:
        """uint8 (N,S,S,3) → normalised float (N,3,size,size) on the device; ``pixels`` may be the ``rows`` of a
        batch of ``drawn`` images (see :func:`augment_batch`)."""
        pixels = pixels.to(self.device, non_blocking=True)
        augmenting = self.augment > 0 and generator is not None
        if augmenting and self.augmentation == "trivial":
            batch = augment_batch(pixels.permute(0, 3, 1, 2).float().div_(255), self.image_size, self.augment, generator,
                                  rows=rows, drawn=drawn)
            batch = trivial_augment_batch(batch, generator, rows, drawn)
            batch = torch.addcmul(self.pixel_shift.view(1, 3, 1, 1), batch, self.pixel_scale.view(1, 3, 1, 1))
        elif augmenting and self.augmentation == "full":
            batch = augment_batch(pixels.permute(0, 3, 1, 2).float().div_(255), self.image_size, self.augment, generator,
                                  normalize=self.normalization, rows=rows, drawn=drawn)
        else:
            crops = crop_flip_batch(pixels, self.image_size, generator if augmenting else None, rows, drawn)
            # computed in HWC order, so the NCHW view of the result is already channels-last memory
            batch = torch.addcmul(self.pixel_shift, crops, self.pixel_scale).permute(0, 3, 1, 2)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch.contiguous()
