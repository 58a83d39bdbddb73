"""A JPEG's cost to decode, found from its markers before Pillow reads it.

The decoder goes over the whole image once per scan, and Pillow reads the headers before
the first scan a step per marker and per stray byte, in Python. The walk here reads the
markers as libjpeg does, counts the scans against the frame's size (the scan budget) and
the steps and stray bytes against their caps, refuses the codings browsers and Discord
cannot show, and hands APP1 EXIF to :func:`~nst_core.exif_cost.check_exif`. Called for
every JPEG upload by :func:`~nst_core.decode_cost.check_structure`.
"""

from __future__ import annotations

import re
import struct

from .errors import ImageError
from .exif_cost import EXIF_HEADER, check_exif

__all__ = ["MAX_JPEG_SCANS", "MAX_JPEG_SCAN_MEGAPIXELS", "check_jpeg_structure"]


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


def check_jpeg_structure(data: bytes) -> None:
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
        elif marker == 0xE1 and data[start + 4 : start + 10] == EXIF_HEADER:
            check_exif(data[start + 4 : start + 2 + length])


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
