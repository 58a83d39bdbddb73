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
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Any

from .errors import ImageError

__all__ = ["MAX_JPEG_SCANS", "MAX_JPEG_SCAN_MEGAPIXELS", "check_structure", "check_decode_cost"]


# A baseline JPEG has one scan (or one per colour), a progressive one about 10 (libjpeg's
# default script for colour; 6 for grey), odd encoders a few dozen. The decoder goes over
# the whole image once per scan, so the cost is about scans × pixels, and a small file
# repeating a scan that holds no data costs far more than its size: a flat 4000×4000
# progressive JPEG with 100 scans is 97 KB and takes 1.0-1.3 s of CPU to decode, against
# 0.15 s with its 10 scans. So scans × megapixels is bounded, and the scan count too.
MAX_JPEG_SCANS = 100
# Measured with Pillow 13 (libjpeg-turbo 3) on 2 cores: each such scan costs 0.6-0.8 ms
# per megapixel. Photo-like JPEGs at quality 90 take 0.12 s (16 MP baseline), 0.15-0.22 s
# (20 MP baseline), 0.29-0.31 s (16 MP progressive), 0.38 s (20 MP progressive) and
# 0.6-0.7 s (40 MP progressive). At 400 the costliest file let through, 16 MP with 25
# such scans, takes 0.3-0.4 s, what a real 16-20 MP progressive photo takes; a normal
# progressive picture passes up to DEFAULT_MAX_PIXELS (40 MP × 10 scans), and pictures
# up to 4 MP may have 100 scans.
MAX_JPEG_SCAN_MEGAPIXELS = 400
# A picture with no more scans than libjpeg's default script is never refused for its
# scans, however large: callers refuse it by its pixel count before decoding (and can say
# how large it is), and that limit bounds its cost.
_JPEG_USUAL_SCANS = 10

# Pillow reads a JPEG's headers in Python, a step per marker and per stray or fill byte
# before the first scan, and keeps every APP and COM segment: an 8 MB file of tiny segments
# or bare markers costs seconds and over 100 MiB before any pixel. Real photos have a few
# dozen markers (restart markers, which the walk skips in C, aside) and no stray bytes, so
# the caps cost them nothing. They also bound our own walk, which takes a Python step per
# marker and per run of fill bytes inside a scan: at most a few thousand, whatever the file.
# Pillow's header loop takes about 0.5 µs per stray byte, so 16 KiB of them cost about
# 10 ms (paid twice by a caller that also asks image_info); fill bytes in scans count too.
_MAX_JPEG_STEPS = 2_000
_MAX_JPEG_STRAY_BYTES = 16 * 1024

# Any marker except RSTn, TEM and the reserved 0xFF02-0xFFBF, which libjpeg steps over (or
# refuses); in entropy-coded data 0xFF00 is a stuffed byte, so skipping to the next match
# skips a scan's data exactly as the decoder reads it.
_JPEG_MARKER = re.compile(rb"\xff[\xc0-\xcf\xd8-\xfe]")
# Markers libjpeg skips (or refuses) by their length field: SOFn, DHT and DAC; SOS, DQT,
# DNL and DRI; APPn; COM. Any other is stepped over as its two bytes, so the walk never
# jumps over something the decoder would read.
_JPEG_SKIPPED_BY_LENGTH = frozenset(
    [*range(0xC0, 0xD0), *range(0xDA, 0xDE), *range(0xE0, 0xF0), 0xFE]
)
# Inside a scan's data 0xFF is always followed by 0x00, a restart marker or a marker, so
# 0xFFFF can only start a run of fill bytes. Runs are found and skipped with these, in C.
_JPEG_FILL = re.compile(rb"\xff\xff")
_NOT_FF = re.compile(rb"[^\xff]")
_JPEG_HEADERS_MESSAGE = (
    "The JPEG holds far more segments or stray bytes than a real photo; "
    "please re-save it as a normal JPEG or PNG."
)
# Browsers (so Discord's clients) show only Huffman-coded baseline, extended and
# progressive JPEGs (SOF0-SOF2). libjpeg-turbo decodes arithmetic coding, whose scans cost
# as much as Huffman ones but hold no bytes at all when empty (100 of them over 16 MP: a
# 1.1 KB file taking 1.2 s), and lossless frames; no user means to send any of these.
# Refused at the first such marker: a frame header, or DAC (arithmetic coding tables).
_JPEG_UNSHOWABLE_MESSAGE = (
    "The JPEG {}, which Discord and browsers cannot show; please re-save it as a normal JPEG or PNG."
)
_JPEG_UNSHOWABLE = {
    0xC3: "is a lossless JPEG",
    **dict.fromkeys((0xC5, 0xC6, 0xC7), "is a hierarchical JPEG"),
    **dict.fromkeys((0xC9, 0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF), "uses arithmetic coding"),
}
_JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2})  # baseline, extended, progressive (Huffman)
_JPEG_EXIF = b"Exif\x00\x00"  # an APP1 segment's payload starts so when it holds EXIF

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

