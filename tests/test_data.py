import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from landmark_core import data as data_lib
from landmark_core.core.errors import DataError

from helpers import TINY_CLASSES


def test_scan_train_test_layout(tiny_dataset):
    dataset = data_lib.scan_dataset(tiny_dataset)
    assert dataset.classes == TINY_CLASSES
    assert len(dataset.train) == 36
    assert len(dataset.test) == 12
    assert not dataset.test_taken_from_train


def test_scan_class_folders_only_takes_a_stratified_test_split(tiny_dataset, tmp_path):
    shutil.copytree(tiny_dataset / "train", tmp_path / "flat")
    dataset = data_lib.scan_dataset(tmp_path / "flat", test_fraction=0.25, seed=1)
    assert dataset.test_taken_from_train
    assert sorted(np.bincount([s.label for s in dataset.test]).tolist()) == [3, 3, 3]
    assert not {s.path for s in dataset.test} & {s.path for s in dataset.train}
    again = data_lib.scan_dataset(tmp_path / "flat", test_fraction=0.25, seed=1)
    assert [s.path for s in again.test] == [s.path for s in dataset.test]


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "not found"),
    (lambda p: p.mkdir(), "no class folders"),
    (lambda p: (p / "train" / "00.A").mkdir(parents=True), "no files"),
])
def test_bad_layouts_give_clear_errors(tmp_path, make, message):
    root = tmp_path / "ds"
    make(root)
    with pytest.raises(DataError, match=message):
        data_lib.scan_dataset(root)


def test_stratified_split_keeps_every_class():
    samples = [data_lib.Sample(f"{c}-{i}", c) for c in range(4) for i in range(10)]
    keep, held = data_lib.stratified_split(samples, 0.2, seed=0)
    assert len(held) == 8
    assert sorted({s.label for s in held}) == [0, 1, 2, 3]


def test_decode_cache_is_reused_and_bad_files_are_skipped(tiny_dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset, root)
    bad = root / "train" / TINY_CLASSES[0] / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    dataset = data_lib.scan_dataset(root)
    cache = data_lib.cache_dir_for(root)
    first = data_lib.decode_split(dataset.train, 40, cache_dir=cache)
    assert len(first) == 36
    assert str(bad) in first.skipped
    second = data_lib.decode_split(dataset.train, 40, cache_dir=cache)
    assert isinstance(second.images, np.memmap)
    assert np.array_equal(np.asarray(second.images), first.images)
    whole = data_lib.decode_split(dataset.train, 40, cache_dir=cache, squashed_size=32)  # another view: its own key
    assert whole.images.shape == (36, 32, 32, 3) and whole.paths == first.paths
    assert not np.array_equal(np.asarray(whole.images), np.asarray(first.images)[:, 4:36, 4:36])
    (root / "train" / TINY_CLASSES[1] / "train_0000.jpg").unlink()  # content changed: new key
    third = data_lib.decode_split(data_lib.scan_dataset(root).train, 40, cache_dir=cache)
    assert len(third) == 35


def test_whole_photo_views_stay_row_for_row_when_a_photo_is_gone_since_the_split_was_decoded(tiny_dataset, tmp_path):
    """Evaluation reads the whole-photo view of a split decoded earlier (maybe hours, before training): a photo
    deleted since then keeps its row, its view squashed from the decoded square, and nothing fails."""
    from landmark_core.core.transforms import squash
    from landmark_core.runs.config import TrainConfig
    from landmark_core.training.prepare import decode_for_run, decode_whole_photos
    from helpers import tiny_config
    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset, root)
    config = tiny_config(root, familiarity_backbone="efficientnet_lite0", familiarity_view="whole").resolved()
    assert isinstance(config, TrainConfig) and config.resize_size > config.image_size
    split = decode_for_run(config, data_lib.scan_dataset(root).test)
    whole = decode_whole_photos(config, split)
    assert whole.paths == split.paths and whole.images.shape == (len(split), 32, 32, 3)
    gone = 3
    Path(split.paths[gone]).unlink()
    after = decode_whole_photos(config, split)
    assert after.paths == split.paths and np.array_equal(after.labels, split.labels)
    kept = [row for row in range(len(split)) if row != gone]
    np.testing.assert_array_equal(after.images[kept], whole.images[kept])
    from_square = squash(torch.from_numpy(np.asarray(split.images[gone])).permute(2, 0, 1)[None], 32)[0]
    np.testing.assert_array_equal(after.images[gone], from_square.permute(1, 2, 0).numpy())


@pytest.mark.numeric
def test_channel_stats_come_from_the_given_split_only(tiny_dataset):
    dataset = data_lib.scan_dataset(tiny_dataset)
    train = data_lib.decode_split(dataset.train, 24)
    mean, std = data_lib.channel_stats(train)
    expected = np.asarray(train.images, dtype=np.float64).reshape(-1, 3).mean(0) / 255
    assert np.allclose(mean, expected, atol=1e-5)  # float64 sums in chunks vs at once: ~1e-15, 1e-5 is display
    assert all(0 < s < 0.5 for s in std)


