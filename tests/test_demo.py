from pathlib import Path

import numpy as np

from landmark_core.demo import (ARCHETYPES, DEMO_CLASSES, UNKNOWN_ARCHETYPES, SceneSpec, generate_demo_dataset,
                                render_scene)

REAL_CLASSES = Path(__file__).resolve().parents[1].parent / "shared" / "landmark_images_classes.txt"


def test_demo_classes_are_real_landmark_images_folders():
    from landmark_core.places import all_places
    real = {p.folder for p in all_places()}
    assert len(DEMO_CLASSES) >= 10 and set(DEMO_CLASSES) <= real and set(ARCHETYPES) == set(DEMO_CLASSES)
    if REAL_CLASSES.exists():
        assert set(DEMO_CLASSES) <= set(REAL_CLASSES.read_text().split())


def test_render_is_deterministic_and_varied():
    a = np.asarray(render_scene(SceneSpec("16.Eiffel_Tower", 0, "train", 1)))
    b = np.asarray(render_scene(SceneSpec("16.Eiffel_Tower", 0, "train", 1)))
    c = np.asarray(render_scene(SceneSpec("16.Eiffel_Tower", 0, "train", 2)))
    assert np.array_equal(a, b)
    assert a.shape != c.shape or np.abs(a.astype(int) - c.astype(int)).mean() > 10


def test_generated_layout_and_bytes_are_reproducible(tmp_path):
    kwargs = dict(classes=DEMO_CLASSES[:2], train_per_class=3, test_per_class=2, unknown_per_archetype=2, workers=1)
    generate_demo_dataset(tmp_path / "a", **kwargs)
    generate_demo_dataset(tmp_path / "b", **kwargs)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert len(files) == 2 * (3 + 2) + 2 * len(UNKNOWN_ARCHETYPES)
    assert {f.parts[0] for f in files} == {"train", "test", "unknown"}
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / "DEMO.json").exists()
