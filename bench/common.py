"""Shared bench helpers: timing, tables, machine description and the datasets benchmarks run on."""
from __future__ import annotations

import io
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *values) -> None:
        self.rows.append(list(values))

    def markdown(self) -> str:
        def cell(value):
            if isinstance(value, float):
                return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
            return str(value)
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "| " + " | ".join("---" for _ in self.columns) + " |"]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return statistics.median(ordered), p95


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {device}, "
            f"Python {platform.python_version()}")


def matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9


def int8_matmul_gops(size: int = 2048, repeats: int = 5) -> float:
    """int8 x int8 -> int32 matrix multiplies (torch._int_mm: the instructions int8 convolutions use, VNNI where the
    CPU has them), in GOP/s."""
    a, b = (torch.randint(-128, 127, (size, size), dtype=torch.int8) for _ in range(2))
    torch._int_mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch._int_mm(a, b)
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9


def photo_dataset(root: Path, count: int, classes: int = 6, seed: int = 0, first_class: int = 0) -> Path:
    """Photo-sized JPEGs (800x600 to 1600x1200) made from demo scenes plus sensor-like noise, in train/ layout."""
    from landmark_core.core.scenes import DEMO_CLASSES
    from landmark_core.core.demo import SceneSpec, render_scene

    marker = root / ".complete"
    if marker.exists():
        return root
    rng = np.random.default_rng(seed)
    sizes = [(800, 600), (1024, 768), (1280, 960), (1600, 1200), (1200, 1600)]
    for i in range(count):
        name = DEMO_CLASSES[first_class + i % classes]
        scene = render_scene(SceneSpec(name, seed, "train", i))
        size = sizes[int(rng.integers(len(sizes)))]
        big = np.asarray(scene.resize(size, Image.BICUBIC), dtype=np.float32)
        big += rng.normal(0, 6, big.shape)
        folder = root / "train" / name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg", quality=90)
    marker.touch()
    return root


def demo_dataset(root: Path, per_class: int, test_per_class: int, classes: int | None = None) -> Path:
    from landmark_core.core.scenes import DEMO_CLASSES
    from landmark_core.core.demo import generate_demo_dataset, is_complete_demo
    if not is_complete_demo(root):
        generate_demo_dataset(root, train_per_class=per_class, test_per_class=test_per_class,
                              classes=DEMO_CLASSES[:classes] if classes else None)
    return root


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
