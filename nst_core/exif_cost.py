"""EXIF blocks far larger than a camera writes, refused before Pillow parses them.

Pillow parses an upload's EXIF (to turn the picture upright) an entry at a time in Python,
with a warning on stderr for each broken one, whichever format carries it: a JPEG's APP1
segment (:mod:`nst_core.jpeg_cost`), a PNG's eXIf or raw-profile text chunk and a WebP's
EXIF chunk (:mod:`nst_core.decode_cost`) all come here.
"""

from __future__ import annotations

import struct

from .errors import ImageError

__all__ = ["MAX_EXIF_BYTES", "EXIF_MESSAGE", "EXIF_HEADER", "check_exif"]

# EXIF is a little TIFF file: a header, then directories (IFDs) of 12-byte entries. Real
# EXIF fits in a JPEG's APP1 segment, so in 64 KiB, whatever format carries it, and its
# first IFD (the one Pillow reads to turn the picture upright) holds 10 to 30 entries from
# a camera: TIFF and EXIF define a few hundred tags for it and each appears at most once.
# Pillow reads the entries one at a time in Python and warns on stderr for each broken
# one: a 790 KB PNG with 65,535 of them costs 0.75 s and writes 13 MB of warnings. At
# 1,000 entries that is 15 ms and 200 KB at worst.
MAX_EXIF_BYTES = 64 * 1024
_MAX_EXIF_ENTRIES = 1_000
EXIF_MESSAGE = (
    "The picture's EXIF metadata block is far larger than a camera writes; "
    "please re-save it without metadata."
)
EXIF_HEADER = b"Exif\x00\x00"  # a JPEG APP1 segment's payload starts so when it holds EXIF


def check_exif(exif: bytes) -> None:
    """Refuse an EXIF block far larger than a camera writes: over 64 KiB, or a first IFD
    declaring more than :data:`_MAX_EXIF_ENTRIES` entries. Reads the TIFF header and that
    count only, as Pillow finds them (after up to two "Exif\\0\\0" prefixes)."""
    if len(exif) > MAX_EXIF_BYTES:
        raise ImageError(EXIF_MESSAGE)
    start = 0
    while start < 12 and exif[start : start + 6] == EXIF_HEADER:
        start += 6
    head = bytes(exif[start : start + 8])
    if len(head) < 8:
        return
    if head[:4] == b"II*\x00":
        order = "<"
    elif head[:4] == b"MM\x00*":
        order = ">"
    else:
        return  # not a TIFF header Pillow reads EXIF from (BigTIFF's is too long for it)
    (first_ifd,) = struct.unpack(order + "I", head[4:])
    at = start + first_ifd
    if at + 2 > len(exif):
        return  # Pillow stops at once, with a single warning
    (entries,) = struct.unpack_from(order + "H", exif, at)
    if entries > _MAX_EXIF_ENTRIES:
        raise ImageError(EXIF_MESSAGE)
