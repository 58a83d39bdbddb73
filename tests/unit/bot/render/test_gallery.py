"""The gallery an event ends with: winners first with author and votes, the top 30 and a count
of the rest, within the upload limit."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bot.core.event import GALLERY_MOST, Entry, standings
from bot.render.gallery import gallery_caption, gallery_picture


def noise_jpeg(seed: int, side: int = 256) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def ranked(n: int):
    entries = [Entry(event_id="e", job_id=f"j{i}", user_id=i, author=f"member {i}", entered_at=float(i))
               for i in range(n)]
    return standings(entries, {f"j{i}": i % 7 for i in range(n)})


def test_captions_name_the_author_and_the_votes():
    first, *_ = ranked(7)
    assert gallery_caption(first) == "member 6 · 6 votes"
    assert gallery_caption(ranked(2)[0]) == "member 1 · 1 vote"


def test_past_thirty_entries_the_top_thirty_are_drawn_and_the_rest_counted(monkeypatch):
    drawn: list[list[str]] = []
    from bot.render import gallery

    real = gallery.contact_sheet_png
    monkeypatch.setattr(gallery, "contact_sheet_png", lambda entries, **kw: drawn.append([e[0] for e in entries])
                        or real(entries, **kw))
    standing = ranked(45)
    data, ext = gallery_picture("Harbour", [(s, noise_jpeg(i, 64)) for i, s in enumerate(standing)], 45, 8 << 20)
    assert len(drawn[0]) == GALLERY_MOST == 30
    assert drawn[0][0] == gallery_caption(standing[0]) and drawn[0][0].endswith("6 votes")
    alone, _ = gallery_picture("Harbour", [(s, noise_jpeg(i, 64)) for i, s in enumerate(standing)], 30, 8 << 20)
    with Image.open(io.BytesIO(data)) as sheet, Image.open(io.BytesIO(alone)) as without:
        assert sheet.width >= 6 * 160  # six columns
        assert sheet.height == without.height + 24  # a line under the grid: "… and 15 more entries"
        assert np.asarray(sheet.convert("L"))[without.height:, :300].min() < 128


def test_the_gallery_fits_the_upload_limit_even_with_incompressible_pictures():
    standing = ranked(30)
    shown = [(s, noise_jpeg(i)) for i, s in enumerate(standing)]
    big, _ = gallery_picture("Harbour", shown, 30, 25 << 20)
    limit = 200 * 1024
    assert len(big) > limit
    data, ext = gallery_picture("Harbour", shown, 30, limit)
    assert len(data) <= limit - 64 * 1024 and ext in ("jpg", "webp")
    with Image.open(io.BytesIO(data)) as small:
        small.load()


def test_an_entry_whose_picture_is_missing_gets_a_grey_tile_not_a_failure():
    [one] = ranked(1)
    data, ext = gallery_picture("Harbour", [(one, None)], 1, 8 << 20)
    assert ext == "png" and Image.open(io.BytesIO(data)).size[0] >= 160
