"""Photos on disk to batches: indexing (:mod:`.index`), the decode cache (:mod:`.decode`), batches and
augmentation (:mod:`.augment`), and the dataset report (:mod:`.quality`). Each module imports only the ones
before it; this package re-exports their public names."""
from .augment import AUGMENTATIONS, BatchLoader, augment_batch, crop_flip_batch, trivial_augment_batch
from .decode import (DecodedSplit, ProgressFn, cache_dir_for, channel_stats, content_key, decode_split,
                     wait_for_cache_writes)
from .index import UNKNOWN_FOLDERS, Dataset, Sample, scan_dataset, stratified_split
from .quality import NEAR_DUPLICATE_BITS, dataset_report, find_leaks, look_alike, perceptual_hash

__all__ = ["UNKNOWN_FOLDERS", "Dataset", "Sample", "scan_dataset", "stratified_split", "DecodedSplit", "ProgressFn",
           "cache_dir_for", "channel_stats", "content_key", "decode_split", "wait_for_cache_writes", "AUGMENTATIONS",
           "BatchLoader", "augment_batch", "crop_flip_batch", "trivial_augment_batch", "NEAR_DUPLICATE_BITS", "dataset_report", "find_leaks",
           "look_alike", "perceptual_hash"]
