"""Tests of nst_core.images: every input is generated here, tiny, in memory."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from nst_core.errors import ImageError, NSTError
from nst_core.images import decode_image, fit_to_bytes, image_info, to_rgb
from nst_core.pixels import encode_png, from_array, image_hash, resize_longer_side, to_array

ACCEPTED_WORDING = "PNG, JPEG, WebP, GIF or BMP"


@pytest.fixture(autouse=True)
def _strict_truncation(monkeypatch):
    # Truncation must be refused by decode_image itself, whatever the process default.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_claiming(width: int, height: int) -> bytes:
    """A 1×1 PNG whose IHDR is patched (CRC fixed) to claim another size."""
    data = bytearray(encode(Image.new("1", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def close_to(actual, expected, tol: int) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected))


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "fmt, tol",
    [("PNG", 0), ("JPEG", 6), ("WEBP", 6), ("GIF", 0), ("BMP", 0)],
)
def test_accepted_formats_decode_to_rgb_with_their_size(fmt, tol):
    colour = (200, 40, 120) if fmt != "GIF" else (255, 0, 0)  # GIF: a palette-exact colour
    img = decode_image(encode(Image.new("RGB", (30, 20), colour), fmt))
    assert img.mode == "RGB"
    assert img.size == (30, 20)
    assert close_to(img.getpixel((15, 10)), colour, tol)


def test_animated_gif_gives_its_first_frame():
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    blue = Image.new("RGB", (8, 8), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    img = decode_image(data)
    assert img.mode == "RGB" and img.size == (8, 8)
    assert img.getpixel((4, 4)) == (255, 0, 0)


# --------------------------------------------------------------------------- modes


def test_rgba_is_composited_over_white():
    img = Image.new("RGBA", (3, 1))
    img.putpixel((0, 0), (255, 0, 0, 255))
    img.putpixel((1, 0), (0, 0, 255, 0))  # fully transparent: must not come out blue or black
    img.putpixel((2, 0), (0, 0, 0, 128))  # half transparent black: mid grey
    out = decode_image(encode(img, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert out.getpixel((1, 0)) == (255, 255, 255)
    assert close_to(out.getpixel((2, 0)), (127, 127, 127), 1)


def test_la_is_composited_over_white():
    img = Image.new("LA", (2, 1))
    img.putpixel((0, 0), (0, 0))
    img.putpixel((1, 0), (50, 255))
    out = decode_image(encode(img, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (50, 50, 50)


def test_palette_png_with_transparency():
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 0, 200, 0] + [0] * (254 * 3))
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    data = encode(img, "PNG", transparency=0)  # index 0 (black) is transparent
    out = decode_image(data)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 200, 0)


def test_grey_png():
    out = decode_image(encode(Image.new("L", (4, 4), 77), "PNG"))
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (77, 77, 77)


def test_one_bit_png():
    img = Image.new("1", (4, 4), 0)
    img.putpixel((3, 3), 1)
    out = decode_image(encode(img, "PNG"))
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((3, 3)) == (255, 255, 255)


def test_cmyk_jpeg():
    out = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"))
    assert out.mode == "RGB"
    assert close_to(out.getpixel((8, 8)), (255, 0, 0), 6)


def test_16_bit_grey_png_is_scaled_not_clipped():
    grey = Image.fromarray(np.array([[0, 256, 32768, 65535]], dtype=np.uint16))
    assert grey.mode == "I;16"
    out = to_array(decode_image(encode(grey, "PNG")))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


@pytest.mark.parametrize("mode", ["YCbCr", "LAB", "HSV", "I", "F", "PA", "RGBa", "La", "CMYK", "P"])
def test_to_rgb_handles_every_mode(mode):
    out = to_rgb(Image.new(mode, (3, 2)))
    assert out.mode == "RGB" and out.size == (3, 2)


def test_to_rgb_scales_32_bit_integers_and_clips_floats():
    wide = to_array(Image.fromarray(np.array([[0, 65535, 70000]], dtype=np.int32)))
    assert wide[0, :, 0].tolist() == [0, 255, 255]
    flt = to_array(Image.fromarray(np.array([[-3.0, 127.6, 300.0]], dtype=np.float32)))
    assert flt[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: display rotated 90 degrees clockwise
    data = encode(img, "JPEG", exif=exif.tobytes(), quality=95)
    out = decode_image(data)
    assert out.size == (20, 40)
    assert close_to(out.getpixel((10, 5)), (255, 0, 0), 10)  # the left edge is now on top
    assert close_to(out.getpixel((10, 35)), (0, 0, 255), 10)
    assert image_info(data) == ("JPEG", 20, 40)  # same size as the decoded image


# --------------------------------------------------------------------------- refusals


def refusal(data: bytes, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        decode_image(data, **kwargs)
    message = str(info.value)
    assert isinstance(info.value, NSTError)
    assert message.endswith(".") and message[0].isupper()
    return message


def test_empty_bytes():
    assert "empty" in refusal(b"")


def test_text_is_not_an_image():
    message = refusal(b"this is a file named cat.png but it holds text\n")
    assert "not an image" in message and ACCEPTED_WORDING in message


def test_svg_is_refused():
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    message = refusal(svg)
    assert "SVG" in message and ACCEPTED_WORDING in message


def test_tiff_is_refused_as_unsupported():
    message = refusal(encode(Image.new("RGB", (8, 8)), "TIFF"))
    assert "TIFF" in message and "not supported" in message and ACCEPTED_WORDING in message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(fmt):
    data = encode(noise(64, 64), fmt)
    message = refusal(data[: len(data) // 2])
    assert "truncated or corrupt" in message and fmt in message


def test_decompression_bomb_header_is_refused_before_decoding():
    message = refusal(png_claiming(30000, 30000))
    assert "30000×30000 pixels (900.0 MP)" in message
    assert "limit is 40.0 MP" in message


def test_pillow_limit_applies_even_with_a_larger_max_pixels():
    # 100 MP is above Pillow's MAX_IMAGE_PIXELS (about 89 MP), where Pillow only warns.
    message = refusal(png_claiming(10000, 10000), max_pixels=10**9)
    assert "10000×10000" in message


def test_global_pillow_and_warning_state_is_left_alone():
    filters, limit = list(warnings.filters), Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError):
        decode_image(png_claiming(10000, 10000), max_pixels=10**9)
    decode_image(encode(Image.new("RGB", (2, 2)), "PNG"))
    assert warnings.filters == filters and Image.MAX_IMAGE_PIXELS == limit


def test_over_max_pixels():
    message = refusal(encode(Image.new("RGB", (100, 60)), "PNG"), max_pixels=5000)
    assert message == "The image is 100×60 pixels (0.006 MP); the limit is 0.005 MP."


def test_zero_width_is_refused():
    refusal(png_claiming(0, 10))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP"])
def test_corrupted_bytes_never_leak_other_exceptions(fmt):
    data = encode(noise(12, 10, seed=1), fmt)
    rng = np.random.default_rng(42)
    for _ in range(40):
        broken = bytearray(data)
        for pos in rng.integers(0, len(broken), size=3):
            broken[pos] = int(rng.integers(0, 256))
        # Half the files keep their length, so some still decode with damaged pixels.
        cut = len(broken) if rng.random() < 0.5 else int(rng.integers(len(broken) // 3, len(broken)))
        try:
            img = decode_image(bytes(broken[:cut]))
        except ImageError as exc:
            assert str(exc)
        else:
            assert img.mode == "RGB"


# --------------------------------------------------------------------------- image_info


def test_image_info_reads_only_the_header():
    data = encode(noise(50, 30), "PNG")
    assert image_info(data) == ("PNG", 50, 30)
    header_only = data[: data.index(b"IDAT") + 4]  # signature, IHDR, not one pixel byte
    assert image_info(header_only) == ("PNG", 50, 30)
    with pytest.raises(ImageError):
        decode_image(header_only)
    assert image_info(png_claiming(30000, 30000)) == ("PNG", 30000, 30000)
    assert image_info(encode(Image.new("RGB", (7, 5)), "WEBP")) == ("WEBP", 7, 5)


def test_image_info_refuses_non_images():
    with pytest.raises(ImageError, match="not supported"):
        image_info(encode(Image.new("RGB", (8, 8)), "TIFF"))
    with pytest.raises(ImageError, match="empty"):
        image_info(b"")
    with pytest.raises(ImageError, match="not an image"):
        image_info(b"plain text")


# --------------------------------------------------------------------------- arrays, resize


def test_array_round_trip():
    arr = np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    img = from_array(arr)
    assert img.mode == "RGB" and img.size == (7, 5)
    back = to_array(img)
    assert back.dtype == np.uint8 and back.shape == (5, 7, 3)
    np.testing.assert_array_equal(back, arr)


def test_from_array_rounds_and_clips_floats():
    arr = np.array([[[-5.0, 0.4, 0.6], [254.6, 300.0, np.nan]]], dtype=np.float32)
    assert to_array(from_array(arr)).tolist() == [[[0, 0, 1], [255, 255, 0]]]
    assert from_array(arr[None]).size == (2, 1)  # a batch of one is accepted
    with pytest.raises(ValueError):
        from_array(np.zeros((4, 4), dtype=np.uint8))


def test_resize_longer_side():
    img = noise(40, 20)
    assert resize_longer_side(img, 10).size == (10, 5)
    assert resize_longer_side(img, 80).size == (80, 40)
    assert resize_longer_side(img, 40).size == (40, 20)


# --------------------------------------------------------------------------- encoding


def test_encode_png_round_trips():
    img = noise(9, 6)
    np.testing.assert_array_equal(to_array(decode_image(encode_png(img))), to_array(img))


def test_fit_to_bytes_switches_format_when_png_is_too_big():
    img = noise(256, 256)
    budget = 20_000
    assert len(encode_png(img)) > budget
    data, ext = fit_to_bytes(img, budget)
    assert len(data) <= budget
    assert ext in ("webp", "jpg")
    out = decode_image(data)
    assert out.mode == "RGB" and max(out.size) <= 256
    assert image_info(data)[0] == {"webp": "WEBP", "jpg": "JPEG"}[ext]


def test_fit_to_bytes_keeps_png_when_it_fits():
    img = noise(32, 32)
    data, ext = fit_to_bytes(img, 10_000_000)
    assert ext == "png"
    np.testing.assert_array_equal(to_array(decode_image(data)), to_array(img))


def test_fit_to_bytes_impossible_budget():
    with pytest.raises(ImageError, match="10 bytes"):
        fit_to_bytes(noise(64, 64), 10)


# --------------------------------------------------------------------------- hashing


def test_image_hash():
    arr = np.random.default_rng(5).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    h = image_hash(from_array(arr))
    assert len(h) == 64 and int(h, 16) >= 0
    assert image_hash(from_array(arr.copy())) == h
    assert image_hash(arr) == h  # an array and its image agree
    assert image_hash(arr.astype(np.float32)) == h
    changed = arr.copy()
    changed[0, 0, 0] ^= 1
    assert image_hash(changed) != h
    # Same bytes, other shape: the size takes part in the key.
    assert image_hash(arr.reshape(6, 4, 3)) != h