# EXIF is a little TIFF file: a header, then directories (IFDs) of 12-byte entries. Real
# EXIF fits in a JPEG's APP1 segment, so in 64 KiB, whatever format carries it, and its
# first IFD (the one Pillow reads to turn the picture upright) holds 10 to 30 entries from
# a camera: TIFF and EXIF define a few hundred tags for it and each appears at most once.
# Pillow reads the entries one at a time in Python and warns on stderr for each broken
# one: a 790 KB PNG with 65,535 of them costs 0.75 s and writes 13 MB of warnings. At
# 1,000 entries that is 15 ms and 200 KB at worst.
_MAX_EXIF_BYTES = 64 * 1024
_MAX_EXIF_ENTRIES = 1_000
# A raw profile is "\nexif\n  <length>\n" and then the hex (two characters a byte and a
# newline every 36 bytes): anything much longer than 64 KiB of EXIF as hex is too large.
_MAX_RAW_EXIF_TEXT = 3 * _MAX_EXIF_BYTES
_EXIF_MESSAGE = (
    "The picture's EXIF metadata block is far larger than a camera writes; "
    "please re-save it without metadata."
)

# libwebp's demuxer keeps a WebP's EXIF chunk (for Pillow to parse as above) only in an
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
        _check_jpeg_structure(data)
    elif head[:8] == _PNG_SIGNATURE:
        _check_png_structure(data)
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        _check_gif_structure(data)
    elif head[:4] == b"RIFF" and head[8:] == b"WEBP":
        _check_webp_structure(data)


def _check_jpeg_structure(data: bytes) -> None:
    """Refuse a JPEG whose scans, segments or EXIF would make reading it slow, or that
    browsers cannot show; cheap, linear.

    Walks the marker segments as libjpeg reads them: by their lengths, and after each
    SOS over the entropy-coded data up to the next marker, so every scan the decoder
    would run is counted, against the frame size read from the SOFn segment. Every
    other byte between markers is stray (or fill) and counts, up to the end of the file
    when no marker follows; so does every marker and every run of fill bytes inside a
    scan, one Python step each. Runs of bytes are searched in C and never further than
    the stray bytes left allow. Where the bytes stop making sense the walk just stops,
    and Pillow gives its usual error.
    """
    size = len(data)
    pos, scans, steps, stray = 2, 0, 0, 0
    frame = (0, 0)  # width, height: none yet (scans before it are counted all the same)
    in_scan = False  # after an SOS segment come its entropy-coded data, not stray bytes
    next_fill = -1  # where the next 0xFFFF inside a scan is (size: none), once searched
    while True:
        if steps > _MAX_JPEG_STEPS or stray > _MAX_JPEG_STRAY_BYTES:
            raise ImageError(_JPEG_HEADERS_MESSAGE)
        if pos >= size:
            return
        steps += 1
        budget = _MAX_JPEG_STRAY_BYTES - stray
        if not in_scan:
            window = min(size, pos + budget + 2)  # a marker beyond it is over the budget
            found = _JPEG_MARKER.search(data, pos, window)
            if found is None:
                stray, pos = stray + window - pos, window
                continue
            start = found.start()
            stray += start - pos
        else:
            if next_fill < pos:
                fill = _JPEG_FILL.search(data, pos)
                next_fill = size if fill is None else fill.start()
            found = _JPEG_MARKER.search(data, pos, next_fill)
            if found is not None:
                start = found.start()
            elif next_fill == size:
                return  # the scan's data run to the end: libjpeg reads them as they are
            else:
                # Fill bytes: all but the last 0xFF of the run, which pairs with the byte
                # after it (a marker, a stuffed zero, a restart marker).
                window = min(size, next_fill + budget + 2)
                run_end = _NOT_FF.search(data, next_fill + 2, window)
                if run_end is None:  # over the budget, or 0xFF up to the end of the file
                    stray, pos = stray + window - next_fill, window
                    continue
                end = run_end.start()
                stray += end - next_fill - 1
                if _JPEG_MARKER.match(data, end - 1) is None:
                    pos = end + 1  # still the scan's data
                    continue
                start = end - 1
        marker = data[start + 1]
        in_scan = False
        if marker == 0xD9 and scans:
            # EOI: the decoder stops here (an MPO's next picture follows). Before the first
            # scan Pillow's header parser reads on, so the walk does too.
            return
        if marker in _JPEG_UNSHOWABLE:
            raise ImageError(_JPEG_UNSHOWABLE_MESSAGE.format(_JPEG_UNSHOWABLE[marker]))
        if marker not in _JPEG_SKIPPED_BY_LENGTH:
            pos = start + 2
            continue
        if start + 4 > size:
            return
        length = (data[start + 2] << 8) | data[start + 3]
        pos = start + 2 + max(length, 2)  # libjpeg reads a length under 2 as no data
        if marker == 0xDA:
            in_scan = True
            scans += 1
            _check_jpeg_scans(scans, frame)
        elif marker in _JPEG_FRAMES and start + 9 <= size:
            height, width = struct.unpack_from(">HH", data, start + 5)  # after the precision
            if width * height > frame[0] * frame[1]:  # of two (libjpeg refuses those), the larger
                frame = (width, height)
            _check_jpeg_scans(scans, frame)
        elif marker == 0xE1 and data[start + 4 : start + 10] == _JPEG_EXIF:
            _check_exif(data[start + 4 : start + 2 + length])


