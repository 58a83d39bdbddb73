"""The gallery a style event ends with: one contact sheet of its entries, winners first, each
with its author and votes, within the upload limit. Past :data:`~bot.core.event.GALLERY_MOST`
entries it shows the top ones and counts the rest under them. No Discord; runs Pillow, so
callers call it in a thread."""

from __future__ import annotations

import io
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from nst_core.images import fit_to_bytes

from bot.core.event import GALLERY_MOST, Standing
from bot.render.drawings import contact_sheet_png

__all__ = ["GALLERY_BASENAME", "gallery_caption", "gallery_picture"]

GALLERY_BASENAME = "gallery"
_TITLE_H, _FOOT_H, _PAD = 34, 24, 12
_WHITE, _TEXT, _MUTED = (255, 255, 255), (40, 40, 40), (110, 110, 110)
_ENVELOPE = 64 * 1024  # room for the message's JSON and multipart framing


def gallery_caption(standing: Standing) -> str:
    votes = "vote" if standing.votes == 1 else "votes"
    return f"{standing.entry.author} · {standing.votes} {votes}"


def gallery_picture(title: str, shown: Sequence[tuple[Standing, bytes | None]], total: int,
                    limit: int) -> tuple[bytes, str]:
    """The sheet of ``shown`` (standings in order, with each entry's small picture; None draws an
    "unreadable" tile) under ``title``; ``total``: entries in the event, the ones past
    ``shown`` are counted under the grid. Returns (bytes, extension) within ``limit`` bytes."""
    shown = list(shown)[:GALLERY_MOST]
    sheet = Image.open(io.BytesIO(contact_sheet_png([(gallery_caption(s), pic or b"") for s, pic in shown],
                                                    columns=min(6, max(1, len(shown))), thumb=160)))
    sheet.load()
    left_out = max(0, total - len(shown))
    width = max(sheet.width, 360)
    canvas = Image.new("RGB", (width, _TITLE_H + sheet.height + (_FOOT_H if left_out else 0)), _WHITE)
    draw = ImageDraw.Draw(canvas)
    draw.text((_PAD, 9), title[:120], fill=_TEXT, font=_font(16))
    canvas.paste(sheet.convert("RGB"), (0, _TITLE_H))
    if left_out:
        more = "entry" if left_out == 1 else "entries"
        draw.text((_PAD, canvas.height - _FOOT_H + 4), f"… and {left_out} more {more}, with fewer votes",
                  fill=_MUTED, font=_font(12))
    return fit_to_bytes(canvas, max(16 * 1024, limit - _ENVELOPE))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()
