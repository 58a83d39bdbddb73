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
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps, PngImagePlugin

from nst_core.errors import ImageError
from nst_core.images import (
    DEFAULT_MAX_PIXELS,
    decode_image,
    decode_to_png,
    image_info,
)
from nst_core.jpeg_cost import MAX_JPEG_SCAN_MEGAPIXELS, MAX_JPEG_SCANS

SOS, EOI = b"\xff\xda", b"\xff\xd9"


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


KEEP_ALL = 1 << 16  # a longer side no test picture reaches: decode_to_png keeps the full size


def refused(data: bytes) -> str:
    """The message, after checking that the cheap header check and the decoders agree."""
    with pytest.raises(ImageError) as header:
        image_info(data)
    with pytest.raises(ImageError) as decoding:
        decode_image(data)
    with pytest.raises(ImageError) as keeping:
        decode_to_png(data, max_pixels=DEFAULT_MAX_PIXELS, longer_side=KEEP_ALL)
    assert str(header.value) == str(decoding.value) == str(keeping.value)
    return str(header.value)


def kept_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """The size of the PNG the bot keeps of an upload (:func:`decode_to_png`, not shrunk)."""
    with Image.open(io.BytesIO(decode_to_png(data, max_pixels=max_pixels, longer_side=KEEP_ALL))) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        return img.size