def _check_jpeg_scans(scans: int, frame: tuple[int, int]) -> None:
    """Refuse ``scans`` scans over a ``frame`` (width, height) picture: too many to decode."""
    if scans > MAX_JPEG_SCANS:
        raise ImageError(
            f"The JPEG has more than {MAX_JPEG_SCANS} scans, far more than a real photo; "
            "please re-save it as a normal JPEG or PNG."
        )
    width, height = frame
    if scans <= _JPEG_USUAL_SCANS or scans * width * height <= MAX_JPEG_SCAN_MEGAPIXELS * 10**6:
        return
    allowed = max(_JPEG_USUAL_SCANS, MAX_JPEG_SCAN_MEGAPIXELS * 10**6 // (width * height))
    raise ImageError(
        f"The JPEG has more than {allowed} scans, far more than a real photo of {width}×{height} "
        "pixels, and would take too long to decode; please re-save it as a normal JPEG, "
        "or send a smaller picture."
    )


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
            if length > _MAX_EXIF_BYTES:  # before copying any of it
                raise ImageError(_EXIF_MESSAGE)
            _check_exif(data[start : start + length])
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
        raise ImageError(_EXIF_MESSAGE)
    line = 0
    for _ in range(3):
        line = text.find(b"\n", line) + 1
        if not line:
            return  # no hex at all
    try:
        exif = bytes.fromhex(text[line:].replace(b"\n", b"").decode("latin-1"))
    except ValueError:
        return  # Pillow fails to read it too, before any entry
    _check_exif(exif)


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
            if length > _MAX_EXIF_BYTES:
                raise ImageError(_EXIF_MESSAGE)
            _check_exif(data[pos + 8 : pos + 8 + length])
            return
        chunks += 1
        if chunks > _MAX_WEBP_CHUNKS:
            raise ImageError(
                "The WebP is split into far more chunks than a real picture; "
                "please re-save it as a normal WebP or PNG."
            )
        pos += 8 + length + (length & 1)


def _check_exif(exif: bytes) -> None:
    """Refuse an EXIF block far larger than a camera writes: over 64 KiB, or a first IFD
    declaring more than :data:`_MAX_EXIF_ENTRIES` entries. Reads the TIFF header and that
    count only, as Pillow finds them (after up to two "Exif\\0\\0" prefixes)."""
    if len(exif) > _MAX_EXIF_BYTES:
        raise ImageError(_EXIF_MESSAGE)
    start = 0
    while start < 12 and exif[start : start + 6] == _JPEG_EXIF:
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
        raise ImageError(_EXIF_MESSAGE)


def check_decode_cost(img: Any) -> None:
    """Refuse, from the header, what Pillow would decode far more slowly than its size says."""
    if img.format == "BMP" and img.info.get("compression") in _BMP_RLE_COMPRESSIONS:
        width, height = img.size
        if width * height > _MAX_RLE_BMP_PIXELS:
            raise ImageError(
                f"RLE-compressed BMP files are accepted up to {_MAX_RLE_BMP_PIXELS / 1e6:.1f} MP and this "
                f"one is {width}×{height} pixels; please re-save it as a PNG."
            )
