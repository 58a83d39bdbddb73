"""Images in and out of the engine: decoding untrusted uploads, arrays, resizing, encoding.

Pillow only (no TensorFlow), so the bot can validate and prepare images cheaply.
Everything that reads bytes from a user treats them as hostile: only a handful of
decoders are allowed to look at them, the pixel count and the structures that make a
small file slow or memory-hungry to read (a JPEG's scans against its size and its
segments, JPEGs browsers cannot show, oversized EXIF, a PNG's chunks, a GIF's header
blocks, a large RLE BMP; :mod:`nst_core.decode_cost`) are checked before any pixel is
decoded, conversions work in bands of rows, and every failure becomes an
:class:`ImageError` whose message can
be shown to the user as is. Nothing here touches process-wide state (warning filters,
Pillow's settings), so checks may run on several threads at once.
"""

from __future__ import annotations

import hashlib
import io
import struct
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .decode_cost import MAX_JPEG_SCANS, check_decode_cost, check_structure
from .errors import ImageError
from .schedule import fit_size

__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "MAX_JPEG_SCANS",
    "decode_image",
    "decode_to_png",
    "image_info",
    "validate_image",
    "to_rgb",
    "to_array",
    "from_array",
    "resize_longer_side",
    "resize_to",
    "encode_png",
    "fit_to_bytes",
    "image_hash",
]

# Pillow format names of the decoders user bytes may reach. Fewer decoders, less attack
# surface: TIFF, ICO, PSD, EPS (Ghostscript!) and friends never see an upload.
ACCEPTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_ACCEPTED_TEXT = "PNG, JPEG, WebP, GIF or BMP"
_FORMAT_NAMES = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP"}

DEFAULT_MAX_PIXELS = 40_000_000

# The smallest longer side fit_to_bytes will shrink an image to before giving up.
_MIN_FIT_SIDE = 16

# Conversions that need temporaries work on bands of about this many pixels, so those
# stay a few MiB whatever the image size.
_BAND_PIXELS = 1 << 18

# Modes holding 16 or 32-bit integer samples; Pillow's own conversion to 8 bits clips
# them at 255 instead of scaling, which would turn a 16-bit PNG almost white.
_WIDE_INT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})

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
    rgb, img, _ = _decode(data, max_pixels)
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


def validate_image(data: bytes, *, max_pixels: int) -> tuple[str, int, int]:
    """``(format, width, height)`` of an upload, after decoding it fully.

    Refuses exactly what :func:`decode_image` refuses, with the same messages, but opens
    the file only once and keeps nothing: for a caller that wants to know an upload is
    usable without holding its pixels. The format is named as by :func:`image_info`; the
    size is that of the decoded image, EXIF orientation applied.
    """
    rgb, img, fmt = _decode(data, max_pixels)
    size = rgb.size
    rgb.close()
    img.close()
    return fmt, size[0], size[1]


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


def _decode(data: bytes, max_pixels: int) -> tuple[Image.Image, Any, str]:
    """``(rgb, img, format)``: the loaded upload ``img`` and ``rgb``, which may be ``img``."""
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
    return rgb, img, _format_name(img)


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


# --------------------------------------------------------------------------- modes


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB; returns ``img`` itself when it is RGB already.

    Transparency (alpha bands, palette or colour-key transparency) is composited over
    white; 16 and 32-bit integer grey is scaled from 0..65535, float grey clipped to
    0..255; CMYK, YCbCr, LAB, HSV, palette, grey and 1-bit use Pillow's conversions.
    Colour profiles (ICC) are not applied. Conversions that need temporaries work in
    bands of rows, so memory beyond ``img`` and the result stays a few MiB.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _WIDE_INT_MODES:
        return _banded(img, _wide_grey_band)
    if mode == "F":
        return _banded(img, _float_grey_band)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return _banded(img, _over_white)
    # Pillow converts these pixel by pixel into the output: no full-size temporary.
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageError(_unreadable_mode_message(mode)) from exc


def _banded(img: Image.Image, convert_band: Any) -> Image.Image:
    """``convert_band`` applied a band of rows at a time, pasted into one RGB image.

    The conversions below need temporaries several times the size of what they convert;
    per band those stay a few MiB instead of hundreds for a large image.
    """
    width, height = img.size
    out = Image.new("RGB", img.size)
    rows = max(1, _BAND_PIXELS // max(1, width))
    for top in range(0, height, rows):
        box = (0, top, width, min(height, top + rows))
        out.paste(convert_band(img.crop(box)), box)
    return out


def _wide_grey_band(band: Image.Image) -> Image.Image:
    values = np.asarray(band)
    if values.dtype.kind == "i":  # mode I is signed 32-bit
        values = np.clip(values, 0, 65535)
    grey = values.astype(np.uint32)  # 65535 * 255 + 32767 still fits
    grey *= 255
    grey += 32767
    grey //= 65535  # rounds, 65535 -> 255
    return Image.fromarray(grey.astype(np.uint8)).convert("RGB")


def _float_grey_band(band: Image.Image) -> Image.Image:
    # float32 as stored: rounding a float32 to an integer up to 255 loses nothing.
    values = np.nan_to_num(np.asarray(band, dtype=np.float32), nan=0.0)
    np.clip(values, 0.0, 255.0, out=values)
    np.rint(values, out=values)
    return Image.fromarray(values.astype(np.uint8)).convert("RGB")


def _over_white(band: Image.Image) -> Image.Image:
    """The band composited over white (alpha band, palette or colour-key transparency)."""
    mode = band.mode
    try:
        if mode == "La":  # premultiplied grey+alpha: Pillow converts it only to LA
            band = band.convert("LA")
        rgba = band.convert("RGBA")
    except ValueError as exc:
        raise ImageError(_unreadable_mode_message(mode)) from exc
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _unreadable_mode_message(mode: str) -> str:
    return f"The image uses a colour mode ({mode}) that cannot be read."


# --------------------------------------------------------------------------- arrays


def to_array(img: Image.Image) -> np.ndarray:
    """A new, writable ``(height, width, 3)`` uint8 array of ``img`` in RGB."""
    return np.array(to_rgb(img), dtype=np.uint8)


def from_array(arr: Any) -> Image.Image:
    """An RGB image from a ``(H, W, 3)`` (or ``(1, H, W, 3)``) array.

    uint8 is taken as is; any other numeric type is read as 0..255 values, rounded and
    clipped (NaN becomes 0), so an optimiser's float output can be passed directly.
    """
    a = np.asarray(arr)
    if a.ndim == 4 and a.shape[0] == 1:  # a batch of one, as tensors usually come
        a = a[0]
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"expected an array of shape (H, W, 3), got {a.shape}")
    if a.dtype != np.uint8:
        if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.number):
            raise ValueError(f"expected a numeric array, got dtype {a.dtype}")
        values = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        a = np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a))


