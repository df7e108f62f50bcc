"""Export with the preprocessing and class names inside (TorchScript or ONNX), and the trust check on load.

The exported model takes a uint8 image tensor ``(3, H, W)`` of any size (or a
batch ``(N, 3, H, W)``), resizes its short side, centre-crops, normalises and
returns class probabilities and each photo's familiarity. A run's
``export.json`` records the format and the file's SHA-256, signed with this
user's key, and :func:`load_exported` refuses any file whose hash or signature
does not match: TorchScript is code, so only our own files are run.
"""
import hashlib
import hmac
import json
import os
import secrets
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoints import load_feature_bank, load_run_model
from .config import run_preprocessing
from .errors import ModelError, RunError
from .fileio import read_json, sha256_file, write_json_atomic
from .models import familiarity_network, get_spec
from .openset import familiarity, tag_outcomes
from .runs import Run
from .transforms import freeze_scripted, resize_and_centre_crop

#: What a frozen export keeps besides ``forward``: readers of the file use them.
PRESERVED_ATTRIBUTES = ["class_names", "image_size", "resize_size", "interpolation", "temperature", "flip_tta", "preprocess",
                        "classify", "has_feature_bank", "probability_threshold", "familiarity_threshold"]


class ExportedClassifier(nn.Module):
    """uint8 image(s) in, calibrated class probabilities out, with the run's preprocessing inside.

    The resize runs on uint8 with the model's own filter (timm's config says
    bicubic for EfficientNet-Lite), exactly as training decoded its photos;
    ``flip_tta`` averages the features of the photo and its mirror image, and
    ``temperature`` is the softmax temperature fit on the validation split.
    ``classify`` also returns each photo's familiarity (see :mod:`.openset`),
    computed against the ``feature_bank`` of normalised training features that
    evaluation saved, from the model's own backbone, from a separate
    ``familiarity_network`` on the same crop, or from both (a joint check);
    the two default thresholds travel with the model.
    """
    class_names: List[str]

    def __init__(self, model: nn.Module, class_names: List[str], mean, std, image_size: int, resize_size: int,
                 interpolation: str = "bilinear", temperature: float = 1.0, flip_tta: bool = False,
                 feature_bank: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, probability_threshold: float = 0.5,
                 familiarity_threshold: float = -1.0, familiarity_network: Optional[nn.Module] = None,
                 familiarity_mean=None, familiarity_std=None, familiarity_own_dim: int = 0,
                 familiarity_offset: float = 0.0):
        super().__init__()
        self.model = model
        # familiarity from another pretrained network's features (TrainConfig.familiarity_backbone), on the same
        # crop, renormalised from this model's statistics to that network's own
        self.separate_familiarity_backbone = familiarity_network is not None
        self.familiarity_backbone = familiarity_network.backbone if familiarity_network is not None else nn.Identity()
        scale, shift = torch.ones(3), torch.zeros(3)
        if familiarity_network is not None:
            mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
            own_mean = torch.tensor(familiarity_mean, dtype=torch.float32)
            own_std = torch.tensor(familiarity_std, dtype=torch.float32)
            scale, shift = std_t / own_std, (mean_t - own_mean) / own_std
        self.register_buffer("familiarity_scale", scale.view(1, 3, 1, 1))
        self.register_buffer("familiarity_shift", shift.view(1, 3, 1, 1))
        self.class_names = list(class_names)
        self.image_size = image_size
        self.resize_size = resize_size
        self.interpolation = interpolation
        self.temperature = float(temperature)
        self.flip_tta = bool(flip_tta)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        # a joint check (familiarity_own_dim > 0) compares the classifier's features and the other network's, side
        # by side in one bank; the other's score is moved by familiarity_offset onto the first's scale
        self.familiarity_own_dim = int(familiarity_own_dim) if familiarity_network is not None else 0
        self.familiarity_offset = float(familiarity_offset)
        feature_dim = familiarity_network.feature_dim if familiarity_network is not None else model.feature_dim
        feature_dim += self.familiarity_own_dim
        features, labels = feature_bank if feature_bank is not None else (
            torch.zeros(0, feature_dim, dtype=torch.float16), torch.zeros(0, dtype=torch.long))
        self.register_buffer("bank", features.half())
        self.register_buffer("bank_labels", labels.long())
        self.has_feature_bank = len(labels) > 0
        self.probability_threshold = float(probability_threshold)
        self.familiarity_threshold = float(familiarity_threshold) if self.has_feature_bank else -1.0

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        batch = image.unsqueeze(0) if image.dim() == 3 else image
        if batch.dtype == torch.uint8:  # torch's uint8 antialiased kernel: what decoding for training used
            pixels = resize_and_centre_crop(batch.contiguous(memory_format=torch.channels_last), self.resize_size,
                                            self.image_size, self.interpolation).float() / 255.0
        else:
            pixels = resize_and_centre_crop(batch.float() / 255.0, self.resize_size, self.image_size,
                                            self.interpolation)
        return (pixels - self.mean) / self.std

    def _features_and_probabilities(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.model.backbone(inputs).float()
        if self.flip_tta:
            features = (features + self.model.backbone(inputs.flip(-1)).float()) / 2
        logits = self.model.head(features).float()
        return features, F.softmax(logits / self.temperature, dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class probabilities: (C,) for one image, (N, C) for a batch."""
        probs = self._features_and_probabilities(self.preprocess(image))[1]
        return probs[0] if image.dim() == 3 else probs

    @torch.jit.export
    def classify(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(class probabilities, familiarity): familiarity is 1 for every photo when there is no feature bank."""
        inputs = self.preprocess(image)
        features, probs = self._features_and_probabilities(inputs)
        if self.has_feature_bank:
            if self.separate_familiarity_backbone:
                inputs = inputs * self.familiarity_scale + self.familiarity_shift
                others = self.familiarity_backbone(inputs).float()
                if self.flip_tta:
                    others = (others + self.familiarity_backbone(inputs.flip(-1)).float()) / 2
                features = torch.cat([features, others], dim=1) if self.familiarity_own_dim > 0 else others
            scores = familiarity(features, self.bank, self.bank_labels, probs, self.familiarity_own_dim,
                                 self.familiarity_offset)
        else:
            scores = torch.ones(probs.shape[0], device=probs.device)
        if image.dim() == 3:
            return probs[0], scores[0]
        return probs, scores


# --- signing ------------------------------------------------------------------------------------

def signing_key_path() -> Path:
    """This user's signing key: ``$LANDMARK_KEY``, else ``$XDG_CONFIG_HOME/landmark_core/signing_key``, else
    ``~/.config/landmark_core/signing_key``. Never inside a run or artifacts folder, so a folder someone hands you
    cannot bring a key that vouches for its own model files; runs can be renamed and moved freely."""
    configured = os.environ.get("LANDMARK_KEY")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "landmark_core" / "signing_key"


def _signing_key(create: bool) -> Optional[bytes]:
    path = signing_key_path()
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        except FileExistsError:  # another process made it first
            pass
    return path.read_text().strip().encode()


def _signature(key: bytes, meta: dict) -> str:
    """HMAC of everything the prediction depends on: the model file's hash and every other field of export.json."""
    payload = json.dumps({k: v for k, v in meta.items() if k != "signature"}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


# --- export / load ------------------------------------------------------------------------------

def build_exportable(run_dir: Path, checkpoint: str = "best") -> ExportedClassifier:
    """The run's model wrapped with its preprocessing and, once evaluated, its calibration."""
    model, meta = load_run_model(run_dir, checkpoint, "cpu")
    model = model.to(memory_format=torch.channels_last)  # oneDNN's fast convolution layout: ~1.4x batch throughput on CPU
    config = meta["config"]
    preprocessing = run_preprocessing(config)
    calibration = (read_json(run_dir / Run.CALIBRATION, default={}) or {}).get(checkpoint) or {}
    bank = load_feature_bank(run_dir, checkpoint) if "familiarity_threshold" in calibration else None
    return ExportedClassifier(model, meta["classes"], meta["mean"], meta["std"], config.image_size,
                              preprocessing.resize_size, preprocessing.interpolation,
                              float(calibration.get("temperature", 1.0)), bool(config.tta_flip), bank,
                              # evaluated before thresholds were kept per checkpoint: evaluation's own choice
                              float(calibration.get("probability_threshold",
                                                    (read_json(run_dir / Run.EVALUATION, default={}) or {})
                                                    .get("default_threshold", 0.5))),
                              float(calibration.get("familiarity_threshold", -1.0)),
                              *_familiarity_network(config, len(meta["classes"]), bank is not None),
                              familiarity_own_dim=model.feature_dim if config.joint_familiarity else 0,
                              familiarity_offset=float(calibration.get("familiarity_offset", 0.0))).eval()


def _familiarity_network(config, num_classes: int, has_bank: bool) -> tuple:
    """(network, its mean, its std) when the run's familiarity check compares another network's features, else
    nothing; channels-last like the classifier."""
    name = config.separate_familiarity_backbone
    if name is None or not has_bank:
        return ()
    preprocessing = get_spec(name).preprocessing
    network = familiarity_network(name, num_classes).to(memory_format=torch.channels_last)
    return network, preprocessing.mean, preprocessing.std


#: Export formats and the file each writes in the run folder.
FORMATS = {"torchscript": Run.MODEL, "onnx": Run.ONNX_MODEL, "onnx-int8": Run.ONNX_INT8_MODEL}
#: The round trip's tolerance on probe photos already at the model's resize size (what the Predictor, tagging and
#: the service feed, decoded by torch's uint8 kernel: the graph's own resize does nothing), and on photos of other
#: sizes, which the graph resizes itself. ONNX has no uint8 cubic kernel: its float resize, rounded, differs from
#: torch's uint8 one by a level on ~13% of the pixels, which a sharp model (temperature 0.5) turns into up to 4e-2
#: of probability on a photo smaller than its input (efficientnet_lite2 on the 7 wonders; 6.6e-7 at its own size).
#: At other sizes an ONNX export must keep the top class (the next ranks may swap within that gap).
FORMAT_TOLERANCE = {"torchscript": (1e-4, 1e-4), "onnx": (1e-3, 6e-2)}
#: An int8 export is accepted only if, on the run's test photos, it keeps top-1 within half a point of the fp32
#: model's and takes the same tag decision (tagged / unknown / abstained) on 99% of them (issue 26's bound).
INT8_TOP1_POINTS, INT8_DECISION_AGREEMENT = 0.5, 0.99
#: Training photos that calibrate the int8 activations' ranges.
INT8_CALIBRATION_PHOTOS = 128


def export_run(run_dir: Path, checkpoint: str = "best", tolerance: float | None = None,
               format: str = "torchscript", int8_outside_bound: bool = False) -> Path:
    """Write the model in ``format``, load it back, compare it with the eager model, and sign the record.

    Returns the model file's path. ``export.json`` records the format, so :func:`load_exported` (and the
    Predictor) load whichever was exported last. ``int8_outside_bound`` keeps an int8 export that misses the
    accuracy bound (its ``int8_check`` says so): for benchmarks that measure what int8 would give, never a default.
    """
    if format not in FORMATS:
        raise ModelError(f"unknown export format {format!r} (use {' or '.join(FORMATS)})")
    wrapper = build_exportable(run_dir, checkpoint)
    path = run_dir / FORMATS[format]
    # Saved and checked under a temporary name: a refused export leaves the last good model in place.
    candidate = run_dir / f".{path.name}.{os.getpid()}.candidate"
    int8_check = None
    try:
        if format == "onnx-int8":
            # the int8 model differs from the eager one by design: it is judged on the run's own photos instead
            int8_check = _write_int8(run_dir, wrapper, candidate, refuse=not int8_outside_bound)
            max_diff = int8_check["max_probability_change"]
        else:
            reloaded = _write_torchscript(wrapper, candidate) if format == "torchscript" else _write_onnx(wrapper, candidate)
            at_size, resized = FORMAT_TOLERANCE[format] if tolerance is None else (tolerance, tolerance)
            max_diff = _check_round_trip(run_dir, wrapper, reloaded, at_size, resized, strict_ranks=format == "torchscript")
        digest = sha256_file(candidate)
        os.replace(candidate, path)
    finally:
        candidate.unlink(missing_ok=True)
    meta = {
        "format": format, "file": path.name, "sha256": digest, "checkpoint": checkpoint,
        "classes": wrapper.class_names, "image_size": wrapper.image_size, "resize_size": wrapper.resize_size,
        "interpolation": wrapper.interpolation, "temperature": wrapper.temperature, "flip_tta": wrapper.flip_tta,
        "probability_threshold": wrapper.probability_threshold,
        "familiarity_threshold": wrapper.familiarity_threshold if wrapper.has_feature_bank else None,
        "feature_bank_size": int(len(wrapper.bank_labels)),
        "round_trip_max_abs_diff": max_diff, "torch": torch.__version__,
        **({"int8_check": int8_check} if int8_check else {})}
    meta["signature"] = _signature(_signing_key(create=True), meta)
    write_json_atomic(run_dir / Run.EXPORT_META, meta)
    return path


def export_fastest(run_dir: Path, checkpoint: str = "best", photos: int = 64) -> tuple[Path, dict]:
    """Export the run in every format, time each on this machine (the run's test photos, decoded as the Predictor
    decodes them, in batches of 8, best of 3) and keep the fastest that passes its own check (an int8 export only
    within its accuracy bound) as the one the Predictor loads. Returns its path and, per format, photos/s or the
    reason it was left out (also recorded in ``export.json`` as ``speed``)."""
    import time
    run = Run(run_dir)
    squares = [torch.from_numpy(np.ascontiguousarray(square)) for square in
               _decoded([row["path"] for row in run.predictions[:photos]], build_exportable(run_dir, checkpoint))]
    if not squares:
        raise ModelError(f"{run_dir.name}: timing the formats needs the run's test photos on this machine")
    batches = [torch.stack(squares[i:i + 8]) for i in range(0, len(squares), 8)]
    speed, metas = {}, {}
    for format in FORMATS:
        try:
            export_run(run_dir, checkpoint=checkpoint, format=format)
        except ModelError as refused:
            speed[format] = str(refused)
            continue
        metas[format] = read_json(run_dir / Run.EXPORT_META)
        model, _ = load_exported(run_dir)
        with torch.inference_mode():
            for batch in batches:  # warm: TorchScript's profiling executor optimises over the first calls
                model.classify(batch)
            seconds = []
            for _ in range(3):
                started = time.perf_counter()
                for batch in batches:
                    model.classify(batch)
                seconds.append(time.perf_counter() - started)
        speed[format] = len(squares) / min(seconds)
    fastest = max((f for f in metas), key=lambda f: speed[f])
    meta = {**{k: v for k, v in metas[fastest].items() if k != "signature"}, "speed": speed}
    meta["signature"] = _signature(_signing_key(create=True), meta)
    write_json_atomic(run_dir / Run.EXPORT_META, meta)
    return run_dir / FORMATS[fastest], speed


def _write_torchscript(wrapper: ExportedClassifier, path: Path) -> list:
    """Script and freeze, save, load back: the scripted and the reloaded module, to be compared with the eager."""
    scripted = freeze_scripted(wrapper, PRESERVED_ATTRIBUTES)
    scripted.save(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return [scripted, torch.jit.load(str(path), map_location="cpu")]


class _Classify(nn.Module):
    """ONNX graphs have one entry point: ``classify`` as ``forward``."""

    def __init__(self, wrapper: ExportedClassifier):
        super().__init__()
        self.wrapper = wrapper

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.wrapper.classify(image)


def _antialiased_resize_symbolic(mode: str):
    """ONNX Resize (opset 18) with antialiasing for torch's antialiased resize, which the TorchScript-based
    exporter would export without it (a different picture for every photo larger than the input).
    torch's antialiased bicubic is Pillow's, whose cubic coefficient is -0.5."""
    def symbolic(g, image, output_size, align_corners, scale_factors):
        leading = g.op("Slice", g.op("Shape", image), g.op("Constant", value_t=torch.tensor([0])),
                       g.op("Constant", value_t=torch.tensor([2])))
        sizes = g.op("Concat", leading, output_size, axis_i=0)
        empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
        return g.op("Resize", image, empty, empty, sizes, mode_s=mode, antialias_i=1, cubic_coeff_a_f=-0.5,
                    coordinate_transformation_mode_s="half_pixel", exclude_outside_i=0)
    return symbolic


ONNX_OPSET = 18  # the first with antialiased Resize


def _write_onnx(wrapper: ExportedClassifier, path: Path) -> list:
    """Trace ``classify`` into ONNX with dynamic batch and photo size; the ONNX Runtime session, to compare."""
    from torch.onnx import register_custom_op_symbolic
    register_custom_op_symbolic("aten::_upsample_bicubic2d_aa", _antialiased_resize_symbolic("cubic"), ONNX_OPSET)
    register_custom_op_symbolic("aten::_upsample_bilinear2d_aa", _antialiased_resize_symbolic("linear"), ONNX_OPSET)
    example = torch.randint(0, 256, (1, 3, 300, 400), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings(), torch.no_grad():
        # The torch.export-based exporter cannot follow the photo-size arithmetic of the resize (tried: it does
        # not finish); the TorchScript-based one traces it with sizes as tensors (transforms).
        warnings.simplefilter("ignore")
        # eval(): the exporter restores the mode it found, and a new module is in training mode
        torch.onnx.export(_Classify(wrapper).eval(), (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["image"], output_names=["probabilities", "familiarity"],
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "probabilities": {0: "batch"}, "familiarity": {0: "batch"}})
    return [OnnxClassifier(path)]


class OnnxClassifier:
    """An exported ONNX model run by ONNX Runtime, answering like the TorchScript module: uint8 image tensors
    ``(3, H, W)`` or ``(N, 3, H, W)`` in, ``classify`` gives (probabilities, familiarity)."""

    def __init__(self, path: Path, device="cpu"):
        import onnxruntime
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = onnxruntime.InferenceSession(str(path), providers=providers)

    def classify(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        batch = image.unsqueeze(0) if image.dim() == 3 else image
        probabilities, familiarity = (torch.from_numpy(output) for output in
                                      self.session.run(None, {"image": batch.cpu().numpy()}))
        return (probabilities[0], familiarity[0]) if image.dim() == 3 else (probabilities, familiarity)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.classify(image)[0]

    def eval(self) -> "OnnxClassifier":
        return self


def _decoded(paths: list[str], wrapper: ExportedClassifier) -> list[np.ndarray]:
    """Photos as the exported model's input: uint8 (3, H, W) at its resize size (unreadable ones left out)."""
    from .errors import ImageError
    from .images import load_square
    squares = []
    for path in paths:
        try:
            squares.append(load_square(path, wrapper.resize_size, wrapper.interpolation).transpose(2, 0, 1))
        except (ImageError, OSError):
            continue
    return squares


def int8_verdict(reference: tuple[np.ndarray, np.ndarray], quantized: tuple[np.ndarray, np.ndarray],
                 labels: np.ndarray, probability_threshold: float, familiarity_threshold: float | None) -> dict:
    """How an int8 model compares with its fp32 reference on labelled photos, and whether it keeps the bound."""
    photos = len(labels)
    right = [int((outputs[0].argmax(1) == labels).sum()) for outputs in (reference, quantized)]
    decisions = [tag_outcomes(*outputs, probability_threshold, familiarity_threshold) for outputs in (reference, quantized)]
    agreeing = int((decisions[0] == decisions[1]).sum())
    # compared in photo counts: "half a point" of 200 photos is exactly one photo, with no float rounding
    accepted = (abs(right[1] - right[0]) * 100 <= INT8_TOP1_POINTS * photos + 1e-9
                and agreeing >= INT8_DECISION_AGREEMENT * photos - 1e-9)
    return {"photos": photos, "top1_fp32": right[0] / photos, "top1_int8": right[1] / photos,
            "top1_change_points": abs(right[1] - right[0]) * 100 / photos, "decision_agreement": agreeing / photos,
            "max_probability_change": float(np.abs(reference[0] - quantized[0]).max()),
            "max_familiarity_change": float(np.abs(reference[1] - quantized[1]).max()), "accepted": accepted}


def _write_int8(run_dir: Path, wrapper: ExportedClassifier, path: Path, refuse: bool = True) -> dict:
    """Static post-training quantisation of the ONNX export (QDQ, int8 per-channel weights, uint8 activations
    calibrated on the run's training photos). Only the convolutions: the familiarity's cosine similarities against
    the feature bank stay in fp32. Refused (ModelError) unless it keeps the bound on the run's test photos."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    run = Run(run_dir)
    fp32 = path.with_name(path.name + ".fp32")
    try:
        reference = _write_onnx(wrapper, fp32)[0]
        calibration = _decoded(run.split.get("train", [])[:INT8_CALIBRATION_PHOTOS], wrapper)
        tested = [(p["path"], p["true"]) for p in run.predictions]
        test_photos = _decoded([p for p, _ in tested], wrapper)
        if not calibration or len(test_photos) != len(tested) or not tested:
            raise ModelError(f"{run_dir.name}: an int8 export needs the run's training and test photos on this "
                             "machine (to calibrate it and to check it); the current export stays")

        class Photos(CalibrationDataReader):
            def __init__(self):
                self.batches = iter(np.stack(calibration[i:i + 8]) for i in range(0, len(calibration), 8))

            def get_next(self):
                batch = next(self.batches, None)
                return None if batch is None else {"image": batch}

        import logging
        from onnxruntime.quantization.shape_inference import quant_pre_process
        prepared = fp32.with_name(fp32.name + ".prepared")
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # onnxruntime's quantiser logs its advice at WARNING on the root logger
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:  # ONNX Runtime's recommended clean-up (shape inference, folding) before quantising
                    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
                except Exception:
                    prepared = fp32
                quantize_static(str(prepared), str(path), Photos(), quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=["Conv"], per_channel=True, weight_type=QuantType.QInt8,
                                activation_type=QuantType.QUInt8)
        finally:
            root.setLevel(level)
    finally:
        fp32.unlink(missing_ok=True)
        for leftover in path.parent.glob(path.name + ".fp32*"):
            leftover.unlink(missing_ok=True)
    quantized = OnnxClassifier(path)

    def outputs(model) -> tuple[np.ndarray, np.ndarray]:
        results = [model.classify(torch.from_numpy(np.ascontiguousarray(photo))) for photo in test_photos]
        return (torch.stack([p for p, _ in results]).numpy(), torch.stack([f for _, f in results]).numpy())

    verdict = int8_verdict(outputs(reference), outputs(quantized), np.array([label for _, label in tested]),
                           wrapper.probability_threshold,
                           wrapper.familiarity_threshold if wrapper.has_feature_bank else None)
    if refuse and not verdict["accepted"]:
        raise ModelError(
            f"int8 export refused: on {verdict['photos']} test photos top-1 moves by {verdict['top1_change_points']:.1f} "
            f"points (at most {INT8_TOP1_POINTS}) and the tag decision agrees on {verdict['decision_agreement']:.1%} "
            f"(at least {INT8_DECISION_AGREEMENT:.0%}); the current export stays")
    return verdict


#: Probe photos of the round trip: odd sizes, both orientations, one smaller than the input.
_PROBE_SHAPES = ((3, 157, 211), (3, 480, 360), (3, 90, 120))


def _probe_photo(shape, generator: torch.Generator) -> torch.Tensor:
    """A smooth random picture (coarse noise, enlarged): like a photo, unlike pixel noise, it does not turn the
    one-level rounding differences between resize kernels (ONNX Runtime vs torch) into large output changes."""
    coarse = torch.rand(1, shape[0], 6, 8, generator=generator) * 255
    return F.interpolate(coarse, size=list(shape[1:]), mode="bilinear", align_corners=False)[0].round().to(torch.uint8)


def _check_round_trip(run_dir: Path, wrapper: ExportedClassifier, reloaded: list, at_size: float, resized: float,
                      strict_ranks: bool = True) -> float:
    """The eager model and each reloaded one agree on probe photos, with finite outputs: on one at the model's
    resize size within ``at_size`` with the same top-5; on photos of other sizes within ``resized``, with the same
    top-5 (``strict_ranks``) or the same top class. Returns the largest gap."""
    generator = torch.Generator().manual_seed(0)
    max_diff = 0.0
    shapes = [(3, wrapper.resize_size, wrapper.resize_size), *_PROBE_SHAPES]
    for shape in shapes:
        probe = _probe_photo(shape, generator)
        own_size = shape == shapes[0]
        tolerance = at_size if own_size else resized
        with torch.no_grad():
            expected_probs, expected_score = wrapper.classify(probe)
            if not (torch.isfinite(expected_probs).all() and torch.isfinite(expected_score)):
                raise ModelError(f"{run_dir.name}: the model gives non-finite probabilities (its weights hold NaN or "
                                 "inf); nothing was exported")
            for model in reloaded:
                probs, score = model.classify(probe)
                gap = float(max((probs - expected_probs).abs().max(), (score - expected_score).abs().max()))
                max_diff = max(max_diff, gap)
                if own_size or strict_ranks:
                    same_ranks = torch.equal(top_five(probs), top_five(expected_probs)) or gap <= 1e-6
                else:  # the same top class, unless the probe's top two are closer than the gap (a tie to rounding)
                    top_two = torch.topk(expected_probs, min(2, expected_probs.shape[-1])).values
                    tied = len(top_two) > 1 and float(top_two[0] - top_two[1]) <= gap
                    same_ranks = int(probs.argmax()) == int(expected_probs.argmax()) or tied or gap <= 1e-6
                if not gap <= tolerance or not same_ranks:
                    where = "at the model's input size" if own_size else f"on a {shape[2]}x{shape[1]} photo"
                    raise ModelError(f"export round trip differs by {gap:.2e} {where} (tolerance {tolerance:.0e})"
                                     + ("" if same_ranks else " and ranks the classes differently"))
    return max_diff


def top_five(probabilities: torch.Tensor) -> torch.Tensor:
    return torch.topk(probabilities, min(5, probabilities.shape[-1])).indices


def load_exported(run_dir: Path, device="cpu") -> Tuple[object, dict]:
    """Load a run's exported model (TorchScript module or :class:`OnnxClassifier`) after checking it is the file
    this user exported."""
    try:
        meta = read_json(run_dir / Run.EXPORT_META)
    except ValueError:
        raise ModelError(f"{run_dir.name}/{Run.EXPORT_META} is damaged; export the run again: landmark export {run_dir}") from None
    format = meta.get("format", "torchscript") if isinstance(meta, dict) else "torchscript"
    path = run_dir / FORMATS.get(format, Run.MODEL)
    if meta is None or not path.exists():
        raise RunError(f"{run_dir.name} has no exported model yet (run: landmark export {run_dir.name})")
    if not path.is_file():  # a FIFO would hang the hash below, /dev/zero never end it
        raise ModelError(f"{run_dir.name}/{path.name} is not a regular file; refusing to load it. "
                         f"Export the run again: landmark export {run_dir}")
    key = _signing_key(create=False)
    if key is None:
        raise ModelError(f"{run_dir.name} was exported by another user or machine (no signing key at "
                         f"{signing_key_path()}); to trust it here, export it again: landmark export {run_dir}")
    if not isinstance(meta, dict) or format not in FORMATS or sha256_file(path) != meta.get("sha256") \
            or not hmac.compare_digest(_signature(key, meta), str(meta.get("signature", ""))):
        raise ModelError(f"{run_dir.name}/{path.name} or {Run.EXPORT_META} does not match what this app exported "
                         f"(modified, foreign, or exported by an older version); refusing to load it. If you trust "
                         f"the run's checkpoints, export it again: landmark export {run_dir}")
    try:
        if format in ("onnx", "onnx-int8"):
            return OnnxClassifier(path, device), meta
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location=device)
    except Exception as error:
        raise ModelError(f"{run_dir.name}/{path.name} cannot be loaded ({type(error).__name__})") from None
    return module.eval(), meta


_BUNDLE_README = """{name}: an exported landmark classifier ({format}), with its preprocessing inside.

Input: uint8 images, shape (N, 3, H, W), any size (resize, centre crop and normalisation happen inside).
Classes, thresholds and preprocessing: export.json.

{snippet}
"""

#: The tag decision, from a model's probabilities and familiarity and export.json's thresholds, as `landmark tag`
#: takes it for a photo without GPS (the README's ONNX snippet is the ONNX entry with ``RUN/`` paths; tested).
_DECISION = """best = int(probabilities[0].argmax())
if meta["familiarity_threshold"] is not None and familiarity[0] < meta["familiarity_threshold"]:
    outcome = "unknown"    # not like the training photos of any landmark it knows: no tag
elif probabilities[0, best] < meta["probability_threshold"]:
    outcome = "abstained"  # a landmark it knows, but not sure enough which
else:
    outcome = "tagged"
print(meta["classes"][best], outcome)"""
_SNIPPETS = {
    "torchscript": """import json, numpy as np, torch
from PIL import Image, ImageOps
meta = json.load(open("export.json"))
model = torch.jit.load("model.ts").eval()
photo = ImageOps.exif_transpose(Image.open("photo.jpg")).convert("RGB")
probabilities, familiarity = model.classify(torch.from_numpy(np.asarray(photo)).permute(2, 0, 1)[None])
""" + _DECISION,
    "onnx": """import json, numpy as np, onnxruntime
from PIL import Image, ImageOps
meta = json.load(open("export.json"))
session = onnxruntime.InferenceSession("model.onnx")
photo = ImageOps.exif_transpose(Image.open("photo.jpg")).convert("RGB")
probabilities, familiarity = session.run(None, {"image": np.asarray(photo).transpose(2, 0, 1)[None]})
""" + _DECISION,
}


def export_bundle(run_dir: Path) -> bytes:
    """A zip of a run's exported model, its ``export.json`` and a README with the lines that load it."""
    import io
    import zipfile
    run = Run(run_dir)
    meta = run.export_meta
    if not run.exported or meta is None:
        raise RunError(f"{run.id} has no exported model yet: run `landmark export {run.id}`")
    kind = meta.get("format", "torchscript")
    model_file = run.file(Run.ONNX_MODEL if kind == "onnx" else Run.MODEL)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(model_file, model_file.name)
        archive.write(run.file(Run.EXPORT_META), Run.EXPORT_META)
        archive.writestr("README.txt", _BUNDLE_README.format(name=run.id, format=kind, snippet=_SNIPPETS[kind]))
    return buffer.getvalue()
