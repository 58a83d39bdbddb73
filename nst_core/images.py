"""Untrusted uploads in: checking and decoding the images users send.

Pillow only (no TensorFlow), so the bot can check uploads cheaply. Everything that reads
bytes from a user treats them as hostile: only a handful of decoders are allowed to look at
them, the pixel count and the structures that make a small file slow or memory-hungry to
read (a JPEG's scans against its size and its segments, JPEGs browsers cannot show,
oversized EXIF, a PNG's chunks, a GIF's header blocks, a large RLE BMP;
:mod:`nst_core.decode_cost`) are checked before any pixel is decoded, conversions work in
bands of rows (:mod:`nst_core.pixels`), and every failure becomes an :class:`ImageError`
whose message can be shown to the user as is. Nothing here touches process-wide state
(warning filters, Pillow's settings), so checks may run on several threads at once.

What happens to a decoded image (modes, arrays, resizing, encoding) is
:mod:`nst_core.pixels`'s; ``to_rgb`` and ``fit_to_bytes`` are importable from here too,
where the bot imports them.
"""

from __future__ import annotations

import io
import struct
from typing import Any

from PIL import Image, ImageOps

from .decode_cost import check_decode_cost, check_structure
from .errors import ImageError
from .pixels import fit_to_bytes, resize_longer_side, to_rgb

__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "decode_image",
    "decode_to_png",
    "image_info",
    "to_rgb",
    "fit_to_bytes",
]

# Pillow format names of the decoders user bytes may reach. Fewer decoders, less attack
# surface: TIFF, ICO, PSD, EPS (Ghostscript!) and friends never see an upload.
ACCEPTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_ACCEPTED_TEXT = "PNG, JPEG, WebP, GIF or BMP"
_FORMAT_NAMES = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP"}

DEFAULT_MAX_PIXELS = 40_000_000

# Signatures used only to word the error message once Pillow has refused a file.
_ACCEPTED_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"WEBP", 8, "WebP"),  # after "RIFF" and the chunk size
)
_OTHER_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"%PDF", 0, "PDF"),
    (b"8BPS", 0, "Photoshop (PSD)"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypheix", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"ftypavif", 4, "AVIF"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", 0, "JPEG XL"),
)


