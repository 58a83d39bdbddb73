"""Small uploads that would cost the bot far more time or memory to validate than their size.

Every file is generated here. Nothing is timed: each test checks that the file really has
the costly property (Pillow alone would open or decode it) and that it is refused; memory
is measured, in a fresh process, where memory is the point.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from nst_core.errors import ImageError
from nst_core.images import MAX_JPEG_SCANS, decode_image, image_info

SOS, EOI = b"\xff\xda", b"\xff\xd9"


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def refused(data: bytes) -> str:
    """The message, after checking that the cheap header check and the decoder agree."""
    with pytest.raises(ImageError) as header:
        image_info(data)
    with pytest.raises(ImageError) as decoding:
        decode_image(data)
    assert str(header.value) == str(decoding.value)
    return str(header.value)


def pillow_decodes(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as img:
        img.load()


# --------------------------------------------------------------------------- JPEG


def flat_progressive_jpeg() -> bytes:
    data = encode(Image.new("RGB", (64, 48), (120, 60, 200)), "JPEG", progressive=True)
    assert data.endswith(EOI)
    return data


def with_scans(data: bytes, total: int, between: bytes = b"") -> bytes:
    """``data`` with its last scan (SOS header and entropy-coded data) repeated up to ``total``."""
    last_scan = data[data.rindex(SOS) : -len(EOI)]
    extra = total - data.count(SOS)
    assert extra >= 0
    return data[: -len(EOI)] + (between + last_scan) * extra + EOI


def test_jpeg_scan_bomb_is_refused_before_decoding():
    bomb = with_scans(flat_progressive_jpeg(), 2000)
    assert bomb.count(SOS) == 2000 and len(bomb) < 50_000
    pillow_decodes(bomb)  # a valid file: each scan costs a pass over every pixel
    message = refused(bomb)
    assert "scans" in message and "re-save" in message


@pytest.mark.parametrize(
    "between",
    [b"\x00\x01stray", b"\xff\xff\xff", b"\xff\xd0\xff\xd1"],
    ids=["stray bytes", "fill bytes", "restart markers"],
)
def test_jpeg_scan_count_is_not_fooled_by_bytes_between_scans(between):
    bomb = with_scans(flat_progressive_jpeg(), 500, between)
    pillow_decodes(bomb)  # libjpeg steps over these and decodes every scan
    assert "scans" in refused(bomb)


def test_jpeg_scan_limit_is_exact():
    data = flat_progressive_jpeg()
    assert image_info(with_scans(data, MAX_JPEG_SCANS)) == ("JPEG", 64, 48)
    assert decode_image(with_scans(data, MAX_JPEG_SCANS)).size == (64, 48)
    assert "scans" in refused(with_scans(data, MAX_JPEG_SCANS + 1))


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"progressive": True}, {"progressive": True, "restart_marker_blocks": 1}],
    ids=["baseline", "progressive", "progressive with restarts"],
)
@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_real_jpegs_are_still_accepted(mode, kwargs):
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).convert(mode)
    data = encode(photo, "JPEG", **kwargs)
    assert image_info(data) == ("JPEG", 80, 60)
    assert decode_image(data).size == (80, 60)


def test_start_of_scan_bytes_inside_metadata_are_not_scans():
    # An ICC profile (APP2) full of 0xFFDA: the walk skips segments by their length.
    data = encode(Image.new("RGB", (16, 16)), "JPEG", icc_profile=SOS * 5000)
    assert data.count(SOS) > MAX_JPEG_SCANS
    assert image_info(data) == ("JPEG", 16, 16)
    assert decode_image(data).size == (16, 16)


def test_jpeg_with_thousands_of_tiny_segments_is_refused():
    # Pillow parses and keeps each COM segment in Python: 8 MB of them cost seconds and
    # over 100 MiB before any pixel.
    data = encode(Image.new("RGB", (16, 16)), "JPEG")
    app0_end = 4 + struct.unpack(">H", data[4:6])[0]
    spam = data[:app0_end] + b"\xff\xfe\x00\x02" * 3000 + data[app0_end:]
    pillow_decodes(spam)
    assert "segments" in refused(spam)


def test_jpeg_padded_with_stray_bytes_before_its_first_scan_is_refused():
    # Pillow's header parser steps over fill bytes one at a time in Python.
    data = encode(Image.new("RGB", (16, 16)), "JPEG")
    app0_end = 4 + struct.unpack(">H", data[4:6])[0]
    padded = data[:app0_end] + b"\xff" * 300_000 + data[app0_end:]
    pillow_decodes(padded)
    assert "stray bytes" in refused(padded)


# --------------------------------------------------------------------------- GIF, BMP


def test_gif_with_a_huge_header_is_refused():
    # Pillow keeps every comment sub-block as its own bytes object: 8 MB of one-byte
    # blocks cost over 300 MiB just to open the file.
    data = encode(Image.new("P", (8, 8)), "GIF")
    first_image = data.index(b",")
    bomb = data[:first_image] + b"!\xfe" + b"\x01c" * 200_000 + b"\x00" + data[first_image:]
    pillow_decodes(bomb)
    assert "GIF" in refused(bomb)


def test_gif_with_comments_and_frames_is_still_accepted():
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue], comment=b"hello " * 500)
    assert image_info(data) == ("GIF", 8, 8)
    assert decode_image(data).getpixel((4, 4)) == (255, 0, 0)


def rle8_bmp(width: int, height: int, ops: bytes) -> bytes:
    """An 8-bit RLE BMP with a grey palette; ``ops`` are its run-length codes."""
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(ops), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(ops), 0, 0, offset) + info + palette + ops


def test_large_rle_bmp_is_refused():
    # Each "end of line" makes Pillow's Python RLE decoder pad the row a pixel at a time:
    # this 5 KB file would take seconds.
    bomb = rle8_bmp(40_000, 1_000, b"\x01\x05\x00\x00" * 1_000 + b"\x00\x01")
    assert len(bomb) < 6_000
    message = refused(bomb)
    assert "RLE" in message and "40000×1000" in message


def test_small_rle_bmp_is_still_accepted():
    data = rle8_bmp(4, 2, b"\x04\x07\x00\x00" + b"\x04\x09\x00\x00" + b"\x00\x01")
    assert image_info(data) == ("BMP", 4, 2)
    img = decode_image(data)
    assert img.getpixel((0, 1)) == (7, 7, 7) and img.getpixel((0, 0)) == (9, 9, 9)  # bottom-up


# --------------------------------------------------------------------------- memory

_PEAK_RSS_SCRIPT = textwrap.dedent(
    """
    import io, json, sys
    from PIL import Image
    from nst_core.images import decode_image

    def status_kib(field):
        # Not ru_maxrss: across fork and exec it inherits the parent's (pytest's) peak.
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith(field + ":"))
        return int(line.split()[1])

    data = open(sys.argv[1], "rb").read()
    warm = io.BytesIO()
    Image.new("I;16", (4, 4)).save(warm, "PNG")
    decode_image(warm.getvalue())  # imports and plugin set-up are not the upload's cost
    before = status_kib("VmRSS")
    img = decode_image(data)
    peak = status_kib("VmHWM")  # this process's peak resident memory so far
    print(json.dumps({"grown_mib": (peak - before) / 1024, "mode": img.mode, "size": img.size,
                      "corner": img.getpixel((img.width - 1, 0))}))
    """
)

SIDE = 4000  # 16 MP: a decoded RGB copy is 61 MiB (Pillow stores RGB as 4 bytes a pixel)


def sixteen_bit_gradient() -> Image.Image:
    columns = (np.arange(SIDE, dtype=np.uint32) * 16).astype(np.uint16)
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(columns, (SIDE, SIDE))))


def palette_with_transparency() -> Image.Image:
    img = Image.new("P", (SIDE, SIDE), 1)
    img.putpalette([0, 0, 0, 0, 200, 0] + [0] * (254 * 3))
    img.info["transparency"] = 0
    return img


# Bounds: the decoded picture plus the RGB result are unavoidable (about 92, 122 and 76
# MiB); the old conversions through int64 arrays or full-size RGBA copies cost about 350,
# 305 and 260 MiB.
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize(
    "make, bound_mib, corner",
    [
        (sixteen_bit_gradient, 150, (249, 249, 249)),  # 63984 scaled, not clipped
        (lambda: Image.new("RGBA", (SIDE, SIDE), (200, 30, 40, 0)), 200, (255, 255, 255)),
        (palette_with_transparency, 150, (0, 200, 0)),
    ],
    ids=["16-bit grey", "RGBA", "palette with transparency"],
)
def test_decoding_a_large_flat_png_needs_bounded_memory(tmp_path, make, bound_mib, corner):
    img = make()
    path = tmp_path / "upload.png"
    img.save(path, "PNG", transparency=img.info.get("transparency"))
    assert path.stat().st_size < 200_000  # a tiny upload
    run = subprocess.run([sys.executable, "-c", _PEAK_RSS_SCRIPT, str(path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["mode"] == "RGB" and report["size"] == [SIDE, SIDE]
    assert tuple(report["corner"]) == corner
    assert report["grown_mib"] < bound_mib, report
