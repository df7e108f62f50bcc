"""A zip to hand on: the exported model, its metadata and a README with a snippet that makes the
same decision as the library."""
from pathlib import Path

from ..core.errors import RunError
from ..runs.run import Run

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
