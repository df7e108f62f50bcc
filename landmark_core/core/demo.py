"""Procedural demo dataset: photo-like scenes of twelve real landmark classes.

The product must work offline and on first launch, so it ships a generator
rather than photos. Each class is an *archetype* (a lattice tower, a stone
circle, a suspension bridge, ...) drawn in landmark-local coordinates and then
placed in a randomised scene: sky and time of day, horizon, ground or water,
viewpoint (horizontal squash and shear), scale and position (sometimes cut by
the frame), distractors in front and behind (trees, people, birds, other
buildings), weather, lighting, blur, sensor noise and JPEG quality. Nuisance
factors are drawn independently of the class, so a model must learn shape, not
colour or background; several archetypes share colours (white: obelisk, dome,
shells) and silhouettes (two bridges, two tall thin towers) on purpose.

Everything is a pure function of ``(seed, class, split, index)``, so the same
seed yields byte-identical files on every machine.
"""
from __future__ import annotations

import io
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .fileio import write_bytes_atomic, write_json_atomic
from .scenes import (ARCHETYPE_ASPECT, ARCHETYPES, DEMO_CLASSES, GROUNDS, SCENE_SIZES, TIMES_OF_DAY, UNKNOWN_ARCHETYPES,
                     Painter, draw_building, draw_person, draw_tree, jittered, vertical_gradient)


@dataclass(frozen=True)
class SceneSpec:
    class_name: str
    seed: int
    split: str
    index: int


def render_scene(spec: SceneSpec) -> Image.Image:
    """Render one demo photo as an RGB image."""
    class_index = (DEMO_CLASSES.index(spec.class_name) if spec.class_name in ARCHETYPES
                   else 100 + list(UNKNOWN_ARCHETYPES).index(spec.class_name))
    rng = np.random.default_rng([spec.seed, class_index, 0 if spec.split == "train" else 1, spec.index])
    width, height = SCENE_SIZES[rng.integers(len(SCENE_SIZES))]
    time_name = rng.choice(list(TIMES_OF_DAY), p=[0.45, 0.2, 0.15, 0.1, 0.1])
    sky_top, sky_bottom, light = TIMES_OF_DAY[time_name]
    light = np.array(light) * rng.uniform(0.8, 1.2) * rng.uniform(0.92, 1.08, 3)
    horizon = int(height * rng.uniform(0.55, 0.85))

    canvas = vertical_gradient(width, height, jittered(rng, sky_top, 15), jittered(rng, sky_bottom, 15))
    ground_name = rng.choice(list(GROUNDS))
    ground = np.array(jittered(rng, GROUNDS[ground_name], 20)) * light
    canvas[horizon:] = vertical_gradient(width, height - horizon, tuple(ground * 0.9), tuple(ground * 1.1))
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)

    if rng.random() < 0.6:  # clouds
        cloud = (235, 235, 240) if time_name != "dusk" else (70, 70, 90)
        for _ in range(int(rng.integers(1, 6))):
            cx, cy = rng.uniform(0, width), rng.uniform(0, horizon * 0.6)
            rx, ry = rng.uniform(15, 60), rng.uniform(5, 15)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=cloud)
    if rng.random() < 0.5:  # distant hills
        xs = np.linspace(0, width, 8)
        ys = horizon - rng.uniform(5, horizon * 0.3, 8)
        hill = tuple(int(c) for c in np.array((110, 125, 140)) * light)
        draw.polygon([(0, horizon)] + list(zip(xs, ys)) + [(width, horizon)], fill=hill)
    if rng.random() < 0.35:  # buildings behind
        for _ in range(int(rng.integers(1, 5))):
            bw, bh = rng.uniform(15, 45), rng.uniform(15, horizon * 0.5)
            draw_building(draw, rng.uniform(-10, width), horizon + 2, bw, bh, rng, light)

    # The landmark: scale, position (may be cut by the frame), viewpoint.
    scale = height * rng.uniform(0.35, 0.85) * ARCHETYPE_ASPECT.get(spec.class_name, 1.0)
    painter = Painter(draw, cx=width * rng.uniform(0.2, 0.8), base_y=horizon + rng.uniform(-2, 0.08 * height),
                      scale=scale, squash=rng.uniform(0.7, 1.3) * rng.choice([-1, 1]),
                      shear=rng.uniform(-0.12, 0.12), light=light)
    draw_landmark = ARCHETYPES.get(spec.class_name) or UNKNOWN_ARCHETYPES.get(spec.class_name)
    if draw_landmark is not None:
        draw_landmark(painter, rng)

    if rng.random() < 0.3:  # birds
        for _ in range(int(rng.integers(1, 6))):
            bx, by, bs = rng.uniform(0, width), rng.uniform(0, horizon * 0.7), rng.uniform(2, 5)
            draw.line([(bx - bs, by - bs / 2), (bx, by), (bx + bs, by - bs / 2)], fill=(30, 30, 30), width=1)
    # Foreground occluders: trees, people, a building edge.
    for _ in range(int(rng.poisson(1.2))):
        draw_tree(draw, rng.uniform(0, width), rng.uniform(horizon, height + 10), height * rng.uniform(0.15, 0.55), rng, light)
    for _ in range(int(rng.poisson(1.0))):
        draw_person(draw, rng.uniform(0, width), rng.uniform(horizon + 5, height), height * rng.uniform(0.08, 0.3), rng, light)
    if rng.random() < 0.15:
        edge = rng.choice([-1, 1])
        bw = width * rng.uniform(0.1, 0.25)
        draw_building(draw, 0 if edge < 0 else width - bw, height, bw, height * rng.uniform(0.5, 1.0), rng, light)

    pixels = np.asarray(image).astype(np.float32)
    weather = rng.random()
    if weather < 0.12:  # fog
        pixels = pixels * (1 - (fog := rng.uniform(0.25, 0.55))) + fog * np.array([200, 202, 205])
    elif weather < 0.2:  # rain streaks or snow
        overlay = Image.new("L", (width, height), 0)
        odraw = ImageDraw.Draw(overlay)
        snow = rng.random() < 0.5
        for _ in range(int(rng.integers(80, 250))):
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            if snow:
                odraw.ellipse([x, y, x + 2, y + 2], fill=220)
            else:
                odraw.line([(x, y), (x - 2, y + 7)], fill=150)
        alpha = np.asarray(overlay, dtype=np.float32)[..., None] / 255.0
        pixels = pixels * (1 - alpha) + 235 * alpha
    contrast = rng.uniform(0.75, 1.25)
    pixels = (pixels - pixels.mean()) * contrast + pixels.mean() + rng.uniform(-20, 20)
    pixels += rng.normal(0, rng.uniform(0, 9), pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.6)))
    return image