def pillow_decodes(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as img:
        img.load()


# --------------------------------------------------------------------------- JPEG


def flat_progressive_jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    data = encode(Image.new("RGB", size, (120, 60, 200)), "JPEG", progressive=True)
    assert data.endswith(EOI) and data.count(SOS) == 10  # libjpeg's script for colour
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
    # A small picture may have up to MAX_JPEG_SCANS scans, whatever their cost.
    data = flat_progressive_jpeg()
    assert image_info(with_scans(data, MAX_JPEG_SCANS)) == ("JPEG", 64, 48)
    assert decode_image(with_scans(data, MAX_JPEG_SCANS)).size == (64, 48)
    assert f"more than {MAX_JPEG_SCANS} scans" in refused(with_scans(data, MAX_JPEG_SCANS + 1))


def test_jpeg_scan_budget_is_exact_for_a_large_picture():
    # Decoding costs about scans × pixels: at 16 MP, 400 / 16 = 25 scans.
    data = flat_progressive_jpeg((4000, 4000))
    assert MAX_JPEG_SCAN_MEGAPIXELS * 10**6 // (4000 * 4000) == 25
    assert image_info(with_scans(data, 25)) == ("JPEG", 4000, 4000)
    message = refused(with_scans(data, 26))
    assert "more than 25 scans" in message and "4000×4000" in message
    assert "re-save" in message and "smaller picture" in message


def test_huffman_scan_bomb_under_the_scan_cap_is_refused():
    # 97 KB, 100 scans over 16 MP: the old cap let it through, and it takes about a second
    # of CPU to decode (every scan a pass over every block).
    bomb = with_scans(flat_progressive_jpeg((4000, 4000)), MAX_JPEG_SCANS)
    assert len(bomb) < 100_000
    pillow_decodes(bomb)
    assert "more than 25 scans" in refused(bomb)


def set_frame_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a JPEG) with its frame header claiming another size (its scans unchanged)."""
    sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def test_jpeg_with_a_usual_scan_script_is_never_refused_for_its_scans():
    # 10 scans (libjpeg's script for colour) over 63 MP are beyond the budget, but the pixel
    # limit refuses such a picture before decoding, and callers can say how large it is.
    data = set_frame_size(flat_progressive_jpeg(), 9000, 7000)
    assert image_info(data) == ("JPEG", 9000, 7000)
    with pytest.raises(ImageError, match="9000×7000"):
        decode_image(data)
    assert "more than 10 scans" in refused(with_scans(data, 11))


def test_jpeg_scans_before_the_frame_header_count_against_its_size():
    # libjpeg refuses such a file, but the walk meets the scans first: they still count.
    data = set_frame_size(encode(Image.new("RGB", (16, 16)), "JPEG"), 4000, 4000)
    empty_scan = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
    bomb = data[: after_app0(data)] + empty_scan * 30 + data[after_app0(data) :]
    assert "scans" in refused(bomb)


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def arithmetic_jpeg(side: int, refinements: int = 98) -> bytes:
    """A progressive arithmetic-coded colour JPEG (SOF10), made by hand: a DC scan of all
    three components, an AC scan of the first and ``refinements`` refinements of it. No scan
    holds a byte: libjpeg reads missing data as zeros and still visits every block."""
    components = b"".join(bytes((i, 0x11, 0)) for i in (1, 2, 3))  # 1×1 sampling, table 0

    def scan(ids: tuple[int, ...], first: int, last: int, high: int, low: int) -> bytes:
        selectors = b"".join(bytes((i, 0)) for i in ids)
        return jpeg_segment(0xDA, bytes((len(ids),)) + selectors + bytes((first, last, high << 4 | low)))

    return (
        b"\xff\xd8"
        + jpeg_segment(0xDB, b"\x00" + b"\x01" * 64)
        + jpeg_segment(0xCA, struct.pack(">BHHB", 8, side, side, 3) + components)
        + jpeg_segment(0xCC, b"\x00\x10\x10\x05")  # conditioning for DC and AC table 0
        + scan((1, 2, 3), 0, 0, 0, 0)
        + scan((1,), 1, 63, 0, 1)
        + scan((1,), 1, 63, 1, 0) * refinements
        + EOI
    )


def test_arithmetic_coded_jpeg_scan_bomb_is_refused():
    # 1.1 KB and 100 scans over 16 MP: over a second of CPU in Pillow (libjpeg-turbo decodes
    # arithmetic coding), though browsers and Discord show no arithmetic-coded JPEG at all.
    bomb = arithmetic_jpeg(4000)
    assert len(bomb) < 1_500 and bomb.count(SOS) == 100
    pillow_decodes(bomb)
    message = refused(bomb)
    assert "arithmetic coding" in message and "re-save" in message


@pytest.mark.parametrize(
    "marker, words",
    [
        (0xC3, "lossless"),
        *[(marker, "hierarchical") for marker in (0xC5, 0xC6, 0xC7)],
        *[(marker, "arithmetic coding") for marker in (0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)],
    ],
    ids=lambda value: hex(value) if isinstance(value, int) else value,
)
def test_jpeg_frames_browsers_cannot_show_are_refused(marker, words):
    data = encode(Image.new("RGB", (16, 16)), "JPEG")
    sof = data.index(b"\xff\xc0")
    edited = data[: sof + 1] + bytes((marker,)) + data[sof + 2 :]
    with Image.open(io.BytesIO(edited)) as img:  # Pillow's header parser takes all of them
        assert img.size == (16, 16)
    message = refused(edited)
    assert words in message and "cannot show" in message


def test_jpeg_with_arithmetic_coding_tables_is_refused():
    data = encode(Image.new("RGB", (16, 16)), "JPEG")
    with_dac = data[: after_app0(data)] + jpeg_segment(0xCC, b"\x00\x10") + data[after_app0(data) :]
    pillow_decodes(with_dac)  # a Huffman-coded file: libjpeg reads the tables and ignores them
    assert "arithmetic coding" in refused(with_dac)


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


def test_jpeg_of_fill_bytes_with_no_marker_after_them_is_refused():
    # No marker ends the run, so nothing may skip counting it: Pillow's header parser
    # would step over every byte in Python (8 MB of them: 7 s) before giving up.
    bomb = b"\xff\xd8" + b"\xff" * 1_000_000
    assert "stray bytes" in refused(bomb)


def after_app0(data: bytes) -> int:
    return 4 + struct.unpack(">H", data[4:6])[0]


@pytest.mark.parametrize("where", ["before the first scan", "after the scan"])
def test_jpeg_flooded_with_bare_markers_is_refused(where):
    # Each 0xFFD8 is a marker without a length: stepped over two bytes at a time, in Python,
    # by Pillow's header parser before the first scan and by any walk that does not count it.
    data = encode(Image.new("RGB", (16, 16)), "JPEG")
    flood = b"\xff\xd8" * 20_000
    if where == "before the first scan":
        bomb = data[: after_app0(data)] + flood + data[after_app0(data) :]
        with Image.open(io.BytesIO(bomb)) as img:  # Pillow's parser steps over all of them
            assert img.size == (16, 16)
    else:
        bomb = data[: -len(EOI)] + flood + EOI
    assert "segments" in refused(bomb)


@pytest.mark.parametrize(
    "padding",
    [b"\xff" * 1_000_000, b"\xff\xff\x00" * 100_000],
    ids=["one run of fill bytes", "many short runs"],
)
def test_jpeg_scan_padded_with_fill_bytes_is_refused(padding):
    # libjpeg skips fill bytes (0xFF before a marker or a stuffed zero), so the file decodes;
    # a walk looking at each of them would take a Python step, or a regex attempt, apiece.
    data = encode(Image.new("RGB", (16, 16)), "JPEG")
    bomb = data[: -len(EOI)] + padding + EOI
    pillow_decodes(bomb)
    assert "stray bytes" in refused(bomb)


def test_real_jpeg_metadata_fill_bytes_and_mpo_are_still_accepted():
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x010F] = "Camera"
    rich = encode(photo, "JPEG", exif=exif.tobytes(), icc_profile=bytes(range(256)) * 300,
                  xmp=b"<x:xmpmeta>" + b"x" * 2000 + b"</x:xmpmeta>", comment=b"hello")
    sos = rich.index(SOS)
    filled = rich[:sos] + b"\xff" * 50 + rich[sos : -len(EOI)] + b"\xff" * 50 + EOI
    pillow_decodes(filled)  # libjpeg allows fill bytes before any marker
    mpo = encode(photo, "MPO", save_all=True, append_images=[photo.rotate(180)])
    for data in (rich, filled, mpo):
        assert image_info(data) == ("JPEG", 64, 48)
        assert kept_size(data, max_pixels=10**7) == (64, 48)
        assert decode_image(data).size == (64, 48)


# --------------------------------------------------------------------------- PNG


def png_chunk(kind: bytes, payload: bytes = b"") -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_with(data: bytes, chunks: bytes, *, after_image_data: bool = False) -> bytes:
    """``data`` (a PNG) with ``chunks`` put before its first IDAT chunk, or before IEND."""
    at = data.index(b"IEND" if after_image_data else b"IDAT") - 4  # the chunk's length field
    return data[:at] + chunks + data[at:]


@pytest.mark.parametrize(
    "chunks, after_image_data",
    [
        (png_chunk(b"zzZz") * 5_000, False),
        (png_chunk(b"tEXt") * 5_000, True),
        (png_chunk(b"IDAT") * 60_000, False),
    ],
    ids=["private chunks", "empty texts after the pixels", "empty image data chunks"],
)
def test_png_split_into_thousands_of_chunks_is_refused(chunks, after_image_data):
    # Pillow reads every chunk in Python and keeps each private one: 700,000 empty chunks
    # (8 MB) cost about 7 s.
    bomb = png_with(encode(Image.new("RGB", (16, 16)), "PNG"), chunks,
                    after_image_data=after_image_data)
    assert len(bomb) < 1_000_000
    pillow_decodes(bomb)
    assert "chunks" in refused(bomb)


def test_png_with_thousands_of_frame_headers_is_refused():
    # Pillow parses every APNG frame header it meets, in Python; in a file without acTL
    # (not animated, to Pillow) it meets them all, wherever they are.
    frame = struct.Struct(">IIIIIHHBB")  # sequence, width, height, x, y, delay, dispose, blend
    headers = b"".join(png_chunk(b"fcTL", frame.pack(i, 16, 16, 0, 0, 1, 10, 0, 0))
                       for i in range(10_000))
    bomb = png_with(encode(Image.new("RGB", (16, 16)), "PNG"), headers)
    pillow_decodes(bomb)
    assert "frames" in refused(bomb)


@pytest.mark.parametrize("kind", [b"zTXt", b"iCCP"])
def test_png_with_many_compressed_chunks_is_refused(kind):
    # Pillow inflates each one, up to 1 MiB, and keeps up to 64 MiB of text: 64 chunks of
    # 1 KB cost 64 MiB of inflating (and here of memory) for a 70 KB file.
    inflated = zlib.compress(b"a" * ((1 << 20) - 64), 9)
    spam = b"".join(png_chunk(kind, b"key%d\x00\x00" % i + inflated) for i in range(64))
    bomb = png_with(encode(Image.new("RGB", (16, 16)), "PNG"), spam)
    assert len(bomb) < 100_000
    pillow_decodes(bomb)
    assert "compressed" in refused(bomb)


def resplit_image_data(data: bytes, size: int) -> bytes:
    """``data`` (a PNG with one IDAT chunk, as Pillow writes small ones) with its image data
    in chunks of ``size`` bytes, as other encoders split it (libpng: 8 KiB)."""
    start = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[start : start + 4])
    end = start + 12 + length
    assert data[end + 4 : end + 8] == b"IEND"  # the only IDAT chunk
    pixels = data[start + 8 : start + 8 + length]
    resplit = b"".join(png_chunk(b"IDAT", pixels[i : i + size]) for i in range(0, length, size))
    return data[:start] + resplit + data[end:]


def test_real_pngs_with_metadata_many_data_chunks_or_frames_are_still_accepted():
    rng = np.random.default_rng(2)
    photo = Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "an editor")
    info.add_text("Comment", "x" * 5000, zip=True)
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta/>", zip=True)
    rich = encode(photo, "PNG", pnginfo=info, icc_profile=bytes(range(256)) * 40,
                  exif=Image.Exif().tobytes())
    chunked = resplit_image_data(rich, 32)
    assert chunked.count(b"IDAT") > 400
    frames = [Image.new("RGB", (8, 6), (i % 256, 255 - i % 256, 0)) for i in range(600)]
    apng = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    assert apng.count(b"fcTL") == 600  # and 599 fdAT: frame chunks are not metadata
    for data in (rich, chunked):
        assert image_info(data) == ("PNG", 80, 64)
        assert kept_size(data, max_pixels=10**7) == (80, 64)
        assert np.array_equal(np.asarray(decode_image(data)), np.asarray(photo))
    assert image_info(apng) == ("PNG", 8, 6) and kept_size(apng, max_pixels=10**7) == (8, 6)
    assert decode_image(apng).getpixel((4, 3)) == (0, 255, 0)  # the first frame


# --------------------------------------------------------------------------- EXIF


def exif_ifd(entries: int, order: str = "<", padding: int = 0) -> bytes:
    """EXIF (a TIFF header and one IFD) of ``entries`` entries, each a distinct tag claiming
    1 GiB of data: Pillow reads them one at a time and skips each with a warning."""
    head = b"II*\x00" if order == "<" else b"MM\x00*"
    entry = struct.Struct(order + "HHII")  # tag, type (LONG), count, where the data are
    body = b"".join(entry.pack(tag, 4, 1 << 28, 8) for tag in range(entries))
    return head + struct.pack(order + "IH", 8, entries) + body + b"\x00" * (4 + padding)


def small_png() -> bytes:
    return encode(Image.new("RGB", (16, 16), (10, 200, 30)), "PNG")


def raw_exif_profile(kind: bytes, exif: bytes) -> bytes:
    """A PNG text chunk holding ``exif`` as ImageMagick writes it: hex, 36 bytes a line."""
    hexed = exif.hex()
    text = b"\nexif\n%8d\n" % len(exif) + "\n".join(
        hexed[i : i + 72] for i in range(0, len(hexed), 72)).encode()
    key = b"Raw profile type exif\x00"
    if kind == b"zTXt":
        return png_chunk(kind, key + b"\x00" + zlib.compress(text))
    if kind == b"iTXt":
        return png_chunk(kind, key + b"\x01\x00" + b"\x00\x00" + zlib.compress(text))
    return png_chunk(kind, key + text)


def pillow_exif_warnings(data: bytes) -> int:
    """How many warnings Pillow alone gives while turning ``data`` upright."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Image.open(io.BytesIO(data)) as img:
            ImageOps.exif_transpose(img)
    return len(caught)


