"""Shared fixtures: a tiny real demo dataset on disk and a tiny trained run, built once per session."""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from landmark_core.core.scenes import DEMO_CLASSES
from landmark_core.core.demo import generate_demo_dataset

# Decoded-image caches and the signing key of the test session live in a temporary folder, not the user's
# (set at import, before any fixture trains or exports, and inherited by every subprocess).
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="landmark-tests-"))
os.environ["LANDMARK_CACHE"] = str(_SESSION_HOME / "cache")
os.environ["LANDMARK_KEY"] = str(_SESSION_HOME / "signing_key")

TINY_CLASSES = DEMO_CLASSES[:3]
TINY_MODEL = {"width": 8, "depth": 2}


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


def tiny_config(data: Path, **overrides):
    from landmark_core.runs.config import TrainConfig
    values = dict(data=str(data), model="scratch_cnn", image_size=32, batch_size=8, epochs=2, lr=3e-3,
                  model_options=dict(TINY_MODEL), log_every=1, device="cpu")
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def trained_run(tiny_dataset, tmp_path_factory) -> Path:
    """A finished, evaluated and exported tiny run (shared read-only by many tests)."""
    from landmark_core.pipeline import train_new
    artifacts = tmp_path_factory.mktemp("artifacts")
    return train_new(tiny_config(tiny_dataset), artifacts)


def jpeg_bytes(size=(64, 48), color=(200, 30, 30), **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", **save_args)
    return buffer.getvalue()


def pillow_resize_crop(image: Image.Image, resize: int, crop: int) -> Image.Image:
    """The classic per-image reference: Pillow bilinear resize of the short side, then a centre crop."""
    width, height = image.size
    scale = resize / min(width, height)
    image = image.resize((max(resize, round(width * scale)), max(resize, round(height * scale))), Image.BILINEAR,
                         reducing_gap=None)
    left, top = (image.size[0] - crop) // 2, (image.size[1] - crop) // 2
    return image.crop((left, top, left + crop, top + crop))


def noise_image(size=(64, 48), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


#: Kinds of drawn image that show no place: what a photo library holds besides photos (scans, screenshots...).
DRAWN_KINDS = ("document", "chart", "screenshot", "floor plan", "poster")


def drawn_image(kind: str, seed: int = 0, size=(640, 480)) -> Image.Image:
    """A drawn image of one of :data:`DRAWN_KINDS`: none is a photograph of a place, so none should get a tag."""
    from PIL import ImageDraw, ImageFont
    rng = np.random.default_rng(seed)
    width, height = size
    paper = tuple(int(v) for v in rng.integers(235, 256, 3))
    image = Image.new("RGB", size, paper)
    draw = ImageDraw.Draw(image)
    ink = tuple(int(v) for v in rng.integers(0, 60, 3))
    font = ImageFont.load_default(size=int(rng.integers(14, 22)))  # Pillow's bundled font: nothing downloaded
    words = ["Invoice", "Total", "Meeting", "notes", "Q3", "budget", "Page", "Summary", "Report", "item"]
    def text_lines(top: int, left: int, right: int, step: int) -> None:
        for y in range(top, height - 30, step):
            line = " ".join(rng.choice(words, int(rng.integers(3, 9))))
            draw.text((left, y), line, fill=ink, font=font)
            if rng.random() < 0.3:
                draw.line((left, y + step - 6, int(rng.integers(left + 100, right)), y + step - 6), fill=ink)
    if kind == "document":
        draw.text((40, 24), str(rng.choice(words)).upper(), fill=ink, font=ImageFont.load_default(size=36))
        text_lines(90, 40, width - 40, int(rng.integers(22, 32)))
    elif kind == "chart":
        draw.line((60, height - 50, width - 30, height - 50), fill=ink, width=2)
        draw.line((60, 30, 60, height - 50), fill=ink, width=2)
        bars = int(rng.integers(4, 10))
        for index in range(bars):
            left = 70 + index * (width - 110) // bars
            top = int(rng.integers(60, height - 80))
            colour = tuple(int(v) for v in rng.integers(30, 220, 3))
            draw.rectangle((left, top, left + (width - 110) // bars - 12, height - 51), fill=colour)
            draw.text((left, height - 42), f"{2019 + index}", fill=ink, font=font)
    elif kind == "screenshot":
        chrome = tuple(int(v) for v in rng.integers(40, 90, 3))
        draw.rectangle((0, 0, width, 44), fill=chrome)
        for index in range(3):
            draw.ellipse((12 + 22 * index, 14, 28 + 22 * index, 30), fill=(230, 80 + 60 * index, 70))
        draw.rectangle((0, 44, 160, height), fill=tuple(max(0, v - 20) for v in paper))
        for y in range(64, height - 20, 34):
            draw.text((16, y), str(rng.choice(words)), fill=ink, font=font)
        for y in range(64, height - 60, 70):
            draw.rounded_rectangle((180, y, width - 20, y + 56), radius=8, outline=ink)
            draw.text((196, y + 18), " ".join(rng.choice(words, 4)), fill=ink, font=font)
    elif kind == "floor plan":
        for _ in range(int(rng.integers(5, 10))):
            x0, y0 = int(rng.integers(20, width - 200)), int(rng.integers(20, height - 150))
            draw.rectangle((x0, y0, x0 + int(rng.integers(80, 200)), y0 + int(rng.integers(60, 150))),
                           outline=ink, width=4)
        draw.text((width - 160, height - 40), "PLAN 1:100", fill=ink, font=font)
    elif kind == "poster":
        background = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.rectangle((0, 0, width, height), fill=background)
        for _ in range(int(rng.integers(2, 5))):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            x, y, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(40, 160))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        contrast = tuple(255 - v for v in background)
        draw.text((40, 40), "SUMMER SALE" if seed % 2 else "LIVE MUSIC", fill=contrast,
                  font=ImageFont.load_default(size=64))
        draw.text((40, height - 80), "Saturday 8 pm  -  tickets at the door", fill=contrast,
                  font=ImageFont.load_default(size=26))
    else:
        raise ValueError(f"no drawn image of kind {kind!r}")
    return image


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
