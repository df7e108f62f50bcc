"""Shared fixtures: a tiny real demo dataset on disk and a tiny trained run, built once per session."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from landmark_core.core.scenes import DEMO_CLASSES
from landmark_core.core.demo import generate_demo_dataset
from helpers import NEW_CLASS, TINY_CLASSES, noise_image, tiny_config

# Decoded-image caches and the signing key of the test session live in a temporary folder, not the user's
# (set at import, before any fixture trains or exports, and inherited by every subprocess).
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="landmark-tests-"))
os.environ["LANDMARK_CACHE"] = str(_SESSION_HOME / "cache")
os.environ["LANDMARK_KEY"] = str(_SESSION_HOME / "signing_key")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "tiny"
    generate_demo_dataset(root, classes=TINY_CLASSES, train_per_class=12, test_per_class=4, workers=1)
    return root


@pytest.fixture()
def artifacts(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "artifacts"
    monkeypatch.setenv("LANDMARK_ARTIFACTS", str(path))
    return path


@pytest.fixture(scope="session")
def trained_run(tiny_dataset, tmp_path_factory) -> Path:
    """A finished, evaluated and exported tiny run (shared read-only by many tests)."""
    from landmark_core.pipeline import train_new
    artifacts = tmp_path_factory.mktemp("artifacts")
    return train_new(tiny_config(tiny_dataset), artifacts)


@pytest.fixture(scope="session")
def ui_artifacts(tmp_path_factory) -> Path:
    """An artifacts folder as the app sees it: demo data (5 classes) and one finished run."""
    from landmark_core.pipeline import train_new
    artifacts = tmp_path_factory.mktemp("ui") / "artifacts"
    generate_demo_dataset(artifacts / "data" / "demo", classes=DEMO_CLASSES[:5], train_per_class=8, test_per_class=3, workers=1)
    train_new(tiny_config(artifacts / "data" / "demo", epochs=1), artifacts)
    return artifacts


@pytest.fixture(scope="session")
def fifty_class_artifacts(tmp_path_factory):
    """A real 50-class dataset (drawn colour fields) and a tiny run trained on it."""
    from landmark_core.pipeline import train_new
    artifacts = tmp_path_factory.mktemp("fifty") / "artifacts"
    root = artifacts / "data" / "fifty"
    rng = np.random.default_rng(0)
    for k in range(50):
        colour = rng.integers(0, 256, 3)
        for split, count in (("train", 4), ("test", 1)):
            # every fifth name is longer than an axis label's 28 characters: shortened, still one per class
            folder = root / split / (f"{k:02d}.Landmark_number_{k}" + ("_with_a_much_longer_name" if k % 5 == 0 else ""))
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(colour + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}_{i}.jpg")
    train_new(tiny_config(root, epochs=1, val_fraction=0.25), artifacts)
    return artifacts


@pytest.fixture()
def finished_copy(trained_run, tmp_path):
    """A private copy of the shared finished run, in an artifacts folder of its own (exported there)."""
    run = tmp_path / "artifacts" / "runs" / trained_run.name
    shutil.copytree(trained_run, run)  # a copy stays trusted: the signing key is the user's, not the folder's
    return run


@pytest.fixture(scope="session")
def new_landmark_photos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("new-landmark")
    generate_demo_dataset(root, classes=[NEW_CLASS], train_per_class=3, test_per_class=1, workers=1)
    return sorted((root / "train" / NEW_CLASS).glob("*.jpg"))


@pytest.fixture()
def teachable(tiny_dataset, new_landmark_photos, tmp_path):
    """A run on a private copy of the tiny dataset, and a library: test photos of its classes, three photos of
    a landmark it does not know and a photo of no landmark."""
    from landmark_core.pipeline import train_new
    data = shutil.copytree(tiny_dataset, tmp_path / "data")
    run = train_new(tiny_config(data, epochs=1), tmp_path / "artifacts")
    library = tmp_path / "library"
    library.mkdir()
    for photo in sorted((data / "test").rglob("*.jpg"))[::3]:
        shutil.copy(photo, library / f"{photo.parent.name}-{photo.name}")
    for photo in new_landmark_photos:
        shutil.copy(photo, library / f"new-{photo.name}")
    noise_image((80, 60), seed=3).save(library / "noise.jpg")
    return run, data, library


@pytest.fixture()
def dataset_without_places(tiny_dataset, tmp_path):
    """The tiny dataset with two classes no built-in place knows."""
    data = shutil.copytree(tiny_dataset, tmp_path / "data")
    for name in ("Old_Town_Bridge", "Rose_Red_City"):
        shutil.copytree(next((data / "train").iterdir()), data / "train" / name)
    return data
