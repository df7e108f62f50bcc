"""Export with the preprocessing and class names inside (TorchScript or ONNX), and the trust check on load.

The exported model takes a uint8 image tensor ``(3, H, W)`` of any size (or a
batch ``(N, 3, H, W)``), resizes its short side, centre-crops, normalises and
returns class probabilities and each photo's familiarity. A run's
``export.json`` records the format and the file's SHA-256, signed with this
user's key, and :func:`load_exported` refuses any file whose hash or signature
does not match: TorchScript is code, so only our own files are run.
"""
import hmac
import os
import warnings
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

from ..core.errors import ModelError, RunError
from ..core.fileio import read_json, sha256_file
from ..core.images import same_shape_batches
from ..core.transforms import freeze_scripted
from ..runs.run import Run
from ..scoring.openset import DISTRACTOR, bank_digest
from .check import check_round_trip
from .module import PRESERVED_ATTRIBUTES, ExportedClassifier, build_exportable
from .onnx import OnnxClassifier, decoded_photos, write_int8, write_onnx
from .signing import signature, signing_key, signing_key_path

#: Export formats and the file each writes in the run folder.
FORMATS = Run.EXPORT_FILES
#: The round trip's tolerance on probe photos already at the model's resize size (what the Predictor, tagging and
#: the service feed, decoded by torch's uint8 kernel: the graph's own resize does nothing), and on photos of other
#: sizes, which the graph resizes itself. ONNX has no uint8 cubic kernel: its float resize, rounded, differs from
#: torch's uint8 one by a level on ~13% of the pixels, which a sharp model (temperature 0.5) turns into up to 4e-2
#: of probability on a photo smaller than its input (efficientnet_lite2 on the 7 wonders; 6.6e-7 at its own size).
#: At other sizes an ONNX export must keep the top class (the next ranks may swap within that gap).
FORMAT_TOLERANCE = {"torchscript": (1e-4, 1e-4), "onnx": (1e-3, 6e-2)}


def export_run(run_dir: Path, checkpoint: str = "best", tolerance: float | None = None,
               format: str = "torchscript", int8_outside_bound: bool = False) -> Path:
    """Write the model in ``format``, load it back, compare it with the eager model, and sign the record.

    Returns the model file's path. ``export.json`` records the format, so :func:`load_exported` (and the
    Predictor) load whichever was exported last. ``int8_outside_bound`` keeps an int8 export that misses the
    accuracy bound (its ``int8_check`` says so): for benchmarks that measure what int8 would give, never a default.
    """
    if format not in FORMATS:
        raise ModelError(f"unknown export format {format!r} (use {' or '.join(FORMATS)})")
    run = Run.of(run_dir)
    wrapper = build_exportable(run, checkpoint)
    path = run.model_file(format)
    # Saved and checked under a temporary name: a refused export leaves the last good model in place.
    candidate = path.with_name(f".{path.name}.{os.getpid()}.candidate")
    int8_check = None
    try:
        if format == "onnx-int8":
            # the int8 model differs from the eager one by design: it is judged on the run's own photos instead
            int8_check = write_int8(run_dir, wrapper, candidate, refuse=not int8_outside_bound)
            max_diff = int8_check["max_probability_change"]
        else:
            reloaded = _write_torchscript(wrapper, candidate) if format == "torchscript" else write_onnx(wrapper, candidate)
            at_size, resized = FORMAT_TOLERANCE[format] if tolerance is None else (tolerance, tolerance)
            max_diff = check_round_trip(run_dir, wrapper, reloaded, at_size, resized, strict_ranks=format == "torchscript")
        digest = sha256_file(candidate)
        os.replace(candidate, path)
    finally:
        candidate.unlink(missing_ok=True)
    meta = {
        "format": format, "file": path.name, "sha256": digest, "checkpoint": checkpoint,
        "classes": wrapper.class_names, "image_size": wrapper.image_size, "resize_size": wrapper.resize_size,
        "interpolation": wrapper.interpolation, "temperature": wrapper.temperature, "flip_tta": wrapper.flip_tta,
        # what readers feed it: centre squares, or whole photos ("whole") when its familiarity looks at all of them
        "familiarity_view": "whole" if wrapper.familiarity_whole_photo else "crop",
        "probability_threshold": wrapper.probability_threshold,
        "familiarity_threshold": wrapper.familiarity_threshold if wrapper.has_feature_bank else None,
        "feature_bank_size": int(len(wrapper.bank_labels)),
        "feature_bank_distractors": int((wrapper.bank_labels == DISTRACTOR).sum()),
        "feature_bank_digest": bank_digest(wrapper.bank, wrapper.bank_labels),
        "round_trip_max_abs_diff": max_diff, "torch": torch.__version__,
        **({"int8_check": int8_check} if int8_check else {})}
    meta["signature"] = signature(signing_key(create=True), meta)
    run.write_export_meta(meta)
    return path


