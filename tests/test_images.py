import io

import numpy as np
import pytest
from PIL import Image, features

from landmark_core.core.errors import ImageError
from landmark_core.core.images import load_rgb, load_square

from helpers import jpeg_bytes, noise_image, pillow_resize_crop


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF",
                                 pytest.param("AVIF", marks=pytest.mark.skipif(not features.check("avif"),
                                                                                reason="this Pillow has no AVIF"))])
def test_every_common_format_decodes_to_rgb(fmt):
    image = load_rgb(encode(noise_image(), fmt))
    assert image.mode == "RGB"
    assert image.size == (64, 48)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_becomes_rgb(mode):
    source = noise_image().convert("RGBA") if mode in ("LA", "RGBA") else noise_image()
    image = source.convert(mode) if mode not in ("I;16",) else Image.fromarray(
        (np.asarray(noise_image().convert("L"), dtype=np.uint16) * 257))
    result = load_rgb(image)
    assert result.mode == "RGB"
    assert result.size == (64, 48)


def test_sixteen_bit_uses_full_range():
    ramp = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (8, 1))
    result = np.asarray(load_rgb(encode(Image.fromarray(ramp), "PNG")))
    assert result.min() == 0
    assert result.max() == 255


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(load_rgb(encode(rgba, "PNG"))).min() == 255


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    data = encode(noise_image((64, 48)), "JPEG", exif=exif.tobytes())
    assert load_rgb(data).size == (48, 64)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    pixel = load_rgb(data).getpixel((5, 5))
    assert pixel[0] > 200
    assert pixel[2] < 50


@pytest.mark.parametrize("payload, reason", [
    (b"", "empty file"),
    (b"this is not an image at all", "not an image"),
    (jpeg_bytes()[:200], "corrupt or truncated"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "not an image"),
], ids=["empty", "text", "truncated-jpeg", "broken-png-header"])
def test_bad_bytes_raise_a_clear_error(payload, reason):
    with pytest.raises(ImageError, match=reason):
        load_rgb(payload)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("1", (30000, 30000)), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(ImageError, match="too many pixels"):
        load_rgb(bomb)


def test_tiny_image_works():
    assert load_square(encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), 16).shape == (16, 16, 3)


def test_draft_decode_matches_full_decode_within_rounding():
    photo = noise_image((1600, 1200), seed=3).resize((200, 150)).resize((1600, 1200), Image.BICUBIC)
    data = encode(photo, "JPEG", quality=92)
    fast = load_square(data, 128).astype(np.int16)
    full_image = Image.open(io.BytesIO(data)).convert("RGB")
    full = np.asarray(pillow_resize_crop(full_image, 128, 128)).astype(np.int16)
    assert np.abs(fast - full).mean() < 3.0


def test_path_that_is_missing_or_a_folder(tmp_path):
    with pytest.raises(ImageError, match="not a file"):
        load_rgb(tmp_path)
    with pytest.raises(ImageError, match="not a file"):
        load_rgb(tmp_path / "missing.jpg")


def test_content_decides_not_the_extension(tmp_path):
    path = tmp_path / "actually-a-png.jpg"
    noise_image().save(path, format="PNG")
    assert load_rgb(path).size == (64, 48)


def test_uploads_are_checked_by_size_and_content():
    from landmark_core.core.images import check_upload
    assert check_upload(encode(noise_image(), "PNG"), "ok.png").format == "PNG"
    with pytest.raises(ImageError, match="over the 1 MiB limit"):
        check_upload(b"\0" * (2 << 20), "big.jpg", max_bytes=1 << 20)
    with pytest.raises(ImageError, match="fake.jpg: not an image"):
        check_upload(b"%PDF-1.4 not a photo", "fake.jpg")
    with pytest.raises(ImageError, match="not accepted"):
        check_upload(encode(noise_image(), "PPM"), "odd.ppm")


def test_large_legal_photo_decodes_at_reduced_size():
    data = encode(Image.new("RGB", (6000, 4000), (10, 120, 200)), "JPEG")
    image = load_rgb(data, min_side=256)
    assert min(image.size) >= 256
    assert image.size[0] <= 1500


def test_a_phone_jpeg_over_the_pixel_limit_is_decoded_at_reduced_size_and_other_formats_are_still_refused():
    """An 81-megapixel JPEG (a 9000x9000 phone photo) decodes at half size, within the limit; the same pixels as
    a PNG cannot be decoded small and are refused; a JPEG header of 4.3 gigapixels is refused before decoding."""
    from landmark_core.core.images import MAX_PIXELS, load_square, open_image
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 90, 3), dtype=np.uint8)).resize((9000, 9000))
    jpeg = encode(big, "JPEG")
    assert open_image(jpeg).size == (9000, 9000)  # the header, read lazily
    decoded = load_rgb(jpeg)
    assert decoded.size == (4500, 4500)
    assert decoded.size[0] * decoded.size[1] <= MAX_PIXELS
    square = load_square(jpeg, 64)
    reference = np.asarray(big.resize((64, 64), Image.BILINEAR), dtype=np.float32)
    assert square.shape == (64, 64, 3)
    assert np.abs(square.astype(np.float32) - reference).mean() < 8
    with pytest.raises(ImageError, match="too many pixels"):
        load_rgb(encode(Image.new("RGB", (9000, 9000)), "PNG"))
    with pytest.raises(ImageError, match="progressive"):  # it would hold every coefficient while it decodes
        load_rgb(encode(big, "JPEG", progressive=True))
    header = bytearray(encode(Image.new("RGB", (16, 16)), "JPEG"))
    sof = header.index(b"\xff\xc0")
    header[sof + 5:sof + 9] = (65500).to_bytes(2, "big") * 2  # height and width of the frame: 65500 x 65500
    with pytest.raises(ImageError, match="too many pixels"):
        load_rgb(bytes(header))


def test_the_whole_photo_view_is_all_of_the_photo_squashed_as_pillow_would_and_as_the_exported_model_does():
    """load_resized keeps the aspect ratio at the short side asked for; load_squashed is all of it at a square
    size, close to Pillow's bilinear (triangle) filter, and pixel for pixel what the exported model's
    ``squash`` makes of load_resized's array, so evaluation's bank and the model's queries see the same pixels."""
    import torch
    from landmark_core.core.images import load_resized, load_squashed
    from landmark_core.core.transforms import squash
    photo = noise_image((400, 300), seed=5).resize((40, 30)).resize((400, 300), Image.BICUBIC)
    photo.paste((250, 20, 20), (0, 0, 40, 300))  # a red band at the left edge: outside any centre crop
    data = encode(photo, "PNG")
    resized = load_resized(data, 96)
    assert resized.shape == (96, 128, 3)
    whole = load_squashed(data, 96, 64)
    assert whole.shape == (64, 64, 3)
    reference = np.asarray(photo.resize((64, 64), Image.BILINEAR)).astype(np.int16)
    assert np.abs(whole.astype(np.int16) - reference).mean() < 2.0
    assert whole[:, :4, 0].mean() > 200 and whole[:, :4, 1].mean() < 60  # the edge is in the view
    assert load_square(data, 96)[:, :5, 0].mean() < 200  # and not in the crop
    again = squash(torch.from_numpy(resized).permute(2, 0, 1)[None], 64)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(again, whole)