# --------------------------------------------------------------------------- resizing


def resize_longer_side(img: Image.Image, longer_side: int) -> Image.Image:
    """A copy of ``img`` scaled so its longer side is ``longer_side``, aspect kept."""
    if longer_side <= 0:
        raise ValueError("longer_side must be positive")
    return resize_to(img, *fit_size(img.width, img.height, longer_side))


def resize_to(img: Image.Image, width: int, height: int) -> Image.Image:
    """A copy of ``img`` at exactly ``width`` x ``height``.

    LANCZOS when shrinking, BICUBIC when enlarging. Modes other than RGB, RGBA, L and
    LA are converted to RGB first (filters are meaningless on palette indices).
    """
    if width <= 0 or height <= 0:
        raise ValueError("width and height must be positive")
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = to_rgb(img)
    if (width, height) == img.size:
        return img.copy()
    if width * height < img.width * img.height:
        # reducing_gap=3 first box-reduces by an integer factor while staying 3x above
        # the target: much faster from camera-sized photos, visually the same result.
        return img.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return img.resize((width, height), Image.Resampling.BICUBIC)


# --------------------------------------------------------------------------- encoding


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes of ``img`` (RGB, RGBA, L and LA kept; other modes saved as RGB)."""
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = to_rgb(img)
    buf = io.BytesIO()
    # optimize=False: the extra pass costs seconds on big images for a few percent.
    img.save(buf, "PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _encode_lossy(img: Image.Image, fmt: str, quality: int) -> bytes | None:
    buf = io.BytesIO()
    try:
        if fmt == "WEBP":
            img.save(buf, "WEBP", quality=quality, method=4)
        else:
            img.save(buf, "JPEG", quality=quality, optimize=False)
    except (OSError, ValueError):
        return None  # e.g. WebP refuses sides over 16383 px: let the next encoder try
    return buf.getvalue()


def fit_to_bytes(img: Image.Image, max_bytes: int) -> tuple[bytes, str]:
    """Encode ``img`` in at most ``max_bytes``; returns ``(data, extension)``.

    Tries, in order: PNG; WebP at quality 95, 90, 85; JPEG at 95, 90, 85; then shrinks
    the image by a factor 0.8 at a time (always from the original, so blur does not
    accumulate) trying WebP and JPEG at quality 90. The extension is ``"png"``,
    ``"webp"`` or ``"jpg"``. Lossy formats get the image in RGB (transparency over
    white). Raises :class:`ImageError` if even a 16-pixel version does not fit.
    """
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    png = encode_png(img)
    if len(png) <= max_bytes:
        return png, "png"
    rgb = to_rgb(img)
    attempts = [("WEBP", q) for q in (95, 90, 85)] + [("JPEG", q) for q in (95, 90, 85)]
    found = _first_fitting(rgb, attempts, max_bytes)
    if found is not None:
        return found
    longer = max(rgb.size)
    side, scale = longer, 1.0
    while side > _MIN_FIT_SIDE:
        scale *= 0.8
        side = max(_MIN_FIT_SIDE, round(longer * scale))
        smaller = resize_longer_side(rgb, side)
        found = _first_fitting(smaller, [("WEBP", 90), ("JPEG", 90)], max_bytes)
        if found is not None:
            return found
    raise ImageError(f"The image could not be made small enough to fit in {_human_bytes(max_bytes)}.")


def _first_fitting(
    img: Image.Image, attempts: list[tuple[str, int]], max_bytes: int
) -> tuple[bytes, str] | None:
    for fmt, quality in attempts:
        data = _encode_lossy(img, fmt, quality)
        if data is not None and len(data) <= max_bytes:
            return data, ("webp" if fmt == "WEBP" else "jpg")
    return None


def _human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} byte" + ("" if n == 1 else "s")
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


# --------------------------------------------------------------------------- hashing


def image_hash(image: Image.Image | Any) -> str:
    """Stable sha256 hex digest of the size and 8-bit RGB pixels (a cache key).

    Accepts an image (any mode, converted as :func:`to_rgb` does) or an array accepted
    by :func:`from_array`; an array and the image made from it hash the same. Metadata
    (EXIF, ICC, format) does not take part.
    """
    rgb = to_rgb(image) if isinstance(image, Image.Image) else from_array(image)
    digest = hashlib.sha256()
    digest.update(b"nst-rgb8-v1:%dx%d:" % rgb.size)  # the tag lets a future scheme differ
    digest.update(rgb.tobytes())
    return digest.hexdigest()