def test_batch_loader_epochs_are_reproducible_and_augmentation_varies(tiny_dataset):
    split = data_lib.decode_split(data_lib.scan_dataset(tiny_dataset).train, 37)
    loader = data_lib.BatchLoader(split, batch_size=8, image_size=32, mean=[0.5] * 3, std=[0.25] * 3,
                                  shuffle=True, augment=1.0, seed=3)
    loader.set_epoch(1)
    a = [x for x, _ in loader]
    b = [x for x, _ in loader]
    loader.set_epoch(2)
    c = [x for x, _ in loader]
    assert a[0].shape == (8, 3, 32, 32)
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a, b))
    assert not np.array_equal(a[0].numpy(), c[0].numpy())


def test_zero_strength_augmentation_is_the_center_crop(tiny_dataset):
    split = data_lib.decode_split(data_lib.scan_dataset(tiny_dataset).train[:4], 37)
    batch = torch.from_numpy(np.asarray(split.images)).permute(0, 3, 1, 2).float() / 255
    augmented = data_lib.augment_batch(batch, 32, 0.0, torch.Generator().manual_seed(0))
    cropped = data_lib.crop_flip_batch(torch.from_numpy(np.asarray(split.images)), 32, None).permute(0, 3, 1, 2) / 255
    assert (augmented - cropped).abs().mean() < 0.02  # the centre crop, resampled at most half a pixel off


def test_dataset_report_lists_unreadable_and_duplicates(tiny_dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset, root)
    folder = root / "train" / TINY_CLASSES[0]
    shutil.copy(folder / "train_0000.jpg", folder / "copy.jpg")
    (folder / "notes.txt").write_text("hello")
    (folder / "empty.jpg").write_bytes(b"")
    report = data_lib.dataset_report(data_lib.scan_dataset(root))
    assert {p.split("/")[-1] for p in report["unreadable"]} == {"notes.txt", "empty.jpg"}
    assert any(len(g) == 2 and g[0].endswith(("train_0000.jpg", "copy.jpg")) for g in report["duplicates"])
    sizes = [r for r in report["images"] if r["width"]]
    assert all(r["format"] == "JPEG" for r in sizes)


def _square_batch(tiny_dataset, side=37, count=6):
    split = data_lib.decode_split(data_lib.scan_dataset(tiny_dataset).train[:count], side)
    return torch.from_numpy(np.ascontiguousarray(split.images))


