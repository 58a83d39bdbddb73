"""Small files that are costly to decode, made here for ``bot_load.py``'s hostile phase.

Each maker returns ``(filename, bytes, content type)``:

* :func:`sixteen_bit_png`: 4000x4000 16-bit greyscale (mode ``I;16``), a column ramp (~40 KB);
* :func:`scan_bomb_jpeg`: a flat 2000x2000 progressive JPEG whose last scan is repeated until
  it has ``scans`` scans (~38 KB for 1000): each scan is a pass over every pixel;
* :func:`palette_png`: 4000x4000 palette PNG with a transparent colour (~16 KB);
* :func:`worst_accepted_jpeg`: the costliest JPEG the upload checks still let through: a flat
  4000x4000 progressive JPEG (4:4:4) with as many scans as the scans × megapixels budget
  allows (25, ~190 KB): about 0.4 s of CPU in ``decode_image``, what a real 20 MP
  progressive photo takes. Not in :data:`HOSTILE`: it is accepted, so it loads the checks
  (and makes a job), it is not refused.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from nst_core.jpeg_cost import MAX_JPEG_SCAN_MEGAPIXELS, MAX_JPEG_SCANS
from nst_core.images import image_info

SOS, EOI = b"\xff\xda", b"\xff\xd9"


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def sixteen_bit_png(side: int = 4000) -> tuple[str, bytes, str]:
    ramp = np.broadcast_to((np.arange(side, dtype=np.uint16) * (65535 // max(1, side - 1)))[None, :], (side, side))
    img = Image.fromarray(np.ascontiguousarray(ramp))
    assert img.mode == "I;16", img.mode
    return "grey16.png", _encode(img, "PNG"), "image/png"


def scan_bomb_jpeg(side: int = 2000, scans: int = 1000) -> tuple[str, bytes, str]:
    data = _encode(Image.new("RGB", (side, side), (120, 130, 140)), "JPEG", progressive=True)
    end = data.rindex(EOI)
    last_scan = data[data.rindex(SOS):end]
    bomb = data[:end] + last_scan * (scans - data.count(SOS)) + EOI
    assert bomb.count(SOS) == scans
    return "scans.jpg", bomb, "image/jpeg"


def worst_accepted_jpeg(side: int = 4000) -> tuple[str, bytes, str]:
    """A ``side``x``side`` progressive JPEG at the edge of the decode-cost budget: its last
    scan (a refinement of the brightness, over every block) repeated while the budget allows.
    Chroma is not subsampled, which makes the passes after the scans costlier too."""
    data = _encode(Image.new("RGB", (side, side), (120, 130, 140)), "JPEG", progressive=True, subsampling=0)
    scans = min(MAX_JPEG_SCANS, max(data.count(SOS), MAX_JPEG_SCAN_MEGAPIXELS * 10**6 // (side * side)))
    end = data.rindex(EOI)
    last_scan = data[data.rindex(SOS):end]
    worst = data[:end] + last_scan * (scans - data.count(SOS)) + EOI
    assert worst.count(SOS) == scans
    assert image_info(worst) == ("JPEG", side, side)  # still let through: else the rule changed
    return "worst-accepted.jpg", worst, "image/jpeg"


def palette_png(side: int = 4000) -> tuple[str, bytes, str]:
    img = Image.new("P", (side, side), 0)
    img.putpalette([0, 0, 0, 0, 200, 0] + [0] * (254 * 3))
    img.paste(1, (side // 4, side // 4, 3 * side // 4, 3 * side // 4))
    return "palette.png", _encode(img, "PNG", transparency=0), "image/png"


# (label, maker) in the order the hostile phase hands them out
HOSTILE = (
    ("16-bit grey PNG 4000x4000", sixteen_bit_png),
    ("progressive JPEG, 1000 scans", scan_bomb_jpeg),
    ("palette PNG 4000x4000 + transparency", palette_png),
)
