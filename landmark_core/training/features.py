"""Cached backbone features: a frozen backbone runs once per photo and view, and the head trains on
the cached features."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .. import data as data_lib
from ..models.registry import LandmarkNet, folded_for_inference, inference_batch_size


class FeatureBatches:
    """Batches of cached backbone features for frozen-backbone epochs.

    With the backbone frozen (and its BatchNorm in eval mode), ``head(backbone(x))``
    equals ``head(cached_features)``; so features of ``views`` copies of the
    training set are computed once and epochs only run the head. The ``epochs``
    frozen epochs use the views in consecutive blocks (8 epochs, 4 views:
    0,0,1,1,2,2,3,3), each computed when its first epoch starts, so the first
    epochs (and an early stop) pay for as few views as possible.

    ``exact_views``: view 0 is the centre crop and view 1 its mirror image (the
    views a flip-averaged prediction sees), later views are augmented; otherwise
    every view is augmented. ``tta_flip``: batches yield the mean of the features
    of views 0 and 1, which through a linear head is the flip-averaged prediction.
    """

    def __init__(self, model: LandmarkNet, loader: data_lib.BatchLoader, views: int, augment: bool, epochs: int,
                 backbone: Callable[[torch.Tensor], torch.Tensor] | None = None, *, exact_views: bool = False,
                 tta_flip: bool = False):
        self.model, self.loader, self.epoch = model, loader, 0
        self.exact_views, self.tta_flip = exact_views, tta_flip
        self.views = self.view_count(views, augment, epochs, exact_views=exact_views, tta_flip=tta_flip)
        self.epochs = max(1, epochs)
        self.augment = augment
        self.features: dict[int, torch.Tensor] = {}  # view -> (N, D), computed when an epoch first needs it
        self.backbone = backbone  # the frozen backbone; by default folded for inference when first needed
        self.labels = torch.from_numpy(np.asarray(loader.split.labels))
        self.world = loader.world

    @staticmethod
    def view_count(views: int, augment: bool, epochs: int, *, exact_views: bool, tta_flip: bool = False) -> int:
        """How many views of each photo the frozen epochs compute (one backbone pass each)."""
        if exact_views:  # the probe refits on all views so far: the last frozen epoch uses them all
            count = max(1, views if augment else min(views, 2))
        else:
            count = max(1, min(views if augment else 1, epochs))
        return max(count, 2) if tta_flip else count

    @torch.no_grad()
    def _view(self, view: int) -> torch.Tensor:
        """Features of one view of the split; in a distributed run each process computes its contiguous share
        of the rows (drawing the augmentation numbers of every chunk, so its rows match one process's) and the
        shares are gathered."""
        if view not in self.features:
            self.model.backbone.eval()
            if self.backbone is None:
                self.backbone = folded_for_inference(self.model.backbone)
            exact = self.exact_views and view < 2
            generator = torch.Generator().manual_seed(self.loader.seed * 7919 + view) if self.augment and not exact else None
            chunk = inference_batch_size(self.loader.device)
            mine = self.world.share(len(self.loader.split))
            chunks = [torch.zeros(0, self.model.feature_dim, device=self.loader.device)]
            for start in range(0, len(self.loader.split), chunk):
                end = min(start + chunk, len(self.loader.split))
                if start >= mine.stop:
                    break  # past this share: later draws concern other processes only
                low, high = max(start, mine.start), min(end, mine.stop)
                if high <= low:  # a chunk before this share: draw its numbers all the same, to stay in step
                    if generator is not None:
                        self.loader.prepare(torch.zeros((0, *self.loader.split.images.shape[1:]), dtype=torch.uint8),
                                            generator, slice(0, 0), end - start)
                    continue
                pixels = torch.from_numpy(np.array(self.loader.split.images[low:high]))
                inputs = self.loader.prepare(pixels, generator, slice(low - start, high - start), end - start)
                chunks.append(self.backbone(inputs.flip(-1) if exact and view == 1 else inputs).float())
            self.features[view] = self.world.gather_rows(torch.cat(chunks))
        return self.features[view]

    def precompute(self) -> "FeatureBatches":
        for view in range(self.views):
            self._view(view)
        return self

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def views_so_far(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of the first views, more each epoch, all of them by the last frozen epoch, with their labels."""
        count = min(self.views, math.ceil((self.epoch + 1) * self.views / self.epochs))
        return torch.cat([self._view(v) for v in range(count)]), self.labels.repeat(count)

    def evaluation_features(self) -> torch.Tensor:
        if self.tta_flip:
            return (self._view(0) + self._view(1)) / 2
        return self._view(0)

    def __iter__(self):
        if self.tta_flip:
            features = self.evaluation_features()
        else:
            features = self._view(min(self.views - 1, self.epoch * self.views // self.epochs))
        generator = torch.Generator().manual_seed(self.loader.seed * 100_003 + self.epoch)
        order = torch.randperm(len(features), generator=generator) if self.loader.shuffle else torch.arange(len(features))
        for start in range(0, len(order), self.loader.batch_size):
            index = order[start:start + self.loader.batch_size]
            index = index[self.world.share(len(index))]
            yield features[index], self.labels[index].to(features.device)
