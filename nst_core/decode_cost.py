"""What makes a small upload costly to decode, found before Pillow reads it.

Pillow parses headers and chunks in Python, and a decoder's work can grow far beyond a
file's size (a JPEG's scans each cover the whole image). These checks walk each accepted
format's structure cheaply (regular expressions and ``struct``, in C, a bounded number of
Python steps) and refuse a file built to be slow, or one that browsers and Discord cannot
show anyway, with an :class:`~nst_core.errors.ImageError` a user can read. An EXIF block
far larger than a camera writes is refused too: Pillow parses it (to turn the picture
upright) an entry at a time, with a warning on stderr for each broken one.
:mod:`nst_core.images` calls :func:`check_structure` before opening any upload and
:func:`check_decode_cost` once the header is read.

This module walks PNG, GIF and WebP and judges RLE BMP; a JPEG's markers and scan budget
are :mod:`nst_core.jpeg_cost`'s, the EXIF limits :mod:`nst_core.exif_cost`'s.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Any

from .errors import ImageError
from .exif_cost import EXIF_MESSAGE, MAX_EXIF_BYTES, check_exif
from .jpeg_cost import check_jpeg_structure

__all__ = ["check_structure", "check_decode_cost"]

# Pillow reads a PNG's chunks one at a time in Python, all of them when decoding (those
# before the image data also just to open it), and keeps every private chunk: 8 MB of
# empty chunks cost about 7 s. Real PNGs have a handful of metadata chunks (a few dozen
# from the most talkative editors) and their image data in one chunk or in chunks of 8 KiB
# or more (libpng's size: about 1,000 for an 8 MB upload); an APNG adds two per frame. At
# the caps Pillow spends about 50 ms on the chunks and our walk (1 µs each) 20 ms.
_MAX_PNG_CHUNKS = 20_000
_MAX_PNG_METADATA_CHUNKS = 1_000
_PNG_IMAGE_DATA_CHUNKS = frozenset({b"IDAT", b"fdAT"})  # everything else is metadata...
# ...but an APNG's frame headers, counted on their own. Pillow parses each one it meets
# (about 6 µs apiece): all of them in a file not marked as animated. Only the first frame
# is decoded; real animations have a few hundred frames.
_MAX_PNG_FRAMES = 5_000
# Pillow inflates each of these (up to 1 MiB, its MAX_TEXT_CHUNK) whether it keeps the
# result or not, and keeps up to 64 MiB of text: a 1 KB chunk costs a millisecond and
# 1 MiB. Real files have one colour profile and a few compressed texts (EXIF, XMP).
_MAX_PNG_COMPRESSED_CHUNKS = 16
_PNG_COMPRESSED_CHUNKS = frozenset({b"iCCP", b"zTXt", b"iTXt"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHUNK_HEADER = struct.Struct(">I4s")  # length, type; the data and a CRC follow
# Pillow also takes EXIF from a text chunk named so (ImageMagick's hex "raw profile"), when
# there is no eXIf chunk: the same IFD as hex, in a chunk that may be compressed.
_PNG_TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})
_PNG_RAW_EXIF_KEY = b"Raw profile type exif\x00"
# A raw profile is "\nexif\n  <length>\n" and then the hex (two characters a byte and a
# newline every 36 bytes): anything much longer than 64 KiB of EXIF as hex is too large.
_MAX_RAW_EXIF_TEXT = 3 * MAX_EXIF_BYTES

# libwebp's demuxer keeps a WebP's EXIF chunk (which Pillow parses: see exif_cost) only in an
# extended file (VP8X first) whose header sets the EXIF flag, and gives the first one.
# Finding it takes a Python step per chunk before it: real files have a few, or one per
# frame of an animation, so walking 20,000 (about 10 ms) is plenty.
_MAX_WEBP_CHUNKS = 20_000
_WEBP_EXIF_FLAG = 0x08
_WEBP_CHUNK_HEADER = struct.Struct("<4sI")  # type, length; the data (padded to even) follow

# Pillow reads the blocks before a GIF's first image one sub-block (or stray byte) at a
# time in Python and keeps every comment sub-block: 8 MB of one-byte comment blocks cost
# seconds and over 300 MiB. Real GIFs have a handful; XMP read as blocks, a few thousand.
_MAX_GIF_HEADER_STEPS = 100_000
_GIF_BLOCK_START = re.compile(rb"[!,;]")

# Pillow decodes RLE-compressed BMP in Python, up to a step per pixel (about 10 s for a
# 5 KB, 40 MP file); real RLE BMPs are small pictures.
_MAX_RLE_BMP_PIXELS = 2_000_000
_BMP_RLE_COMPRESSIONS = (1, 2)  # BI_RLE8, BI_RLE4


def check_structure(data: bytes) -> None:
    """Refuse a JPEG, PNG, GIF or WebP whose structure would make reading it slow (other formats pass)."""
    head = bytes(data[:12])
    if head.startswith(b"\xff\xd8\xff"):  # what Pillow's JPEG plugin accepts
        check_jpeg_structure(data)
    elif head[:8] == _PNG_SIGNATURE:
        _check_png_structure(data)
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        _check_gif_structure(data)
    elif head[:4] == b"RIFF" and head[8:] == b"WEBP":
        _check_webp_structure(data)


def _check_png_structure(data: bytes) -> None:
    """Refuse a PNG split into so many chunks that Pillow would be slow to read it, or
    whose EXIF (an eXIf chunk, or a text chunk holding it as hex) is far too large.

    Walks the chunk headers (length and type) from the signature to IEND, jumping over
    each chunk's data: a struct unpack and a few comparisons per chunk, and the caps stop
    it after at most :data:`_MAX_PNG_CHUNKS` of them. Only EXIF is looked into. The walk
    stops where Pillow stops reading: at IEND, at a type that is not four letters, or at
    the end of the bytes.
    """
    size = len(data)
    unpack = _PNG_CHUNK_HEADER.unpack_from
    pos, chunks, metadata, frames, compressed = len(_PNG_SIGNATURE), 0, 0, 0, 0
    while pos + 8 <= size:
        length, kind = unpack(data, pos)
        if kind == b"IEND" or not kind.isalpha():
            return
        chunks += 1
        if kind == b"fcTL":
            frames += 1
            if frames > _MAX_PNG_FRAMES:
                raise ImageError(
                    f"The animated PNG has more than {_MAX_PNG_FRAMES:,} frames; only its first "
                    "is used, so please send that frame as a still PNG."
                )
        elif kind not in _PNG_IMAGE_DATA_CHUNKS:
            metadata += 1
            if kind in _PNG_COMPRESSED_CHUNKS:
                compressed += 1
                if compressed > _MAX_PNG_COMPRESSED_CHUNKS:
                    raise ImageError(
                        "The PNG holds far more compressed text or colour profile chunks than "
                        "a real picture; please re-save it as a normal PNG."
                    )
        if chunks > _MAX_PNG_CHUNKS or metadata > _MAX_PNG_METADATA_CHUNKS:
            raise ImageError(
                "The PNG is split into far more chunks than a real picture; "
                "please re-save it as a normal PNG."
            )
        start, pos = pos + 8, pos + 12 + length  # length and type, the data, the CRC
        if kind == b"eXIf":
            if length > MAX_EXIF_BYTES:  # before copying any of it
                raise ImageError(EXIF_MESSAGE)
            check_exif(data[start : start + length])
        elif kind in _PNG_TEXT_CHUNKS and data[start : start + len(_PNG_RAW_EXIF_KEY)] == _PNG_RAW_EXIF_KEY:
            _check_raw_exif_profile(kind, bytes(data[start + len(_PNG_RAW_EXIF_KEY) : start + length]))


def _check_raw_exif_profile(kind: bytes, payload: bytes) -> None:
    """Refuse EXIF held as hex in a PNG text chunk (``payload``: its data after the keyword),
    as Pillow reads it: the text after its third line, newlines dropped."""
    compressed = kind == b"zTXt"  # a compression method byte, then zlib data
    text = payload[1:] if compressed else payload
    if kind == b"iTXt":  # a compression flag and method, a language, a translated keyword
        compressed = payload[:1] not in (b"", b"\x00")
        parts = payload[2:].split(b"\x00", 2)
        if len(parts) < 3:
            return  # Pillow cannot read it either
        text = parts[2]
    if compressed:
        try:  # never more of it than the limit lets through
            text = zlib.decompressobj().decompress(text, _MAX_RAW_EXIF_TEXT + 1)
        except zlib.error:
            return  # Pillow gives its usual error
    if len(text) > _MAX_RAW_EXIF_TEXT:
        raise ImageError(EXIF_MESSAGE)
    line = 0
    for _ in range(3):
        line = text.find(b"\n", line) + 1
        if not line:
            return  # no hex at all
    try:
        exif = bytes.fromhex(text[line:].replace(b"\n", b"").decode("latin-1"))
    except ValueError:
        return  # Pillow fails to read it too, before any entry
    check_exif(exif)


def _check_gif_structure(data: bytes) -> None:
    """Refuse a GIF whose blocks before the first image would make Pillow slow to open it."""
    size = len(data)
    if size < 13:
        return
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global palette
    steps = 0
    while pos < size and steps <= _MAX_GIF_HEADER_STEPS:
        byte = data[pos]
        if byte in b",;":  # the first image, or the end: Pillow stops reading there
            return
        if byte != 0x21:  # not "!": Pillow steps over stray bytes one at a time
            found = _GIF_BLOCK_START.search(data, pos)
            nxt = size if found is None else found.start()
            steps, pos = steps + nxt - pos, nxt
            continue
        pos += 2  # "!" and the extension's label, then its sub-blocks
        while pos < size and steps <= _MAX_GIF_HEADER_STEPS:
            length = data[pos]
            pos, steps = pos + 1 + length, steps + 1
            if length == 0:
                break
    if steps > _MAX_GIF_HEADER_STEPS:
        raise ImageError(
            "The GIF holds far more header blocks before its picture than a real GIF; "
            "please re-save it as a normal GIF or PNG."
        )


def _check_webp_structure(data: bytes) -> None:
    """Refuse a WebP whose EXIF chunk, the first one, as libwebp gives it, is far too large.

    Walks the chunks after the RIFF header only where the VP8X header says there is EXIF,
    up to the first EXIF chunk: a struct unpack per chunk, at most :data:`_MAX_WEBP_CHUNKS`.
    """
    size = len(data)
    if size < 21 or data[12:16] != b"VP8X" or not data[20] & _WEBP_EXIF_FLAG:
        return
    unpack = _WEBP_CHUNK_HEADER.unpack_from
    pos, chunks = 12, 0
    while pos + 8 <= size:
        kind, length = unpack(data, pos)
        if kind == b"EXIF":
            if length > MAX_EXIF_BYTES:
                raise ImageError(EXIF_MESSAGE)
            check_exif(data[pos + 8 : pos + 8 + length])
            return
        chunks += 1
        if chunks > _MAX_WEBP_CHUNKS:
            raise ImageError(
                "The WebP is split into far more chunks than a real picture; "
                "please re-save it as a normal WebP or PNG."
            )
        pos += 8 + length + (length & 1)


def check_decode_cost(img: Any) -> None:
    """Refuse, from the header, what Pillow would decode far more slowly than its size says."""
    if img.format == "BMP" and img.info.get("compression") in _BMP_RLE_COMPRESSIONS:
        width, height = img.size
        if width * height > _MAX_RLE_BMP_PIXELS:
            raise ImageError(
                f"RLE-compressed BMP files are accepted up to {_MAX_RLE_BMP_PIXELS / 1e6:.1f} MP and this "
                f"one is {width}×{height} pixels; please re-save it as a PNG."
            )