# --------------------------------------------------------------------------- decoding


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an uploaded image into a loaded RGB image.

    Accepts PNG, JPEG, WebP, GIF (first frame), APNG (first frame) and BMP. EXIF
    orientation is applied, transparency is composited over white and every colour mode
    becomes 8-bit RGB. Raises :class:`ImageError` for anything else: empty, not an image,
    an unsupported format, truncated or corrupt data, more than ``max_pixels`` pixels
    (Pillow's ``Image.MAX_IMAGE_PIXELS`` applies too when it is lower), or a structure
    that would make decoding far costlier than the file's size suggests (more JPEG
    scans than its size allows, say), refused before any pixel is decoded. Memory
    beyond the decoded image and the RGB result stays a few MiB whatever the mode.
    """
    _check_bytes(data)
    if max_pixels <= 0:
        raise ValueError("max_pixels must be positive")
    img = _open(data)
    # Pillow's own size check never ran (see _open): this one covers its limit too, before
    # a pixel is decoded, without relying on its warning and the process's filters.
    limit = _effective_limit(max_pixels)
    _check_dimensions(img.size, limit)
    check_decode_cost(img)
    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Only a later frame's size could get here, and only the first is decoded; kept so
        # that a process turning Pillow's warnings into errors still gets a sentence.
        raise ImageError(_too_large_message(img.size, limit)) from exc
    except Exception as exc:  # OSError "truncated", SyntaxError, zlib errors, ...
        raise ImageError(_corrupt_message(img.format)) from exc
    _apply_orientation(img)
    try:
        rgb = to_rgb(img)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(_corrupt_message(img.format)) from exc
    if rgb is img:
        # Detach from the file object so the upload's bytes are not kept alive with it.
        rgb = img.copy()
        img.close()
    return rgb


def decode_to_png(data: bytes, *, max_pixels: int, longer_side: int) -> bytes:
    """Decode an upload once and return what is kept of it: an 8-bit RGB PNG (orientation
    applied, transparency over white), shrunk so its longer side is at most ``longer_side``.

    Refuses exactly what :func:`decode_image` refuses. Everything after this reads the PNG
    written here, never the stranger's file again. Fast PNG compression: the decode and
    resize already cost far more, and the file lives only as long as the job's pictures.
    """
    img = decode_image(data, max_pixels=max_pixels)
    if max(img.size) > longer_side:
        img = resize_longer_side(img, longer_side)
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def image_info(data: bytes) -> tuple[str, int, int]:
    """``(format, width, height)`` read from the header alone; no pixel is decoded.

    The format is Pillow's name (``"PNG"``, ``"JPEG"``, ``"WEBP"``, ``"GIF"``,
    ``"BMP"``). Width and height are those :func:`decode_image` would return: an EXIF
    orientation found in the header swaps them. The pixel limit is not applied here,
    so a caller can report how large a refused image is. Raises :class:`ImageError`
    when the bytes are not an image of an accepted format, or when their structure would
    make :func:`decode_image` refuse them as too costly to decode.
    """
    _check_bytes(data)
    img = _open(data)
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(_EMPTY_PIXELS_MESSAGE)
    check_decode_cost(img)
    if _header_orientation(img) in (5, 6, 7, 8):  # the four that turn by 90 degrees
        width, height = height, width
    return _format_name(img), width, height


def _check_bytes(data: Any) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError("The file is empty.")


def _effective_limit(max_pixels: int) -> int:
    pillow_limit = Image.MAX_IMAGE_PIXELS
    return max_pixels if pillow_limit is None else min(max_pixels, int(pillow_limit))


def _format_name(img: Any) -> str:
    return "JPEG" if img.format == "MPO" else (img.format or "unknown")


def _open(data: bytes) -> Any:
    """Open (header only) with the accepted decoders; every failure is an ImageError.

    JPEG, PNG and GIF structure is checked first: Pillow's own header parsing is what a
    crafted file makes slow. Then the accepted decoders' header parsers are tried as
    ``Image.open`` tries them (Pillow's registry ``Image.OPEN``: format name to factory
    and prefix test), but without Pillow's size check: that one only *warns* between
    ``MAX_IMAGE_PIXELS`` and twice that, through the process-wide warning filters, which
    no thread can safely change for its own call alone. Callers check the size themselves
    before decoding (:func:`_check_dimensions`).
    """
    check_structure(data)
    Image.init()  # registers every decoder once (WebP's is not among the preloaded ones)
    prefix = bytes(data[:16])
    for fmt in ACCEPTED_FORMATS:
        entry = Image.OPEN.get(fmt)
        if entry is None:  # a Pillow built without this decoder
            continue
        factory, accept = entry
        try:
            accepted = not accept or accept(prefix)
            if not accepted or isinstance(accepted, str):  # a string says why it is not
                continue
            return factory(io.BytesIO(data), "")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # A GIF whose first frame reaches far beyond its declared screen, or a WebP
            # canvas: the plugin checks that size itself, before a size can be reported.
            raise ImageError("The image is too large to be opened safely.") from exc
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue  # not this format after all, as Image.open sees it: try the next
        except Exception as exc:  # OSError, ValueError, EOFError...
            raise ImageError(_unreadable_message(data)) from exc
    raise ImageError(_unreadable_message(data))


_EMPTY_PIXELS_MESSAGE = "The image has no pixels: its width or height is 0."


def _check_dimensions(size: tuple[int, int], limit: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(_EMPTY_PIXELS_MESSAGE)
    if width * height > limit:
        raise ImageError(_too_large_message(size, limit))


def _mp(pixels: float) -> str:
    megapixels = pixels / 1e6
    return f"{megapixels:.1f} MP" if megapixels >= 0.1 else f"{megapixels:.3g} MP"


def _too_large_message(size: tuple[int, int], limit: int) -> str:
    width, height = size
    return (
        f"The image is {width}×{height} pixels ({_mp(width * height)}); "
        f"the limit is {_mp(limit)}."
    )


def _corrupt_message(fmt: str | None) -> str:
    name = _FORMAT_NAMES.get("JPEG" if fmt == "MPO" else (fmt or ""), "image")
    article = "an" if name[0] in "AEIOU" else "a"  # "an image", "a PNG"
    return f"The file looks like {article} {name} but is truncated or corrupt."


def _unreadable_message(data: bytes) -> str:
    head = bytes(data[:64])
    for sig, offset, name in _ACCEPTED_SIGNATURES:
        if head[offset : offset + len(sig)] == sig and (name != "WebP" or head[:4] == b"RIFF"):
            return f"The file looks like a {name} but is truncated or corrupt."
    # "BM" alone is too weak (any text may start so): also want the reserved zero bytes.
    if head[:2] == b"BM" and head[6:10] == b"\x00\x00\x00\x00":
        return "The file looks like a BMP but is truncated or corrupt."
    for sig, offset, name in _OTHER_SIGNATURES:
        if head[offset : offset + len(sig)] == sig:
            return f"{name} files are not supported; please send a {_ACCEPTED_TEXT} image."
    text_head = bytes(data[:1024]).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text_head.startswith(b"<svg") or (text_head.startswith(b"<?xml") and b"<svg" in text_head):
        return f"SVG files are not supported; please send a {_ACCEPTED_TEXT} image."
    return f"The file is not an image that can be read; please send a {_ACCEPTED_TEXT} image."


def _header_orientation(img: Any) -> int | None:
    """EXIF orientation if the header already carried EXIF (JPEG, WebP, early PNG eXIf)."""
    raw = img.info.get("exif")
    if not raw:
        return None  # reading further (a PNG's late eXIf) would mean decoding pixels
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = exif.get(0x0112)
        return int(value) if value is not None else None
    except Exception:
        return None  # a broken EXIF block only loses the orientation


def _apply_orientation(img: Image.Image) -> None:
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:
        # Orientation is cosmetic: a broken EXIF block should not cost the user the image.
        pass
