"""Grad-CAM explanations (captum) for every registered model, from the library and the CLI."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from captum.attr import LayerGradCam
from PIL import Image

from landmark_core.evaluation.explain import Explainer, last_spatial_layer
from landmark_core.models.registry import build_model, list_models
from landmark_core.runs.run import Run


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_a_spatial_layer_whose_grad_cam_depends_on_the_class(name):
    torch.manual_seed(0)
    model = build_model(name, 4, pretrained=False).eval()
    layer = last_spatial_layer(model, 64)
    inputs = torch.randn(1, 3, 64, 64, requires_grad=True)
    with torch.no_grad():
        feature_map = []
        hook = layer.register_forward_hook(lambda m, i, o: feature_map.append(o))
        model(inputs)
        hook.remove()
    assert feature_map[0].shape[-1] > 1  # a map, not the pooled vector
    grad_cam = LayerGradCam(model, layer)
    maps = [grad_cam.attribute(inputs, target=k).detach() for k in range(4)]
    assert all(m.shape[-2:] == feature_map[0].shape[-2:] for m in maps)
    assert any(not torch.allclose(maps[0], other) for other in maps[1:])  # the explanation is of a class


def test_explainer_heatmap_lines_up_with_the_crop_and_targets_any_class(trained_run):
    explainer = Explainer(trained_run)
    photo = Run(trained_run).split["test"][0]
    top = explainer.explain(photo)
    size = explainer.config.image_size
    assert top.photo.size == (size, size)
    assert top.heatmap.shape == (size, size)
    assert 0.0 <= top.heatmap.min()
    assert top.heatmap.max() <= 1.0
    assert top.class_name == explainer.classes[top.class_index]
    assert 0 < top.probability <= 1
    other = explainer.explain(photo, target=(top.class_index + 1) % len(explainer.classes))
    assert other.class_index != top.class_index
    assert other.probability <= top.probability
    by_name = explainer.explain(photo, target=explainer.classes[0])
    assert by_name.class_index == 0
    overlay = top.overlay()
    assert overlay.size == (size, size)
    assert overlay.mode == "RGB"
    assert np.asarray(overlay).std() > 0


def test_explain_cli_writes_the_heatmap(trained_run, tmp_path):
    photo = Run(trained_run).split["test"][0]
    out = tmp_path / "maps" / "heatmap.png"
    done = subprocess.run([sys.executable, "-m", "landmark_core", "explain", str(trained_run), photo, "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Grad-CAM of" in done.stderr
    with Image.open(out) as image:
        assert image.size[0] == image.size[1] > 0
    bad = subprocess.run([sys.executable, "-m", "landmark_core", "explain", str(trained_run), str(tmp_path / "none.jpg")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1