# Real EXIF has tens of entries in its first IFD; 2,000 fit in 24 KB, or in a JPEG's APP1.
HUGE_IFD = exif_ifd(2_000)


@pytest.mark.parametrize(
    "make",
    [
        lambda: png_with(small_png(), png_chunk(b"eXIf", HUGE_IFD)),
        lambda: png_with(small_png(), png_chunk(b"eXIf", exif_ifd(2_000, ">")), after_image_data=True),
        lambda: png_with(small_png(), raw_exif_profile(b"zTXt", b"Exif\x00\x00" + HUGE_IFD)),
        lambda: png_with(small_png(), raw_exif_profile(b"iTXt", HUGE_IFD)),
        lambda: png_with(small_png(), raw_exif_profile(b"tEXt", HUGE_IFD), after_image_data=True),
        lambda: encode(Image.new("RGB", (16, 16)), "JPEG", exif=b"Exif\x00\x00" + HUGE_IFD),
        lambda: encode(Image.new("RGB", (16, 16)), "WEBP", exif=HUGE_IFD),
    ],
    ids=["PNG eXIf", "PNG eXIf after the pixels, big-endian", "PNG raw profile (zTXt)",
         "PNG raw profile (iTXt)", "PNG raw profile (tEXt) after the pixels", "JPEG APP1", "WebP EXIF"],
)
def test_exif_with_thousands_of_entries_is_refused(make):
    bomb = make()
    assert pillow_exif_warnings(bomb) >= 2_000  # one per entry, on stderr in a real process
    message = refused(bomb)
    assert "EXIF" in message and "without metadata" in message


