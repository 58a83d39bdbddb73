"""Crafted files, what they would cost to decode and what the upload checks say of them.

A JPEG's decode cost is about its scans × its megapixels (each scan is a pass over every
block); the checks allow MAX_JPEG_SCAN_MEGAPIXELS = 400 of it, and 100 scans at most.
Every file is made here (a JPEG unless named), and this table is checked against ``ROWS``:

    file                               | bytes     | scans × MP      | verdict
    arithmetic, progressive, 4000×4000 | ≤ 1,500   | 100 × 16 = 1600 | refused: "arithmetic coding"
    Huffman, progressive, 4000×4000    | ≤ 100,000 | 100 × 16 = 1600 | refused: "more than 25 scans"
    the same, at the budget's edge     | ≤ 100,000 | 25 × 16 = 400   | accepted
    the same, one scan over it         | ≤ 100,000 | 26 × 16 = 416   | refused: "more than 25 scans"
    baseline gradient, 5472×3648, q90  | ≤ 600,000 | 1 × 20 = 20     | accepted
    progressive gradient, 5472×3648    | ≤ 300,000 | 10 × 20 = 200   | accepted
    small progressive, 1000×1000       | ≤ 10,000  | 100 × 1 = 100   | accepted
    lossless (SOF3), 1000×1000         | ≤ 20,000  | 1 × 1 = 1       | refused: "lossless"
    PNG, eXIf of 65,535 entries        | ≤ 800,000 | —               | refused: "EXIF"
    WebP, EXIF of 65,535 entries       | ≤ 800,000 | —               | refused: "EXIF"
    PNG, a camera's eXIf               | ≤ 1,000   | —               | accepted

Measured once by hand (CPU time, Pillow 13 with libjpeg-turbo; nothing is timed here):
Pillow alone takes 1.2 s to decode the arithmetic file and 1.0 s the 100-scan Huffman one;
decode_image takes 0.3 s on the one at the budget's edge and 0.13 s on the 20 MP baseline
one. Accepted files are checked with ``image_info`` (header and structure, no pixels),
and the small progressive one is decoded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import pytest
from PIL import Image

from nst_core.images import decode_image, image_info
from nst_core.jpeg_cost import MAX_JPEG_SCAN_MEGAPIXELS
from test_image_bombs import (
    SOS,
    arithmetic_jpeg,
    camera_exif,
    encode,
    exif_ifd,
    flat_progressive_jpeg,
    refused,
    with_scans,
)


@dataclass(frozen=True)
class Row:
    name: str
    make: Callable[[], bytes]
    max_bytes: int
    size: tuple[int, int]  # as the header says
    scans: int | None  # a JPEG's scans; None for other formats
    verdict: str  # "accepted", or words of the refusal

    def cells(self) -> tuple[str, str, str, str]:
        cost = "—"
        if self.scans is not None:
            megapixels = self.size[0] * self.size[1] / 1e6
            cost = f"{self.scans} × {megapixels:.3g} = {self.scans * megapixels:.0f}"
        verdict = self.verdict if self.verdict == "accepted" else f'refused: "{self.verdict}"'
        return self.name, f"≤ {self.max_bytes:,}", cost, verdict


def huffman_16mp(scans: int) -> bytes:
    return with_scans(flat_progressive_jpeg((4000, 4000)), scans)


def gradient_20mp(**kwargs) -> bytes:
    # Upscaled, not drawn: a 20 MP picture in a tenth of a second.
    picture = Image.linear_gradient("L").resize((5472, 3648)).convert("RGB")
    return encode(picture, "JPEG", quality=90, **kwargs)


def lossless_jpeg() -> bytes:
    """A baseline JPEG whose frame header says lossless (SOF3): the check stops there."""
    data = encode(Image.new("L", (1000, 1000), 128), "JPEG")
    sof = data.index(b"\xff\xc0")
    return data[: sof + 1] + b"\xc3" + data[sof + 2 :]


def with_exif(fmt: str, exif: bytes) -> bytes:
    return encode(Image.new("RGB", (16, 16), (9, 99, 199)), fmt, exif=exif)


ROWS = [
    Row("arithmetic, progressive, 4000×4000", lambda: arithmetic_jpeg(4000),
        1_500, (4000, 4000), 100, "arithmetic coding"),
    Row("Huffman, progressive, 4000×4000", lambda: huffman_16mp(100),
        100_000, (4000, 4000), 100, "more than 25 scans"),
    Row("the same, at the budget's edge", lambda: huffman_16mp(25),
        100_000, (4000, 4000), 25, "accepted"),
    Row("the same, one scan over it", lambda: huffman_16mp(26),
        100_000, (4000, 4000), 26, "more than 25 scans"),
    Row("baseline gradient, 5472×3648, q90", gradient_20mp,
        600_000, (5472, 3648), 1, "accepted"),
    Row("progressive gradient, 5472×3648", lambda: gradient_20mp(progressive=True),
        300_000, (5472, 3648), 10, "accepted"),
    Row("small progressive, 1000×1000", lambda: with_scans(flat_progressive_jpeg((1000, 1000)), 100),
        10_000, (1000, 1000), 100, "accepted"),
    Row("lossless (SOF3), 1000×1000", lossless_jpeg,
        20_000, (1000, 1000), 1, "lossless"),
    Row("PNG, eXIf of 65,535 entries", lambda: with_exif("PNG", exif_ifd(65_535)),
        800_000, (16, 16), None, "EXIF"),
    Row("WebP, EXIF of 65,535 entries", lambda: with_exif("WEBP", exif_ifd(65_535)),
        800_000, (16, 16), None, "EXIF"),
    Row("PNG, a camera's eXIf", lambda: with_exif("PNG", camera_exif()),
        1_000, (16, 16), None, "accepted"),
]


def table() -> list[str]:
    """The rows as the module docstring shows them, one line each."""
    lines = [("file", "bytes", "scans × MP", "verdict"), *(row.cells() for row in ROWS)]
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    return [" | ".join([*(cell.ljust(width) for cell, width in zip(line, widths)), line[3]])
            for line in lines]


def test_the_docstring_table_matches_the_rows():
    shown = [line[4:] for line in __doc__.splitlines() if line.startswith("    ")]
    assert shown == table()


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.name)
def test_crafted_file(row):
    data = row.make()
    assert len(data) <= row.max_bytes
    with Image.open(io.BytesIO(data)) as img:  # Pillow alone opens every one of them
        assert img.size == row.size
        fmt = img.format
    if row.scans is not None:
        assert data.count(SOS) == row.scans
        assert fmt == "JPEG"
    if row.verdict == "accepted":
        assert image_info(data) == (fmt, *row.size)
        if row.scans is not None:  # within the budget
            assert row.scans * row.size[0] * row.size[1] <= MAX_JPEG_SCAN_MEGAPIXELS * 10**6
    else:
        assert row.verdict in refused(data)  # image_info, decode_image and decode_to_png agree


def test_the_smallest_accepted_progressive_jpeg_decodes():
    (row,) = [row for row in ROWS if row.name.startswith("small progressive")]
    assert decode_image(row.make()).size == row.size