def export_fastest(run_dir: Path, checkpoint: str = "best", photos: int = 64) -> tuple[Path, dict]:
    """Export the run in every format, time each on this machine (the run's test photos, decoded as the Predictor
    decodes them, in batches of 8, best of 3) and keep the fastest that passes its own check (an int8 export only
    within its accuracy bound) as the one the Predictor loads. Returns its path and, per format, photos/s or the
    reason it was left out (also recorded in ``export.json`` as ``speed``)."""
    import time
    run = Run(run_dir)
    squares = [torch.from_numpy(np.ascontiguousarray(square)) for square in
               decoded_photos([row["path"] for row in run.predictions[:photos]], build_exportable(run_dir, checkpoint))]
    if not squares:
        raise ModelError(f"{run_dir.name}: timing the formats needs the run's test photos on this machine")
    batches = [torch.stack([squares[i] for i in batch]) for batch in same_shape_batches(squares, 8)]
    speed, metas = {}, {}
    for format in FORMATS:
        try:
            export_run(run_dir, checkpoint=checkpoint, format=format)
        except ModelError as refused:
            speed[format] = str(refused)
            continue
        metas[format] = run.export_meta
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
    meta["signature"] = signature(signing_key(create=True), meta)
    run.write_export_meta(meta)
    return run.model_file(fastest), speed


def _write_torchscript(wrapper: ExportedClassifier, path: Path) -> list:
    """Script and freeze, save, load back: the scripted and the reloaded module, to be compared with the eager."""
    scripted = freeze_scripted(wrapper, PRESERVED_ATTRIBUTES)
    scripted.save(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return [scripted, torch.jit.load(str(path), map_location="cpu")]


def load_exported(run_dir: Path, device="cpu") -> Tuple[object, dict]:
    """Load a run's exported model (TorchScript module or :class:`OnnxClassifier`) after checking it is the file
    this user exported."""
    run = Run.of(run_dir)
    try:
        meta = read_json(run.file(Run.EXPORT_META))
    except ValueError:
        raise ModelError(f"{run_dir.name}/{Run.EXPORT_META} is damaged; export the run again: landmark export {run_dir}") from None
    format = meta.get("format", "torchscript") if isinstance(meta, dict) else "torchscript"
    path = run.model_file(format if format in FORMATS else "torchscript")
    if meta is None or not path.exists():
        raise RunError(f"{run_dir.name} has no exported model yet (run: landmark export {run_dir.name})")
    if not path.is_file():  # a FIFO would hang the hash below, /dev/zero never end it
        raise ModelError(f"{run_dir.name}/{path.name} is not a regular file; refusing to load it. "
                         f"Export the run again: landmark export {run_dir}")
    key = signing_key(create=False)
    if key is None:
        raise ModelError(f"{run_dir.name} was exported by another user or machine (no signing key at "
                         f"{signing_key_path()}); to trust it here, export it again: landmark export {run_dir}")
    if not isinstance(meta, dict) or format not in FORMATS or sha256_file(path) != meta.get("sha256") \
            or not hmac.compare_digest(signature(key, meta), str(meta.get("signature", ""))):
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
