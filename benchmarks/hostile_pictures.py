"""Small files that are costly to decode, made here for ``bot_load.py``'s hostile phase.

Each maker returns ``(filename, bytes, content type)``:

* :func:`sixteen_bit_png`: 4000x4000 16-bit greyscale (mode ``I;16``), a column ramp (~40 KB);
* :func:`scan_bomb_jpeg`: a flat 2000x2000 progressive JPEG whose last scan is repeated until
  it has ``scans`` scans (~38 KB for 1000): each scan is a pass over every pixel;
* :func:`palette_png`: 4000x4000 palette PNG with a transparent colour (~16 KB).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

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
