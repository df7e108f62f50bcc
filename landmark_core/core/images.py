"""Reading images from anything a user may hand us, safely.

One entry point, :func:`load_rgb`, accepts a path, bytes, a file object or a
PIL image and returns an RGB ``PIL.Image`` or raises :class:`ImageError` with a
one-line reason. It checks the pixel count from the header *before* decoding
(decompression bombs), applies EXIF orientation, takes the first frame of
animations, flattens alpha onto white and maps every mode (16-bit, palette,
CMYK, float) to 8-bit RGB.
"""
from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError

ImageSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO, Image.Image]

#: Largest image we decode: 64 megapixels; a 30000x30000 bomb is refused.
MAX_PIXELS = 64_000_000
#: libjpeg decodes a JPEG at 1/2, 1/4 or 1/8 of its size (DCT scaling) at that size's cost: a phone's 48 to 200
#: megapixel JPEG is decoded small, within MAX_PIXELS, and only a JPEG larger than 64 times it is refused.
JPEG_REDUCTIONS = (1, 2, 4, 8)
#: A photo file larger than this is refused before it is read (the largest phone photos are ~100 MB).
MAX_PHOTO_BYTES = 512 * 2**20
# Pillow's own settings (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) are left as the application set
# them: open_image checks the pixel count itself, and turns Pillow's bomb warning into a refusal.

# Decoders fed hostile bytes raise almost anything (struct.error, IndexError, SyntaxError, ...): all of it
# means "this file is not a readable image", so it becomes an ImageError.
_READ_ERRORS = (Exception,)


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    return "image"


def about_file(error: ImageError, name: str) -> ImageError:
    """The error of an image read from bytes ("image: …"), about the file the bytes came from ("name: …")."""
    text = str(error)
    return ImageError(f"{name}:{text[len('image:'):]}" if text.startswith("image:") else text)