@pytest.mark.parametrize(
    "make",
    [
        lambda: png_with(small_png(), png_chunk(b"eXIf", exif_ifd(10, padding=70_000))),
        lambda: png_with(small_png(), raw_exif_profile(b"zTXt", exif_ifd(10, padding=70_000))),
        lambda: encode(Image.new("RGB", (16, 16)), "WEBP", exif=exif_ifd(10, padding=70_000)),
    ],
    ids=["PNG eXIf", "PNG raw profile", "WebP EXIF"],
)
def test_exif_larger_than_a_jpeg_could_hold_is_refused(make):
    # A JPEG's APP1 segment holds at most 64 KiB, so no camera's EXIF is larger.
    assert "EXIF" in refused(make())


_EXIF_STDERR_SCRIPT = textwrap.dedent(
    """
    import sys
    from PIL import Image, ImageOps
    from nst_core.errors import ImageError
    from nst_core.images import decode_image

    if sys.argv[1] == "pillow":
        with Image.open(sys.argv[2]) as img:
            ImageOps.exif_transpose(img)
    else:
        try:
            decode_image(open(sys.argv[2], "rb").read())
        except ImageError as exc:
            print(exc)
    """
)


def test_png_with_a_65535_entry_exif_is_refused_without_a_flood_of_warnings(tmp_path):
    # Pillow alone writes about 13 MB of warnings to stderr turning this 790 KB file upright.
    path = tmp_path / "exif.png"
    path.write_bytes(png_with(small_png(), png_chunk(b"eXIf", exif_ifd(65_535))))
    runs = {
        how: subprocess.run([sys.executable, "-c", _EXIF_STDERR_SCRIPT, how, str(path)],
                            capture_output=True, text=True, timeout=120)
        for how in ("pillow", "checked")
    }
    assert runs["pillow"].returncode == 0 and len(runs["pillow"].stderr) > 5_000_000
    checked = runs["checked"]
    assert checked.returncode == 0 and "EXIF" in checked.stdout
    assert len(checked.stderr) < 200, checked.stderr[:1000]