def _encode(spec: SceneSpec, quality_seed: int) -> bytes:
    rng = np.random.default_rng([quality_seed, spec.index])
    buffer = io.BytesIO()
    render_scene(spec).save(buffer, format="JPEG", quality=int(rng.integers(45, 95)))
    return buffer.getvalue()


def _render_class(args: tuple[Path, str, int, int, int]) -> int:
    root, class_name, seed, train_per_class, test_per_class = args
    count = 0
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        folder = root / split / class_name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(n):
            spec = SceneSpec(class_name, seed, split, index)
            write_bytes_atomic(folder / f"{split}_{index:04d}.jpg", _encode(spec, seed + 7919))
            count += 1
    return count


def _run_job(job) -> int:
    function, args = job
    return function(args)


def _render_unknown(args: tuple[Path, str, int, int]) -> int:
    root, archetype, seed, count = args
    folder = root / "unknown"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        write_bytes_atomic(folder / f"{archetype}_{index:04d}.jpg",
                           _encode(SceneSpec(archetype, seed, "unknown", index), seed + 7919))
    return count


def generate_demo_dataset(root: str | os.PathLike, *, seed: int = 0, train_per_class: int = 100,
                          test_per_class: int = 25, classes: list[str] | None = None,
                          unknown_per_archetype: int | None = None,
                          workers: int | None = None, progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the demo dataset as ``root/{train,test}/NN.Name/*.jpg`` and return ``root``.

    ``root/unknown/`` gets ``unknown_per_archetype`` photos (default: a fifth of
    a class's photos) of each of :data:`UNKNOWN_ARCHETYPES`: landmarks that are
    no class, and scenes with no landmark, to calibrate and evaluate the
    open-set decision with (half each, see :func:`landmark_core.data.scan_dataset`).

    ``progress(done_classes, total_classes)`` is called as classes finish. A
    marker file is written last, so a half-generated folder is never mistaken
    for a complete one.
    """
    root = Path(root)
    classes = list(classes or DEMO_CLASSES)
    unknown = sorted(set(classes) - set(ARCHETYPES))
    if unknown:
        raise ValueError(f"no demo archetype for {', '.join(unknown)}")
    if unknown_per_archetype is None:
        unknown_per_archetype = max(2, (train_per_class + test_per_class) // 5)
    jobs = [(_render_class, (root, name, seed, train_per_class, test_per_class)) for name in classes]
    jobs += [(_render_unknown, (root, name, seed, unknown_per_archetype)) for name in UNKNOWN_ARCHETYPES
             if unknown_per_archetype > 0]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    done = 0
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(_run_job, jobs):
                done += 1
                if progress:
                    progress(done, len(jobs))
    else:
        for job in jobs:
            _run_job(job)
            done += 1
            if progress:
                progress(done, len(jobs))
    write_json_atomic(root / "DEMO.json", {"seed": seed, "classes": classes, "train_per_class": train_per_class,
                                            "test_per_class": test_per_class, "unknown_archetypes": list(UNKNOWN_ARCHETYPES),
                                            "unknown_per_archetype": unknown_per_archetype})
    return root


def is_complete_demo(root: str | os.PathLike) -> bool:
    return (Path(root) / "DEMO.json").exists()
