"""ONNX: the graph (with an antialiased resize of its own), the ONNX Runtime adapter and the int8
quantised variant with its acceptance check."""
import warnings
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
import torch.nn as nn

from ..core.errors import ImageError, ModelError
from ..core.images import load_model_input, same_shape_batches
from ..runs.run import Run
from ..scoring.openset import tag_outcomes
from .module import ExportedClassifier

#: An int8 export is accepted only if, on the run's test photos, it keeps top-1 within half a point of the fp32
#: model's and takes the same tag decision (tagged / unknown / abstained) on 99% of them (issue 26's bound).
INT8_TOP1_POINTS, INT8_DECISION_AGREEMENT = 0.5, 0.99
#: Training photos that calibrate the int8 activations' ranges.
INT8_CALIBRATION_PHOTOS = 128


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


def write_onnx(wrapper: ExportedClassifier, path: Path) -> list:
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


def decoded_photos(paths: list[str], wrapper: ExportedClassifier) -> list[np.ndarray]:
    """Photos as the exported model's input: uint8 (3, H, W) at its resize size, centre squares or whole photos
    as the model is fed (unreadable ones left out)."""
    photos = []
    for path in paths:
        try:
            photos.append(load_model_input(path, wrapper.resize_size, wrapper.interpolation,
                                           wrapper.familiarity_whole_photo).transpose(2, 0, 1))
        except (ImageError, OSError):
            continue
    return photos


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


def write_int8(run_dir: Path, wrapper: ExportedClassifier, path: Path, refuse: bool = True) -> dict:
    """Static post-training quantisation of the ONNX export (QDQ, int8 per-channel weights, uint8 activations
    calibrated on the run's training photos). Only the convolutions: the familiarity's cosine similarities against
    the feature bank stay in fp32. Refused (ModelError) unless it keeps the bound on the run's test photos."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    run = Run(run_dir)
    fp32 = path.with_name(path.name + ".fp32")
    try:
        reference = write_onnx(wrapper, fp32)[0]
        calibration = decoded_photos(run.split.get("train", [])[:INT8_CALIBRATION_PHOTOS], wrapper)
        tested = [(p["path"], p["true"]) for p in run.predictions]
        test_photos = decoded_photos([p for p, _ in tested], wrapper)
        if not calibration or len(test_photos) != len(tested) or not tested:
            raise ModelError(f"{run_dir.name}: an int8 export needs the run's training and test photos on this "
                             "machine (to calibrate it and to check it); the current export stays")

        class Photos(CalibrationDataReader):
            def __init__(self):
                self.batches = iter(np.stack([calibration[i] for i in batch])
                                    for batch in same_shape_batches(calibration, 8))

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