def open_image(source: ImageSource, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open (lazily) and check the header; raise ImageError for non-images and bombs."""
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (bytes, bytearray)):
            if not source:
                raise ImageError("image: empty file")
            source = io.BytesIO(source)
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise ImageError(f"{path.name}: not a file")
            if path.stat().st_size == 0:
                raise ImageError(f"{path.name}: empty file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(source)
        except Image.UnidentifiedImageError:
            raise ImageError(f"{_describe(source)}: not an image (photos are read from JPEG, PNG, WebP, AVIF, GIF, BMP "
                             "or TIFF files)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            image = _large_jpeg(source)  # Pillow's own limit counts full-size pixels: a JPEG may decode smaller
            if image is None:
                raise ImageError(f"{_describe(source)}: too many pixels (limit {max_pixels:,}); refused before "
                                 "decoding") from None
        except _READ_ERRORS as error:
            raise ImageError(f"{_describe(source)}: corrupt or truncated image ({error})") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{_describe(source)}: image has no pixels")
    if width * height > max_pixels and image.format in ("JPEG", "MPO") and \
            (image.info.get("progressive") or image.info.get("progression")):
        # a progressive JPEG holds every coefficient of the whole image while it decodes, at any reduced size
        raise ImageError(f"{_describe(source)}: {width}x{height} is too many pixels for a progressive JPEG (limit "
                         f"{max_pixels:,}); refused before decoding")
    if width * height > max_pixels * (JPEG_REDUCTIONS[-1] ** 2 if image.format in ("JPEG", "MPO") else 1):
        raise ImageError(f"{_describe(source)}: {width}x{height} is too many pixels (limit {max_pixels:,}"
                         + (f", or {max_pixels * JPEG_REDUCTIONS[-1] ** 2:,} for a JPEG, decoded at reduced size"
                            if image.format in ("JPEG", "MPO") else "") + "); refused before decoding")
    return image


def _large_jpeg(source) -> Image.Image | None:
    """A JPEG that Pillow's pixel limit refused, opened lazily through its JPEG reader (which reads only the header;
    :func:`open_image` then applies the limit that holds for JPEGs); None for anything else."""
    from PIL import JpegImagePlugin
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as handle:
                if handle.read(3) != b"\xff\xd8\xff":
                    return None
            return JpegImagePlugin.JpegImageFile(source)  # Pillow opens, and closes, the file itself
        source.seek(0)
        if source.read(3) != b"\xff\xd8\xff":
            return None
        source.seek(0)
        return JpegImagePlugin.JpegImageFile(source)
    except _READ_ERRORS:
        return None


def _reduction(image: Image.Image, max_pixels: int) -> int:
    """The least JPEG reduction that brings ``image`` within ``max_pixels`` (1 when it fits as it is)."""
    width, height = image.size
    return next((scale for scale in JPEG_REDUCTIONS if width * height <= max_pixels * scale * scale), 0)


def to_rgb(image: Image.Image) -> Image.Image:
    """Map any Pillow mode to 8-bit RGB; transparent pixels become white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(source: ImageSource, *, min_side: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``source`` to an upright RGB image.

    With ``min_side``, JPEGs are decoded at the smallest power-of-two reduction
    whose short side is still at least ``min_side`` (libjpeg's DCT scaling), which
    is several times faster for photos much larger than the model input.
    """
    image = open_image(source, max_pixels)
    name = _describe(source)
    if min_side:
        # Resizing the short side to min_side scales the long side too: a 1x200,000 strip would become
        # min_side x (min_side * 200,000) pixels. Refuse before decoding anything.
        width, height = image.size
        resized = min_side * min_side * (max(width, height) / min(width, height))
        if resized > max_pixels:
            raise ImageError(f"{name}: {width}x{height} is too thin to classify (resized to a {min_side}-pixel short "
                             f"side it would have {resized:,.0f} pixels; limit {max_pixels:,})")
    try:
        if getattr(image, "is_animated", False):
            image.seek(0)
        if image.format in ("JPEG", "MPO"):
            width, height = image.size
            needed = _reduction(image, max_pixels)  # a photo larger than the limit: decoded small enough, never whole
            scale = max(min(width, height) / min_side if min_side else 1, needed)
            if scale >= 2:  # Pillow picks the largest reduction that keeps at least the size asked for
                image.draft("RGB", (max(1, int(width / scale)), max(1, int(height / scale))))
            if image.size[0] * image.size[1] > max_pixels:
                raise ImageError(f"{name}: {width}x{height} cannot be decoded within {max_pixels:,} pixels")
        image.load()
        image = ImageOps.exif_transpose(image) or image
        return to_rgb(image)
    except ImageError:
        raise
    except _READ_ERRORS as error:
        raise ImageError(f"{name}: corrupt or truncated image ({error})") from None


def load_square(source: ImageSource, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """Decode, resize the short side to ``size`` and centre-crop: a ``size``x``size``x3 uint8 array.

    The resize is torch's antialiased ``interpolation`` (bilinear or bicubic) on
    uint8, the same kernel the exported model applies to uploads (and ~2x faster
    than Pillow's here).
    """
    from .transforms import resize_and_centre_crop
    return _resized(source, size, lambda pixels: resize_and_centre_crop(pixels, size, size, interpolation))


def load_resized(source: ImageSource, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """Decode and resize the short side to ``size``, the aspect ratio kept: the whole photo, H x W x 3 uint8
    (what a model that also looks at the whole photo is fed; its centre square is :func:`load_square`'s). The long
    side is kept within ``MAX_WHOLE_PHOTO_ASPECT`` times ``size``: a thinner strip is squeezed along it."""
    from .transforms import MAX_WHOLE_PHOTO_ASPECT, resize_short_side
    return _resized(source, size,
                    lambda pixels: resize_short_side(pixels, size, interpolation, MAX_WHOLE_PHOTO_ASPECT))


def load_squashed(source: ImageSource, size: int, squashed_size: int, interpolation: str = "bilinear") -> np.ndarray:
    """:func:`load_resized` at ``size``, then the whole photo resized to ``squashed_size`` square, aspect not
    kept: the exported model's whole-photo view of :func:`load_resized`'s array, pixel for pixel."""
    import torch
    from .transforms import squash
    resized = torch.from_numpy(load_resized(source, size, interpolation)).permute(2, 0, 1)[None]
    return np.ascontiguousarray(squash(resized, squashed_size)[0].permute(1, 2, 0).numpy())


def load_model_input(source: ImageSource, size: int, interpolation: str = "bilinear",
                     whole_photo: bool = False) -> np.ndarray:
    """What an exported model is fed: the centre square (:func:`load_square`), or the whole photo
    (:func:`load_resized`) for a model that also looks at all of it (``familiarity_view`` "whole")."""
    return (load_resized if whole_photo else load_square)(source, size, interpolation)


def same_shape_batches(photos: list, batch_size: int) -> list[list[int]]:
    """Indices of ``photos`` (arrays or tensors) in batches of at most ``batch_size`` photos of one shape, in
    order of first appearance: whole photos of one camera's aspect ratio batch together, others go alone."""
    groups: dict[tuple, list[int]] = {}
    for index, photo in enumerate(photos):
        groups.setdefault(tuple(photo.shape), []).append(index)
    return [indices[start:start + batch_size] for indices in groups.values()
            for start in range(0, len(indices), batch_size)]


def _resized(source: ImageSource, size: int, resize) -> np.ndarray:
    import torch  # lazily: reading and checking images needs no torch

    pixels = torch.from_numpy(np.array(load_rgb(source, min_side=size), dtype=np.uint8))
    # a (1, 3, H, W) channels-last view of the HWC array: torch's fast uint8 kernel, and HWC memory comes back
    resized = resize(pixels[None].permute(0, 3, 1, 2))
    return np.ascontiguousarray(resized[0].permute(1, 2, 0).numpy())


#: Largest upload the app accepts per file.
MAX_UPLOAD_BYTES = 25 * 2**20
#: What uploads may be, judged by content (Pillow's detected format), never by file name.
UPLOAD_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "MPO"}


def check_upload(data: bytes, name: str = "upload", max_bytes: int = MAX_UPLOAD_BYTES) -> Image.Image:
    """Validate an uploaded file by size and content; returns the opened (not yet decoded) image."""
    if len(data) > max_bytes:
        raise ImageError(f"{name}: {len(data) / 2**20:.1f} MiB is over the {max_bytes / 2**20:.0f} MiB limit")
    try:
        image = open_image(data)
    except ImageError as error:
        raise about_file(error, name) from None
    if image.format not in UPLOAD_FORMATS:
        raise ImageError(f"{name}: {image.format} files are not accepted (JPEG, PNG, WEBP, GIF, BMP, TIFF, AVIF are)")
    return image


def read_photo(path: str | os.PathLike) -> bytes:
    """A photo file's bytes, only if it is a regular file of a photo's size (ImageError otherwise: a FIFO would
    hang the read, /dev/zero never end it); opened without blocking, checked on the open file."""
    path = Path(path)
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"{path.name}: not a photo file")
        if info.st_size > MAX_PHOTO_BYTES:
            raise ImageError(f"{path.name}: {info.st_size / 2**20:,.0f} MiB is over the {MAX_PHOTO_BYTES / 2**20:.0f} MiB limit")
        return handle.read(MAX_PHOTO_BYTES + 1)
