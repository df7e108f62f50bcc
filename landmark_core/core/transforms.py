"""The tensor side of preprocessing, shared by training's decoder and the exported model.

One resize-and-centre-crop (:func:`resize_and_centre_crop`), TorchScript-compatible, so the pixels a photo
becomes are computed by the same code when training decodes it and when the exported model classifies it.
"""
import math
import warnings
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F


def resize_side_for(image_size: int, crop_pct: float = 0.875) -> int:
    """The short side to resize to before a ``crop_pct`` centre crop (the classic Resize(256)/Crop(224) by default)."""
    return int(math.ceil(image_size / crop_pct - 1e-9))  # 224 / 0.875 is 256 even when rounding says 256.00000001


def resize_and_centre_crop(batch: torch.Tensor, resize_size: int, crop_size: int, interpolation: str) -> torch.Tensor:
    """``(N, C, H, W)`` → ``(N, C, crop_size, crop_size)``: the short side resized to ``resize_size`` with the
    antialiased ``interpolation`` filter, then the centre crop. uint8 stays uint8 (torch's fast uint8 kernel,
    which is what training decoded with); a channels-last input gives channels-last memory back."""
    return centre_crop(resize_short_side(batch, resize_size, interpolation), crop_size)


def centre_crop(batch: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size`` x ``size`` of ``(N, C, H, W)`` (H and W at least ``size``)."""
    if not torch.jit.is_scripting() and torch.jit.is_tracing():
        return _traced_centre_crop(batch, size)
    top = (batch.shape[-2] - size) // 2
    left = (batch.shape[-1] - size) // 2
    return batch[:, :, top:top + size, left:left + size]


#: The whole-photo view keeps a photo's long side within this many times its short side (a 1:8 strip, a phone's
#: widest panorama): a 100 x 71,000 pixel strip would otherwise be kept, and resampled, at 298 x 212,000.
MAX_WHOLE_PHOTO_ASPECT = 8


def resize_short_side(batch: torch.Tensor, resize_size: int, interpolation: str,
                      max_aspect: float = 0.0) -> torch.Tensor:
    """``(N, C, H, W)`` with its short side resized to ``resize_size``, the aspect ratio kept (the whole photo,
    before :func:`resize_and_centre_crop`'s crop; on floats rounded to uint8 levels when traced, see
    :func:`_traced_resize_short_side`). With ``max_aspect``, the long side is at most that many times
    ``resize_size`` (a thinner photo is squeezed along it)."""
    if not torch.jit.is_scripting() and torch.jit.is_tracing():
        return _traced_resize_short_side(batch, resize_size, interpolation, max_aspect)
    height, width = batch.shape[-2], batch.shape[-1]
    scale = float(resize_size) / float(min(height, width))
    new_h = max(resize_size, int(round(height * scale)))
    new_w = max(resize_size, int(round(width * scale)))
    if max_aspect > 0:
        longest = int(max_aspect * resize_size)
        new_h, new_w = min(new_h, longest), min(new_w, longest)
    return F.interpolate(batch, size=[new_h, new_w], mode=interpolation, align_corners=False, antialias=True)


def squash_levels(batch: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, C, H, W)`` pixel levels (uint8, or floats on the 0-255 scale) → ``(N, C, size, size)`` float levels,
    rounded: the whole photo, its aspect ratio not kept (the familiarity check's whole-photo view,
    TrainConfig.familiarity_view), with an antialiased triangle filter (Pillow's bilinear).

    Unlike the crop's resize, this one is never the identity, and ONNX Runtime's antialiased Resize is up to a few
    levels off torch's on 1-5% of a photo's pixels. So it is written as two matrix products with the filter's
    weights computed here: eager, TorchScript and the traced ONNX graph do the same arithmetic, on any device.
    """
    if not torch.jit.is_scripting() and torch.jit.is_tracing():
        shape = torch._shape_as_tensor(batch)
        height, width = shape[-2].to(torch.float32), shape[-1].to(torch.float32)
    else:
        height, width = torch.tensor(float(batch.shape[-2])), torch.tensor(float(batch.shape[-1]))
    pixels = batch.float()
    rows = _triangle_weights(height, size, pixels.device)     # (size, H)
    columns = _triangle_weights(width, size, pixels.device)   # (size, W)
    resized = torch.matmul(torch.matmul(rows, pixels), columns.t())
    # Rounded up from x.484 (1/64 below x.5): flat areas resample to exact halves, which the float noise of two
    # kernels' matrix products would round either way; no value lands near this boundary more than anywhere.
    return torch.floor(resized + (0.5 + 1 / 64)).clamp(0, 255)


def squash(batch: torch.Tensor, size: int) -> torch.Tensor:
    """:func:`squash_levels` as uint8 (what the decoded-photo cache keeps)."""
    return squash_levels(batch, size).to(torch.uint8)


def _triangle_weights(length: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """``(size, length)``: each output pixel's weights over the input pixels, a triangle as wide as the scale
    (at least one pixel) around the output pixel's centre, normalised to sum to 1."""
    scale = length / size
    support = torch.clamp(scale, min=1.0)
    centres = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * scale
    positions = torch.arange(length, device=device, dtype=torch.float32) + 0.5
    weights = torch.clamp(1.0 - (positions[None, :] - centres[:, None]).abs() / support, min=0.0)
    return weights / weights.sum(dim=1, keepdim=True)


def freeze_scripted(module: nn.Module, preserved_attrs: List[str] = ()) -> torch.jit.ScriptModule:
    """Script and freeze an eval-mode module: weights inlined, each BatchNorm folded into its convolution
    (+10-40% CPU throughput). ``preserved_attrs`` are the methods and attributes readers of the result need."""
    with warnings.catch_warnings():  # TorchScript is deprecated upstream but is what the product ships
        warnings.simplefilter("ignore")
        return torch.jit.freeze(torch.jit.script(module), preserved_attrs=list(preserved_attrs))


@torch.jit.unused
def _traced_centre_crop(batch: torch.Tensor, size: int) -> torch.Tensor:
    """:func:`centre_crop` with the sizes kept as tensors, so a traced graph (ONNX) serves any photo size."""
    shape = torch._shape_as_tensor(batch)
    top, left = (shape[-2] - size) // 2, (shape[-1] - size) // 2
    return batch[:, :, top:top + size, left:left + size]


@torch.jit.unused
def _traced_resize_short_side(batch: torch.Tensor, resize_size: int, interpolation: str,
                              max_aspect: float = 0.0) -> torch.Tensor:
    """:func:`resize_short_side` with the sizes kept as tensors, so a traced graph (ONNX) serves any photo size.

    The resize runs on floats (ONNX Resize has no uint8 cubic kernel) and is rounded back to uint8 levels, as
    torch's uint8 kernel rounds: the two agree to within one level on a few pixels.
    """
    shape = torch._shape_as_tensor(batch)
    height, width = shape[-2].float(), shape[-1].float()
    scale = resize_size / torch.minimum(height, width)
    new_h = torch.clamp(torch.round(height * scale), min=resize_size)
    new_w = torch.clamp(torch.round(width * scale), min=resize_size)
    if max_aspect > 0:
        longest = float(int(max_aspect * resize_size))
        new_h, new_w = torch.clamp(new_h, max=longest), torch.clamp(new_w, max=longest)
    pixels = batch.float() if batch.dtype == torch.uint8 else batch
    resized = F.interpolate(pixels, size=[new_h.long(), new_w.long()], mode=interpolation, align_corners=False,
                            antialias=True)
    if batch.dtype == torch.uint8:
        resized = resized.round().clamp(0, 255).to(torch.uint8)
    return resized
