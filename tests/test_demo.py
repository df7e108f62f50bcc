import numpy as np

from landmark_core.core.scenes import ARCHETYPES, DEMO_CLASSES, UNKNOWN_ARCHETYPES
from landmark_core.core.demo import SceneSpec, generate_demo_dataset, render_scene


def test_demo_classes_are_real_landmark_images_folders():
    """The bundled gazetteer names the 50 folders of landmark_images (checked against the dataset's listing,
    00.Haleakala_National_Park ... 49.Temple_of_Olympian_Zeus), and every demo class is one of them. (Its other
    places, world-famous landmarks, carry no course number.)"""
    import re

    from landmark_core.geo.places import all_places
    real = [p.folder for p in all_places() if re.match(r"\d+\.", p.folder)]
    assert len(real) == len(set(real)) == 50
    assert [folder.split(".", 1)[0] for folder in real] == [f"{i:02d}" for i in range(50)]
    assert real[0] == "00.Haleakala_National_Park"
    assert real[-1] == "49.Temple_of_Olympian_Zeus"
    assert len(DEMO_CLASSES) >= 10
    assert set(DEMO_CLASSES) <= set(real)
    assert set(ARCHETYPES) == set(DEMO_CLASSES)


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