@pytest.mark.numeric
def test_folded_normalisation_equals_normalising_the_augmented_batch(tiny_dataset):
    batch = _square_batch(tiny_dataset).permute(0, 3, 1, 2).float() / 255
    mean, std = [0.45, 0.5, 0.55], [0.2, 0.25, 0.3]
    plain = data_lib.augment_batch(batch, 32, 1.0, torch.Generator().manual_seed(4))
    folded = data_lib.augment_batch(batch, 32, 1.0, torch.Generator().manual_seed(4), normalize=(mean, std))
    expected = (plain - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(folded, expected, atol=1e-5)  # (x - m) / s vs x / s - m / s: ~1e-7 of values ~3
    assert 0 < (plain == 1).float().mean() < 1 or 0 < (plain == 0).float().mean() < 1  # clamping happened somewhere


def test_crop_flip_gives_exact_crops_or_their_mirror_images(tiny_dataset):
    pixels = _square_batch(tiny_dataset)
    out = data_lib.crop_flip_batch(pixels, 32, torch.Generator().manual_seed(0))
    flipped = 0
    for image, crop in zip(pixels, out):
        windows = [image[t:t + 32, l:l + 32] for t in range(6) for l in range(6)]
        straight = any(torch.equal(crop, w) for w in windows)
        mirrored = any(torch.equal(crop.flip(1), w) for w in windows)
        assert straight or mirrored
        flipped += mirrored and not straight
    assert 0 < flipped < len(pixels)  # seed 0 flips some, not all
    assert torch.equal(data_lib.crop_flip_batch(pixels, 32, None), pixels[:, 2:34, 2:34])


@pytest.mark.numeric
@pytest.mark.parametrize("augmentation", data_lib.AUGMENTATIONS)
def test_batches_are_the_normalised_pixels_in_channels_last_layout(tiny_dataset, augmentation):
    split = data_lib.decode_split(data_lib.scan_dataset(tiny_dataset).train[:6], 37)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    evaluation = data_lib.BatchLoader(split, batch_size=6, image_size=32, mean=mean, std=std, channels_last=True,
                                      augmentation=augmentation)
    batch, _ = next(iter(evaluation))
    crop = torch.from_numpy(np.ascontiguousarray(split.images))[:, 2:34, 2:34].permute(0, 3, 1, 2).float() / 255
    expected = (crop - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(batch, expected, atol=1e-5)  # normalisation folded or not: ~1e-7 of values ~3
    training = data_lib.BatchLoader(split, batch_size=6, image_size=32, mean=mean, std=std, channels_last=True,
                                    augmentation=augmentation, augment=1.0, shuffle=True)
    augmented, _ = next(iter(training))
    assert augmented.shape == batch.shape
    assert not torch.allclose(augmented, batch)


def test_unknown_augmentation_is_a_clear_error(tiny_dataset):
    split = data_lib.decode_split(data_lib.scan_dataset(tiny_dataset).train[:2], 37)
    with pytest.raises(DataError, match="augmentation must be one of"):
        data_lib.BatchLoader(split, batch_size=2, image_size=32, mean=[0.5] * 3, std=[0.5] * 3, augmentation="mixup")


@pytest.mark.parametrize("augmentation", data_lib.AUGMENTATIONS)
def test_explore_preview_shows_each_recipe(tiny_dataset, augmentation):
    from landmark_core.reports.explore import augmentation_preview
    from landmark_core.core.images import load_square
    from landmark_core.core.transforms import resize_side_for
    path = data_lib.scan_dataset(tiny_dataset).train[0].path
    views = augmentation_preview(path, strength=1.0, count=4, image_size=32, augmentation=augmentation)
    assert len(views) == 4
    assert all(v.shape == (32, 32, 3) and v.dtype == np.uint8 for v in views)
    assert any(not np.array_equal(views[0], v) for v in views[1:])  # random per view
    if augmentation == "crop_flip":
        square = load_square(path, resize_side_for(32))
        windows = [square[t:t + 32, l:l + 32] for t in range(6) for l in range(6)]
        assert all(any(np.array_equal(v, w) or np.array_equal(v[:, ::-1], w) for w in windows) for v in views)


def test_dataset_report_finds_test_photos_that_are_training_photos(tiny_dataset, tmp_path):
    """Identical files and re-encoded, resized copies across train/test are leaks; other photos of a class are not."""
    from PIL import Image
    root = tmp_path / "leaky"
    shutil.copytree(tiny_dataset, root, ignore=shutil.ignore_patterns(".landmark_cache"))
    name = TINY_CLASSES[0]
    train_photos = sorted((root / "train" / name).iterdir())
    shutil.copy(train_photos[0], root / "test" / name / "identical.jpg")
    with Image.open(train_photos[1]) as photo:  # another format, 80% of the size, slightly brighter
        photo.convert("RGB").resize((photo.width * 4 // 5, photo.height * 4 // 5)).point(lambda v: min(255, v + 8)) \
            .save(root / "test" / name / "reencoded.png")
    report = data_lib.dataset_report(data_lib.scan_dataset(root))
    leaks = {leak["test"].rsplit("/", 1)[-1]: leak for leak in report["leaks"]}
    assert set(leaks) == {"identical.jpg", "reencoded.png"}, report["leaks"]
    assert leaks["identical.jpg"]["kind"] == "identical"
    assert leaks["identical.jpg"]["train"] == str(train_photos[0])
    assert leaks["reencoded.png"]["kind"] == "near-duplicate"
    assert leaks["reencoded.png"]["train"] == str(train_photos[1])
    assert leaks["reencoded.png"]["distance"] <= data_lib.NEAR_DUPLICATE_BITS


def test_leak_search_compares_hashes_bit_by_bit():
    train = [("a.jpg", "sha-a", 0b1011), ("b.jpg", "sha-b", 0xFFFF_0000_FFFF_0000)]
    test = [("same-bytes.jpg", "sha-a", 12345), ("close.png", "sha-x", 0xFFFF_0000_FFFF_003F),  # 6 bits off b
            ("far.png", "sha-y", 0xFFFF_0000_FFFF_007F), ("unhashed.jpg", "sha-z", None)]  # 7 bits off b
    leaks = data_lib.find_leaks(train, test, confirm=None)
    assert [(leak["test"], leak["train"], leak["kind"], leak["distance"]) for leak in leaks] == [
        ("same-bytes.jpg", "a.jpg", "identical", 0), ("close.png", "b.jpg", "near-duplicate", 6)]
    assert [leak["test"] for leak in data_lib.find_leaks(train, test, confirm=lambda a, b: False)] == ["same-bytes.jpg"]


def test_different_pictures_with_close_hashes_are_not_leaks(tmp_path):
    """Two different drawn scenes whose pHashes are 4 bits apart (seen in the demo set): the colours tell them apart."""
    from PIL import Image
    sky = np.linspace(200, 230, 64)[:, None, None].repeat(96, 1).repeat(3, 2)
    dusk = np.stack([np.linspace(60, 200, 64)[:, None].repeat(96, 1), np.full((64, 96), 80.0),
                     np.linspace(140, 60, 64)[:, None].repeat(96, 1)], axis=2)
    Image.fromarray(sky.astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(dusk.astype(np.uint8)).save(tmp_path / "b.png")
    assert not data_lib.look_alike(str(tmp_path / "a.png"), str(tmp_path / "b.png"))
    assert data_lib.look_alike(str(tmp_path / "a.png"), str(tmp_path / "a.png"))