def test_webp_with_thousands_of_chunks_before_its_exif_is_refused():
    # libwebp's demuxer skips unknown chunks in C; finding the EXIF after them takes the
    # walk a Python step each.
    data = encode(Image.new("RGB", (16, 16)), "WEBP", exif=exif_ifd(10))
    assert data[12:16] == b"VP8X"
    junk = b"JUNK\x00\x00\x00\x00" * 25_000
    bomb = data[:30] + junk + data[30:]
    bomb = bomb[:4] + struct.pack("<I", len(bomb) - 8) + bomb[8:]
    pillow_decodes(bomb)
    assert "chunks" in refused(bomb)


def camera_exif() -> bytes:
    """EXIF as a camera writes it, turned a quarter (orientation 6), with an Exif IFD."""
    exif = Image.Exif()
    for tag, value in [(0x010F, "Camera"), (0x0110, "Model 7"), (0x0131, "Firmware 1.2"),
                       (0x0132, "2024:05:01 10:00:00"), (0x011A, 72.0), (0x011B, 72.0),
                       (0x0128, 2), (0x0213, 1), (0x0112, 6)]:
        exif[tag] = value
    exif.get_ifd(0x8769).update({0x829A: 0.01, 0x8827: 200, 0x9003: "2024:05:01 10:00:00"})
    return exif.tobytes()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_real_exif_is_still_accepted_and_applied(fmt):
    photo = Image.new("RGB", (64, 48), (200, 30, 40))
    data = encode(photo, fmt, exif=camera_exif())
    assert image_info(data) == (fmt, 48, 64)  # orientation 6 swaps the sides
    assert kept_size(data, max_pixels=10**7) == (48, 64)
    assert decode_image(data).size == (48, 64)


