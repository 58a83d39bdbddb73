"""Pictures the bot draws with Pillow: the loss chart, "before | after" and the library's
contact sheet.

Pure functions of plain data and bytes; they run Pillow, so callers call them in a thread.
The loss history arrives as ``LossSummary.to_dict()["history"]`` (dicts): the engine module
must not be imported by the bot process (it loads TensorFlow).
"""

from __future__ import annotations

import io
import math
from typing import Any, Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

from nst_core.images import fit_to_bytes, to_rgb  # Pillow only: no TensorFlow in the bot

__all__ = ["BEFORE_AFTER_BASENAME", "loss_chart_png", "before_after_png", "contact_sheet_png"]

_CHART_COLOURS = {"content": (31, 119, 180), "style": (255, 127, 14), "tv": (44, 160, 44), "total": (30, 30, 30)}
_SCALE_MARK = (148, 103, 189)  # the dashed lines where a scale began
_WHITE, _AXIS, _GRID, _TEXT, _MUTED = (255, 255, 255), (110, 110, 110), (232, 232, 232), (60, 60, 60), (120, 120, 120)
_PANEL, _UNREADABLE = (242, 242, 242), (190, 190, 190)
_MAX_DECODE_PIXELS = 50_000_000  # pictures drawn here were validated already; this is a backstop
BEFORE_AFTER_BASENAME = "before-after"  # the file's name, wherever it is sent
_BEFORE_AFTER_SIDE = 2048
_SEPARATOR = 4  # px of white between "before" and "after"
_SHEET_PAD, _SHEET_LABEL_H = 12, 46  # contact sheet: gap between cells, room for three label lines
_SHEET_MAX_ENTRIES = 60
_SHEET_BUDGET = 1_900_000  # bytes; above it the sheet is saved with 256 colours


