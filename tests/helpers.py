"""Helpers the tests share: tiny configs, drawn images, the CLI in-process, tag readers. Fixtures live in
conftest.py."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from landmark_core.cli import main
from landmark_core.core.errors import TrainingCancelled
from landmark_core.core.scenes import DEMO_CLASSES
from landmark_core.training.events import Callback


TINY_CLASSES = DEMO_CLASSES[:3]

TINY_MODEL = {"width": 8, "depth": 2}


def tiny_config(data: Path, **overrides):
    from landmark_core.runs.config import TrainConfig
    values = dict(data=str(data), model="scratch_cnn", image_size=32, batch_size=8, epochs=2, lr=3e-3,
                  model_options=dict(TINY_MODEL), log_every=1, device="cpu")
    values.update(overrides)
    return TrainConfig(**values)


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def landmark(*args, cwd=None, artifacts=None):
    """`landmark ARGS` as the console script runs it (``cli.main``), in this process to spare a torch import per
    call: (exit code, stdout, stderr) as a CompletedProcess."""
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = os.environ.get("LANDMARK_ARTIFACTS"), os.getcwd()
    try:
        if artifacts is not None:
            os.environ["LANDMARK_ARTIFACTS"] = str(artifacts)
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        os.chdir(saved_cwd)
        if saved_env is None:
            os.environ.pop("LANDMARK_ARTIFACTS", None)
        else:
            os.environ["LANDMARK_ARTIFACTS"] = saved_env
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return lines[0]

USER_SIDECAR = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                b'<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
                b'xmlns:dc="http://purl.org/dc/elements/1.1/" xmp:Rating="3"><dc:subject><rdf:Bag>'
                b'<rdf:li>Holiday</rdf:li><rdf:li>Family</rdf:li></rdf:Bag></dc:subject></rdf:Description>'
                b'</rdf:RDF></x:xmpmeta>')


def reader(name: str) -> str:
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed (.ci/run installs it)")
    return name


def exiftool(path: Path) -> dict:
    out = subprocess.run([reader("exiftool"), "-json", "-G1", "-n", str(path)], capture_output=True, check=True)
    return json.loads(out.stdout)[0]

NEW_CLASS = DEMO_CLASSES[3]  # 18.Delicate_Arch: a landmark the tiny run never saw

EVERYTHING = dict(threshold=0.0, open_set=False)  # the tiny model tags every photo: a review has tags to judge


def tagged_report(run: Path, library: Path, tmp_path: Path, **where) -> Path:
    from landmark_core.tagging.batch import tag_files
    from landmark_core.tagging.predict import Predictor
    where = {"out_dir": None, **where} if where else {"out_dir": tmp_path / "out"}
    report = tmp_path / "report" / "tag-report.csv"
    tag_files(Predictor(run), [library], report_path=report, **EVERYTHING, **where)
    return report


def kilometres(a, b) -> float:
    import math
    (lat1, lon1), (lat2, lon2) = (map(math.radians, point) for point in (a, b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371 * math.asin(math.sqrt(h))


class CancelAt(Callback):
    def __init__(self, epoch, batch=None):
        self.epoch, self.batch = epoch, batch

    def on_batch_end(self, engine):
        if self.batch is not None and engine.epoch + 1 == self.epoch and engine.batch == self.batch:
            raise TrainingCancelled("test cancel mid-epoch")

    def on_epoch_end(self, engine):
        if self.batch is None and engine.epoch == self.epoch:
            raise TrainingCancelled("test cancel at epoch end")
