"""Decoded images in memory: colour modes, arrays, resizing, encoding and hashing.

Pillow and NumPy only (no TensorFlow), so the bot can prepare results cheaply. These work
on images already decoded (by :mod:`nst_core.images`, or made by the engine); conversions
that need temporaries work in bands of rows, so memory beyond the image and the result
stays a few MiB whatever its size.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
from PIL import Image

from .errors import ImageError
from .schedule import fit_size

__all__ = [
    "to_rgb",
    "to_array",
    "from_array",
    "resize_longer_side",
    "resize_to",
    "encode_png",
    "fit_to_bytes",
    "image_hash",
]

# The smallest longer side fit_to_bytes will shrink an image to before giving up.
_MIN_FIT_SIDE = 16

# Conversions that need temporaries work on bands of about this many pixels, so those
# stay a few MiB whatever the image size.
_BAND_PIXELS = 1 << 18

# Modes holding 16 or 32-bit integer samples; Pillow's own conversion to 8 bits clips
# them at 255 instead of scaling, which would turn a 16-bit PNG almost white.
_WIDE_INT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


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
