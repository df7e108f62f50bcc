"""Cleaning a dataset with a trained run: suspects by loss on their own label, moves that never delete, undo."""
import math
import shutil

import pytest

from landmark_core.curation.cleaning import EXCLUDED, move_photo, moves, suspect_photos, undo_last_move
from landmark_core.data import scan_dataset
from landmark_core.core.errors import DataError
from landmark_core.pipeline import train_new

from helpers import tiny_config


@pytest.fixture()
def own_dataset(tiny_dataset, tmp_path):
    root = tmp_path / "photos"
    shutil.copytree(tiny_dataset, root)
    return root


def test_suspects_are_training_photos_ranked_by_loss_on_their_own_label(own_dataset, artifacts):
    classes = sorted(p for p in (own_dataset / "train").iterdir() if p.is_dir())
    planted = classes[1] / "planted-from-another-class.jpg"  # a photo of the first class, filed under the second
    shutil.copy(next(classes[0].glob("*.jpg")), planted)
    run_dir = train_new(tiny_config(own_dataset, epochs=2), artifacts)
    suspects = suspect_photos(run_dir, limit=5)
    training = {s.path for s in scan_dataset(own_dataset).train}
    assert 1 <= len(suspects) <= 5
    assert all(row["path"] in training for row in suspects)
    # a photo the model calls its own class is no sign of a wrong label, however high its loss (issue 24, item 10)
    assert all(row["predicted"] != row["label"] for row in suspects)
    assert [row["loss"] for row in suspects] == sorted((row["loss"] for row in suspects), reverse=True)
    for row in suspects:
        assert row["loss"] == pytest.approx(-math.log(row["probability"]), rel=1e-5)
        assert row["label"] in scan_dataset(own_dataset).classes
        assert 0 <= row["predicted_probability"] <= 1


def test_moves_never_delete_and_undo_puts_photos_back(own_dataset):
    dataset = scan_dataset(own_dataset)
    first, second = dataset.train[0].path, dataset.train[1].path
    other_class = next(c for c in dataset.classes if c not in first)
    moved = move_photo(own_dataset, first, other_class)
    assert moved.parent.name == other_class
    assert moved.exists()
    assert not (own_dataset / first).exists()
    excluded = move_photo(own_dataset, second, None)  # out of the dataset: kept under _excluded/
    assert EXCLUDED in excluded.parts
    assert excluded.exists()
    rescanned = scan_dataset(own_dataset)
    assert len(rescanned.train) == len(dataset.train) - 1
    assert str(excluded) not in {s.path for s in rescanned.train}
    assert len(moves(own_dataset)) == 2
    assert undo_last_move(own_dataset)["to"].startswith(EXCLUDED)
    assert undo_last_move(own_dataset) is not None
    assert sorted(s.path for s in scan_dataset(own_dataset).train) == sorted(s.path for s in dataset.train)
    assert undo_last_move(own_dataset) is None
    assert moves(own_dataset) == []


def test_moves_refuse_foreign_files_and_unknown_classes_and_never_overwrite(own_dataset, tmp_path):
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(b"x")
    with pytest.raises(DataError, match="not a photo of the dataset"):
        move_photo(own_dataset, outside, None)
    photo = scan_dataset(own_dataset).train[0].path
    for bad in ("no_such_class", "_excluded", "../train"):
        with pytest.raises(DataError):
            move_photo(own_dataset, photo, bad)
    first = move_photo(own_dataset, photo, None)
    shutil.copy(first, photo)  # the same name turns up again and is moved out too
    second = move_photo(own_dataset, photo, None)
    assert first.exists()
    assert second.exists()
    assert first != second
