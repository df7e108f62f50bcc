"""A run's photos, ready to train on: scanned, split, decoded once into the cache, with normalisation stats."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import data as data_lib
from ..core.errors import LandmarkError
from ..models.registry import get_spec
from ..runs.config import TrainConfig, run_preprocessing


@dataclass
class PreparedData:
    classes: list[str]
    train: data_lib.DecodedSplit
    val: data_lib.DecodedSplit
    test: data_lib.DecodedSplit
    mean: list[float]
    std: list[float]
    split: dict  # paths of each split, saved with the run
    #: Photos of other places (``unknown/`` folders): decoded only when evaluation calibrates the open-set decision.
    unknown_calibration: list[str] = field(default_factory=list)
    unknown_evaluation: list[str] = field(default_factory=list)
    cache_dir: Path | None = None


def resolved_for_dataset(config: TrainConfig) -> tuple[TrainConfig, data_lib.Dataset]:
    """``config`` resolved for its dataset (whose size sets the epochs of a model that trains for a number of
    photos seen), and the dataset scanned; a bad setting or a missing dataset fails before anything is made."""
    config.resolved()  # every setting checked before the dataset is read
    if not config.data:
        raise LandmarkError("no dataset given (--data DIR)")
    # absolute, so the run can be evaluated and resumed from any directory
    config = replace(config, data=str(Path(config.data).expanduser().resolve()),
                     weights_path=str(Path(config.weights_path).expanduser().resolve()) if config.weights_path else None)
    dataset = data_lib.scan_dataset(config.data, test_fraction=config.test_fraction, seed=config.seed)
    return config.resolved(training_photos=len(dataset.train)), dataset


def prepare_data(config: TrainConfig, progress: Callable[[str, int, int], None] | None = None) -> PreparedData:
    """Scan, split (train/val, seeded and stratified), decode once into the cache, and get normalisation stats."""
    dataset = data_lib.scan_dataset(config.data, test_fraction=config.test_fraction, seed=config.seed)
    train_samples, val_samples = data_lib.stratified_split(dataset.train, config.val_fraction, config.seed)
    cache = data_lib.cache_dir_for(dataset.root)

    def decode(name, samples):
        report = (lambda done, total: progress(f"decoding {name}", done, total)) if progress else None
        return decode_for_run(config, samples, cache, report)

    train, val, test = decode("train", train_samples), decode("val", val_samples), decode("test", dataset.test)
    if len(train) == 0:
        raise LandmarkError("no readable training images")
    spec = get_spec(config.model).preprocessing
    if spec.mean is not None:
        mean, std = list(spec.mean), list(spec.std)
    else:  # statistics of the training split only: never of validation or test images
        mean, std = data_lib.channel_stats(train, cache)
    split = {"classes": dataset.classes, "train": train.paths, "val": val.paths, "test": test.paths,
             "skipped": {**train.skipped, **val.skipped, **test.skipped},
             "test_taken_from_train": dataset.test_taken_from_train}
    return PreparedData(dataset.classes, train, val, test, mean, std, split, dataset.unknown_calibration,
                        dataset.unknown_evaluation, cache)


def decode_for_run(config: TrainConfig, samples: Sequence[data_lib.Sample], cache_dir: Path | None = None,
                   progress: Callable[[int, int], None] | None = None) -> data_lib.DecodedSplit:
    """Photos decoded as a run with ``config`` decodes them: the short side at the model's resize size (its
    crop share of the input size) with its filter. The one rule for training, evaluation and anything that must
    see the photos as a run does (the dataset statistics, the benchmarks)."""
    preprocessing = run_preprocessing(config)
    return data_lib.decode_split(samples, preprocessing.resize_size, cache_dir=cache_dir, progress=progress,
                                 interpolation=preprocessing.interpolation)


def decode_whole_photos(config: TrainConfig, split: data_lib.DecodedSplit,
                        cache_dir: Path | None = None) -> data_lib.DecodedSplit:
    """The photos of a decoded split as the familiarity check's whole-photo view sees them
    (``familiarity_view`` "whole"): each photo at the run's resize size, then all of it squashed to the input size;
    row for row the split's photos. One unreadable since the split was decoded gets its decoded square's view."""
    preprocessing = run_preprocessing(config)
    whole = data_lib.decode_split([data_lib.Sample(path, int(label)) for path, label in zip(split.paths, split.labels)],
                                  preprocessing.resize_size, cache_dir=cache_dir,
                                  interpolation=preprocessing.interpolation, squashed_size=config.image_size)
    if whole.paths == split.paths:
        return whole
    import torch
    from ..core.transforms import squash
    rows = {path: row for row, path in enumerate(whole.paths)}
    images = np.empty((len(split), config.image_size, config.image_size, 3), dtype=np.uint8)
    for row, path in enumerate(split.paths):
        images[row] = (whole.images[rows[path]] if path in rows else
                       squash(torch.from_numpy(np.asarray(split.images[row])).permute(2, 0, 1)[None],
                              config.image_size)[0].permute(1, 2, 0).numpy())
    return data_lib.DecodedSplit(images, split.labels, split.paths, whole.skipped)


def decode_photos(config: TrainConfig, paths: Sequence[str], cache_dir: Path | None = None) -> data_lib.DecodedSplit:
    """Photos outside the classes (label -1), decoded with the run's preprocessing."""
    return decode_for_run(config, [data_lib.Sample(path, -1) for path in paths], cache_dir)