# --------------------------------------------------------------------------- warnings


def png_claiming(width: int, height: int) -> bytes:
    """A 1×1 PNG whose IHDR (CRC fixed) claims another size."""
    data = bytearray(encode(Image.new("1", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_pillow_size_limit_holds_without_touching_the_process_warning_filters(monkeypatch):
    # The filters are one list for the whole process: catch_warnings on one checking thread
    # restores them when it exits, in the middle of another thread's decode. So nothing may
    # rely on them or change them, and Pillow is never left to warn about a size.
    big = png_claiming(10000, 10000)  # 100 MP: over Image.MAX_IMAGE_PIXELS, under twice that
    assert Image.MAX_IMAGE_PIXELS < 10000 * 10000 < 2 * Image.MAX_IMAGE_PIXELS

    def forbidden(*args, **kwargs):
        raise AssertionError("the process-wide warning filters were touched")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ("catch_warnings", "simplefilter", "filterwarnings", "resetwarnings"):
            monkeypatch.setattr(warnings, name, forbidden)
        try:
            assert image_info(big) == ("PNG", 10000, 10000)
            with pytest.raises(ImageError, match="10000×10000"):
                decode_image(big, max_pixels=10**9)
            with pytest.raises(ImageError, match="10000×10000"):
                decode_to_png(big, max_pixels=10**9, longer_side=KEEP_ALL)
            assert decode_image(encode(Image.new("RGB", (2, 2)), "PNG")).size == (2, 2)
        finally:
            monkeypatch.undo()  # pytest needs them back before it reports anything
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


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