def loss_chart_png(history: Sequence[Mapping[str, float]], scale_starts: Sequence[int] | None = (),
                   width: int = 640, height: int = 280) -> bytes:
    """A PNG of the losses over the steps on a log scale, drawn with Pillow.

    Labelled axes with tick labels, one line per loss with a legend above the plot, and a
    dashed vertical line labelled "scale N" at each step where a later scale began
    (``scale_starts``: the 1-based first step of every scale, as in the loss summary).
    Points without a step, and values that are missing, zero, negative, NaN or infinite
    are left out; with nothing left to draw the chart says so instead of failing.
    """
    width = min(2000, max(200, int(width)))
    height = min(1200, max(120, int(height)))
    img = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(img)
    font = _font()
    plot = (62, 28, width - 14, height - 40)  # left, top, right, bottom of the plotting area
    points = _chart_points(history)
    names = [n for n in _CHART_COLOURS if any(_positive(h.get(n)) is not None for _, h in points)]
    values = [v for _, h in points for n in names if (v := _positive(h.get(n))) is not None]

    draw.rectangle(plot, outline=_AXIS)
    _centred_text(draw, ((plot[0] + plot[2]) / 2, height - 11), "step", font, _TEXT)
    _vertical_text(img, (4, (plot[1] + plot[3]) / 2), "loss (log scale)", font, _TEXT)
    if not values:
        draw.text((plot[0] + 8, plot[1] + 8), "no loss values to draw yet", fill=_MUTED, font=font)
        return _png(img)

    lo, hi = math.log10(min(values)), math.log10(max(values))
    if hi - lo < 0.5:  # at least half a decade, so there are two ticks to read
        mid = (lo + hi) / 2
        lo, hi = mid - 0.25, mid + 0.25
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    x0, x1 = points[0][0], points[-1][0]
    if x1 - x0 < 1:
        x0, x1 = x0 - 1, x1 + 1

    def px(step: float) -> float:
        return plot[0] + (step - x0) / (x1 - x0) * (plot[2] - plot[0])

    def py(value: float) -> float:
        return plot[3] - (math.log10(value) - lo) / (hi - lo) * (plot[3] - plot[1])

    for tick in _log_ticks(lo, hi):
        y = round(py(tick))
        draw.line((plot[0] + 1, y, plot[2] - 1, y), fill=_GRID)
        draw.line((plot[0] - 4, y, plot[0], y), fill=_AXIS)
        label = _tick_label(tick)
        draw.text((plot[0] - 6 - draw.textlength(label, font=font), y - 7), label, fill=_TEXT, font=font)
    for tick in _linear_ticks(x0, x1, max(2, (plot[2] - plot[0]) // 70)):
        x = round(px(tick))
        draw.line((x, plot[3], x, plot[3] + 4), fill=_AXIS)
        _centred_text(draw, (x, plot[3] + 12), _tick_label(tick), font, _TEXT)

    marks = []  # (x, label) of each scale change after the first
    for number, start in enumerate(list(scale_starts or ())[1:], start=2):
        step = _finite(start)
        if step is not None and x0 <= step <= x1:
            x = round(px(step))
            marks.append((x, f"scale {number}"))
            for y in range(plot[1] + 2, plot[3] - 1, 8):  # dashes: 4 px on, 4 px off, 2 px wide
                draw.rectangle((x, y, x + 1, min(y + 3, plot[3] - 2)), fill=_SCALE_MARK)

    for name in names:
        line = [(px(s), py(v)) for s, h in points if (v := _positive(h.get(name))) is not None]
        if len(line) >= 2:
            draw.line(line, fill=_CHART_COLOURS[name], width=2, joint="curve")
        elif line:  # a single value: a dot
            (x, y), = line
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=_CHART_COLOURS[name])

    placed: list[tuple[float, float, float, float]] = []
    for x, label in marks:  # labels on top of the lines, moved down where they would overlap
        w = draw.textlength(label, font=font)
        lx = x + 5 if x + 5 + w < plot[2] - 2 else x - 5 - w
        box = (lx - 2, plot[1] + 3, lx + w + 2, plot[1] + 17)
        while any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
            box = (box[0], box[1] + 14, box[2], box[3] + 14)
        placed.append(box)
        draw.rectangle(box, fill=_WHITE)
        draw.text((lx, box[1]), label, fill=_SCALE_MARK, font=font)

    lx = plot[0]
    for name in names:  # the legend, above the plot
        draw.line((lx, 14, lx + 16, 14), fill=_CHART_COLOURS[name], width=2)
        draw.text((lx + 20, 7), name, fill=_TEXT, font=font)
        lx += 20 + draw.textlength(name, font=font) + 16
    return _png(img)


def before_after_png(content: bytes, result: bytes, limit: int) -> tuple[bytes, str]:
    """``content`` and ``result`` side by side, labelled "before" and "after".

    The content picture (EXIF orientation applied) is scaled to the result's height and
    put on the left; the longest side of the whole is at most 2048 px. Returns ``(bytes,
    extension)``: PNG when it fits in ``limit`` bytes, else a smaller lossy encoding
    (:func:`nst_core.images.fit_to_bytes`). Raises ValueError for bytes that are not an
    image or one over 50 megapixels, and ImageError if nothing fits. Runs Pillow: call
    it in a thread.
    """
    before = _open_rgb(content, transpose=True)
    after = _open_rgb(result)
    rw, rh = after.size
    cw = max(1, round(before.width * rh / before.height))
    scale = min(1.0, (_BEFORE_AFTER_SIDE - _SEPARATOR) / (cw + rw), _BEFORE_AFTER_SIDE / rh)
    height = max(1, math.floor(rh * scale))
    cw, rw = max(1, math.floor(cw * scale)), max(1, math.floor(rw * scale))
    canvas = Image.new("RGB", (cw + _SEPARATOR + rw, height), _WHITE)
    canvas.paste(before.resize((cw, height), Image.Resampling.LANCZOS), (0, 0))
    canvas.paste(after if after.size == (rw, height) else after.resize((rw, height), Image.Resampling.LANCZOS),
                 (cw + _SEPARATOR, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(max(11, min(28, height // 24)))
    for x, label in ((0, "before"), (cw + _SEPARATOR, "after")):
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        pad = max(3, (bottom - top) // 3)
        box = (x + pad, pad, x + pad + (right - left) + 2 * pad, pad + (bottom - top) + 2 * pad)
        draw.rectangle(box, fill=(20, 20, 20))
        draw.text((box[0] + pad - left, box[1] + pad - top), label, fill=_WHITE, font=font)
    return fit_to_bytes(canvas, limit)


def contact_sheet_png(entries: Sequence[tuple[str, bytes]], columns: int = 4, thumb: int = 192) -> bytes:
    """One PNG of a style library: numbered, labelled thumbnails in a grid.

    ``entries`` are ``(label, image bytes)``; the labels are numbered from 1 and wrapped
    under their thumbnail (at most three lines, clipped with "…"). An entry whose bytes
    do not decode becomes a grey "unreadable" tile. No entries: a small image saying the
    library is empty. At most 60 entries are drawn; a note under the grid says how many
    were left out. The grid has ``min(columns, n)`` columns of cells ``thumb`` px wide.
    Runs Pillow: call it in a thread.
    """
    columns = min(10, max(1, int(columns)))
    thumb = min(512, max(48, int(thumb)))
    font = _font()
    entries = list(entries)
    if not entries:
        img = Image.new("RGB", (320, 80), _PANEL)
        _centred_text(ImageDraw.Draw(img), (160, 40), "the library is empty", _font(14), _TEXT)
        return _png(img)
    shown, left_out = entries[:_SHEET_MAX_ENTRIES], max(0, len(entries) - _SHEET_MAX_ENTRIES)
    cols = min(columns, len(shown))
    rows = math.ceil(len(shown) / cols)
    cell_w, cell_h = thumb + _SHEET_PAD, thumb + _SHEET_LABEL_H + _SHEET_PAD
    sheet = Image.new("RGB", (cols * cell_w + _SHEET_PAD, rows * cell_h + _SHEET_PAD + (20 if left_out else 0)),
                      _WHITE)
    draw = ImageDraw.Draw(sheet)
    for i, (label, data) in enumerate(shown):
        x = _SHEET_PAD + (i % cols) * cell_w
        y = _SHEET_PAD + (i // cols) * cell_h
        tile = _thumbnail(data, thumb)
        if tile is None:
            draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), fill=_UNREADABLE)
            _centred_text(draw, (x + thumb / 2, y + thumb / 2), "unreadable", font, (70, 70, 70))
        else:
            draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), fill=_PANEL)
            sheet.paste(tile, (x + (thumb - tile.width) // 2, y + (thumb - tile.height) // 2))
        for n, line in enumerate(_wrap(f"{i + 1}. {label}", font, thumb, 3)):
            draw.text((x, y + thumb + 3 + 14 * n), line, fill=_TEXT, font=font)
    if left_out:
        draw.text((_SHEET_PAD, sheet.height - 20), f"… and {left_out} more not shown", fill=_MUTED, font=font)
    data = _png(sheet)
    if len(data) > _SHEET_BUDGET:  # photographs in 24 bits: 256 colours are plenty for thumbnails
        data = _png(sheet.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG))
    return data


# --------------------------------------------------------------------------- helpers


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _finite(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _positive(value: Any) -> float | None:
    """A value a log scale can show, or None."""
    number = _finite(value)
    return number if number is not None and number > 0 else None


def _chart_points(history: Sequence[Mapping[str, Any]] | None) -> list[tuple[float, Mapping[str, Any]]]:
    """``(step, point)`` sorted by step; a point without a step counts as step ``index + 1``."""
    points = []
    for index, point in enumerate(history or ()):
        if isinstance(point, Mapping) and (step := _finite(point.get("step", index + 1))) is not None:
            points.append((step, point))
    points.sort(key=lambda p: p[0])
    return points


def _log_ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Round values between ``10**lo`` and ``10**hi``: powers of ten, else 1-2-5, else 1..9."""
    ticks: list[float] = []
    for mantissas in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [m * 10.0 ** d for d in range(math.floor(lo), math.ceil(hi) + 1) for m in mantissas
                 if lo <= math.log10(m) + d <= hi]
        if len(ticks) >= 2:
            break
    stride = math.ceil(len(ticks) / most) if ticks else 1
    return ticks[::stride]


def _linear_ticks(x0: float, x1: float, most: int) -> list[float]:
    """Multiples of a round whole step (1, 2, 5 × 10^k) between ``x0`` and ``x1``."""
    raw = max(1.0, (x1 - x0) / max(1, most))
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(x0 / step) * step
    ticks = [first + i * step for i in range(int((x1 - first) // step) + 1)]
    return ticks if len(ticks) >= 2 else [x0, x1]


def _tick_label(value: float) -> str:
    if value == int(value) and abs(value) < 1e5:
        return str(int(value))
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _centred_text(draw: ImageDraw.ImageDraw, centre: tuple[float, float], text: str,
                  font: ImageFont.ImageFont | ImageFont.FreeTypeFont, fill: tuple[int, int, int]) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((centre[0] - (left + right) / 2, centre[1] - (top + bottom) / 2), text, fill=fill, font=font)


def _vertical_text(img: Image.Image, at: tuple[float, float], text: str,
                   font: ImageFont.ImageFont | ImageFont.FreeTypeFont, fill: tuple[int, int, int]) -> None:
    """``text`` read bottom to top, its left edge at ``at[0]``, centred on ``at[1]``."""
    left, top, right, bottom = ImageDraw.Draw(img).textbbox((0, 0), text, font=font)
    mask = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(mask).text((1 - left, 1 - top), text, fill=255, font=font)
    mask = mask.rotate(90, expand=True)
    img.paste(fill, (int(at[0]), max(0, int(at[1] - mask.height / 2))), mask)


def _wrap(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int, lines: int) -> list[str]:
    """``text`` in at most ``lines`` lines no wider than ``width`` px, broken at spaces where
    possible; when it does not fit, the last line ends with "…"."""
    draw = ImageDraw.Draw(Image.new("L", (1, 1)))

    def fits(line: str) -> bool:
        return draw.textlength(line, font=font) <= width

    out: list[str] = []
    rest = " ".join(text.split())
    while rest and len(out) < lines:
        if fits(rest):
            out.append(rest)
            rest = ""
            break
        lo, hi = 1, len(rest)  # the longest prefix that fits (at least one character)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(rest[:mid]) else (lo, mid - 1)
        space = rest.rfind(" ", 0, lo + 1)
        cut = space if space > lo // 2 else lo  # a very long word is cut rather than left alone
        out.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        last = out[-1]
        while last and not fits(last + "…"):
            last = last[:-1]
        out[-1] = last.rstrip() + "…"
    return out


def _open_rgb(data: bytes, *, transpose: bool = False) -> Image.Image:
    """Decode ``data`` to RGB, refusing more than 50 megapixels; ValueError for anything unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > _MAX_DECODE_PIXELS:
                raise ValueError(f"The picture is too large to draw ({img.width}×{img.height}).")
            img.load()
            if transpose:
                img = ImageOps.exif_transpose(img)
            return to_rgb(img).copy()
    except ValueError:
        raise
    except Exception as exc:  # Pillow raises many kinds for a broken file
        raise ValueError("The picture could not be read.") from exc


def _thumbnail(data: bytes, side: int) -> Image.Image | None:
    """An RGB thumbnail no larger than ``side`` × ``side``, or None if ``data`` is not a readable picture."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > _MAX_DECODE_PIXELS:
                return None
            img.draft("RGB", (side, side))  # JPEG: decode at a reduced size
            img.load()
            img = to_rgb(ImageOps.exif_transpose(img))
            img.thumbnail((side, side), Image.Resampling.LANCZOS)
            return img.copy()
    except Exception:  # Pillow raises many kinds for a broken file: the tile says "unreadable"
        return None
