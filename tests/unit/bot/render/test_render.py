"""What users read (render) and the pure parts of delivery: throttled edits, token lifetime, fitting."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from bot.render import drawings

from bot.render import embeds, words
from bot.delivery.outbox import prepare_result
from bot.delivery.status import StatusUpdater, token_usable
from bot.core.line import LineStatus

pytestmark = pytest.mark.timeout(30)

SUMMARY = {
    "initial": {"content": 0.0, "style": 2.0, "tv": 0.5, "total": 2.5},
    "final": {"content": 0.2, "style": 0.5, "tv": 0.6, "total": 1.3},
    "history": [{"step": s, "content": 0.01 + 0.02 * s, "style": 2.0 / s, "tv": 0.5, "total": 2.5 / s}
                for s in range(1, 41)],
    "iterations": 40,
    "scales": [[24, 16], [48, 32]],
    "resolution": [48, 32],
    "seconds": 3.25,
    "notes": ["The GPU ran out of memory at 48 px, so the image was made at 36 px."],
    "scale_starts": [1, 21],
}


def test_small_formats():
    assert words.format_duration(0.2) == "1 s"
    assert words.format_duration(42) == "42 s"
    assert words.format_duration(61) == "2 min"
    assert words.format_duration(3600 + 5 * 60) == "1 h 5 min"
    assert words.progress_bar(0.5, 10) == "█████░░░░░"
    assert words.progress_bar(3, 4) == "████" and words.progress_bar(-1, 4) == "░░░░"
    assert words.time_left(10.0, 5, 20) == 30.0 and words.time_left(3.0, 0, 20) is None
    assert words.loss_change(2.0, 0.5) == "2 → 0.5 (−75%)"
    assert words.loss_change(0.5, 0.6) == "0.5 → 0.6 (+20%)"
    assert words.loss_change(0.0, 0.2) == "0 → 0.2"


def test_status_lines():
    assert words.waiting_line(3, 95) == "⏳ Waiting — position **3** in line · starts in about 2 min"
    assert words.waiting_line(1, None) == "⏳ Waiting — position **1** in line"
    line = words.progress_line(15, 30, 1, 2, (256, 171), 20.0)
    assert "`████████░░░░░░░░`" in line
    for part in ("50%", "step 15/30", "scale 2/2 (256×171)", "about 20 s left"):
        assert part in line
    assert words.cancelled_line(5, 5) == "🛑 Cancelled." and "<@7>" in words.cancelled_line(7, 5)
    assert "`ab`" in words.status_header("ab", "fast", "x.png")
    assert "<@9>" in words.result_content(9, "ab") and "too old" in words.result_content(9, "ab", late=True)


def test_result_embed_reports_the_loss_summary():
    embed = embeds.result_embed(SUMMARY, job_id="abc", preset="balanced", seed=42, strength=1.5,
                                preserve_colors=True, style_label="waves.png", seconds=3.25)
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Style loss"] == "2 → 0.5 (−75%)"
    assert fields["TV loss"] == "0.5 → 0.6 (+20%)"
    assert fields["Content loss"] == "0 → 0.2"
    assert fields["Iterations"] == "40"
    assert fields["Scales"] == "24×16 → 48×32" and fields["Resolution"] == "48×32"
    assert fields["Time"] == "3.2 s (0.081 s/step)" and fields["Seed"] == "42"
    assert "Styles" not in fields
    assert fields["Preset"] == "balanced (strength 1.5, colours preserved)"
    assert "ran out of memory" in embed.description
    assert embed.image.url == f"attachment://{words.CHART_FILENAME}"
    assert "waves.png" in embed.footer.text and len(embed) < 6000  # the outbox puts the job id before it


def test_result_embed_names_both_styles_and_their_blend():
    embed = embeds.result_embed(SUMMARY, job_id="abc", preset="fast", seed=1, strength=1.0, preserve_colors=False,
                                style_label="starry.jpg", style2_label="wave.png", blend=0.3, seconds=48.2)
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Styles"] == "starry.jpg 70% + wave.png 30%"
    assert fields["Time"] == "48.2 s (1.2 s/step)"  # 48.2 s over 40 steps
    assert fields["Style loss"] == "2 → 0.5 (−75%)"  # the loss summary is still there
    assert "starry.jpg" in embed.footer.text and "wave.png" in embed.footer.text
    long = embeds.result_embed(SUMMARY, job_id="abc", preset="fast", seed=1, strength=1.0, preserve_colors=False,
                               style_label="a" * 3000, style2_label="b" * 3000, blend=None)
    fields = {f.name: f.value for f in long.fields}
    assert len(long.footer.text) <= 100 and "…" in long.footer.text
    assert "50%" in fields["Styles"] and len(fields["Styles"]) <= 1024 and len(long) < 6000
    assert words.seconds_per_step(3.0, 0) is None and words.seconds_per_step(None, 5) is None
    assert words.status_header("ab", "fast", "starry.jpg 70% + wave.png 30%").endswith("`starry.jpg 70% + wave.png 30%`")


def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _colour_mask(pixels: np.ndarray, colour) -> np.ndarray:
    return (pixels == np.array(colour, np.uint8)).all(axis=-1)


def _plot_edges(pixels: np.ndarray) -> tuple[int, int]:
    """The left and right edges of the plot frame: the long columns in the axis colour."""
    columns = np.flatnonzero(_colour_mask(pixels, drawings._AXIS).sum(axis=0) > pixels.shape[0] // 2)
    return int(columns.min()), int(columns.max())


def test_loss_chart_shows_every_loss_axes_and_dashed_scale_changes():
    data = drawings.loss_chart_png(SUMMARY["history"], [1, 11, 31])
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.size == (640, 280)
    assert len(data) < 40_000
    pixels = _rgb(data)
    for name, colour in drawings._CHART_COLOURS.items():  # a line per loss (and its legend swatch)
        assert _colour_mask(pixels, colour).sum() > 100, name
    # the legend sits above the plot, not over the lines
    left, right = _plot_edges(pixels)
    top = int(np.flatnonzero(_colour_mask(pixels, drawings._AXIS)[:, (left + right) // 2])[0])
    legend = np.zeros(pixels.shape[:2], bool)
    for colour in drawings._CHART_COLOURS.values():
        legend |= _colour_mask(pixels, colour)
    assert legend[:top].sum() > 4 * 16 and legend[:top].any(axis=1).sum() <= 4
    # a dashed marker where scale 2 and scale 3 began (not at the first scale), at their steps
    marks = _colour_mask(pixels, drawings._SCALE_MARK)
    columns = np.flatnonzero(marks[top:].sum(axis=0) > 40)
    groups = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
    assert len(groups) == 2
    for group, step in zip(groups, (11, 31)):
        expected = left + (step - 1) / (40 - 1) * (right - left)
        assert abs(group.mean() - expected) <= 2, (group, expected)
        column = marks[top:, group[0]]
        assert np.count_nonzero(np.diff(column.astype(int)) == 1) >= 10  # dashed: many separate runs
    # scale_starts is optional: callers passing only the history still get a chart, unmarked
    plain = _rgb(drawings.loss_chart_png(SUMMARY["history"]))
    assert plain.shape == (280, 640, 3)
    assert (_colour_mask(plain, drawings._SCALE_MARK).sum(axis=0) > 40).sum() == 0
    small = drawings.loss_chart_png(SUMMARY["history"], width=320, height=140)
    assert Image.open(io.BytesIO(small)).size == (320, 140)


@pytest.mark.parametrize("history, starts", [
    ([], ()),
    ([{"step": 1, "total": 0.0}], [1]),
    ([{"step": 3, "total": 2.5}], None),  # a single value
    ([{"step": 1, "content": float("nan"), "style": -1.0, "tv": float("inf"), "total": 0.0},
      {"step": 2}, {"total": 3.0}, {"step": "x", "total": 1.0}, None, {"step": float("nan"), "total": 1.0},
      {"step": 5, "style": 1e-12, "total": 1e12}], [1, 3, None, float("nan"), "?", 99]),
    ([{"step": s, "style": 1.0 / s} if s % 2 else {"step": s, "total": 2.0} for s in range(1, 20)], [1, 10]),
    ([{"step": s, "total": 0.5} for s in range(1, 10)], [1, 5]),  # a flat line
])
def test_loss_chart_survives_odd_values(history, starts):
    data = drawings.loss_chart_png(history, starts)
    assert Image.open(io.BytesIO(data)).size == (640, 280)


def test_loss_chart_draws_a_loss_missing_from_some_points():
    history = [{"step": s, "style": 1.0 / s, **({"tv": 0.1} if s % 3 == 0 else {})} for s in range(1, 31)]
    pixels = _rgb(drawings.loss_chart_png(history, [1, 16]))
    assert _colour_mask(pixels, drawings._CHART_COLOURS["tv"]).sum() > 200  # joined across the gaps
    assert _colour_mask(pixels, drawings._CHART_COLOURS["content"]).sum() == 0  # never reported: no line


def _encoded(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_before_after_puts_the_upright_content_beside_the_result():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated a quarter turn, 100 wide and 200 high
    content = _encoded(Image.new("RGB", (200, 100), (40, 160, 90)), "JPEG", exif=exif, quality=95)
    result = _encoded(Image.new("RGB", (120, 240), (200, 60, 60)))
    data, ext = drawings.before_after_png(content, result, 8_000_000)
    img = Image.open(io.BytesIO(data))
    assert ext == "png" and img.format == "PNG"
    assert img.height == 240 and abs(img.width - (120 + 120)) <= 6  # content scaled to 120×240, then the result
    pixels = np.asarray(img.convert("RGB")).astype(int)
    assert np.abs(pixels[200, 60] - (40, 160, 90)).max() < 12  # before, on the left
    assert np.abs(pixels[200, img.width - 60] - (200, 60, 60)).max() < 4  # after, on the right
    for x in (0, img.width - 120):  # a dark label box with light text in each top-left corner
        corner = pixels[:30, x: x + 60]
        assert (corner.max(axis=-1) < 40).sum() > 100 and (corner.min(axis=-1) > 200).sum() > 10


def test_before_after_fits_the_limit_and_caps_the_size():
    content, result = _encoded(_noise(500, 400, 1)), _encoded(_noise(600, 400, 2))
    data, ext = drawings.before_after_png(content, result, 60_000)
    assert ext in ("jpg", "webp") and len(data) <= 60_000
    assert Image.open(io.BytesIO(data)).height > 16
    wide = _encoded(Image.new("RGB", (3000, 1000), (10, 20, 30)))
    data, ext = drawings.before_after_png(wide, _encoded(Image.new("RGB", (1500, 1200), (90, 90, 90))), 8_000_000)
    size = Image.open(io.BytesIO(data)).size
    assert max(size) <= 2048 and size[0] > 2000
    with pytest.raises(ValueError):
        drawings.before_after_png(b"not an image", result, 8_000_000)


def test_before_after_refuses_to_decode_a_huge_picture():
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    huge = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10_000, 6_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    small = _encoded(Image.new("RGB", (50, 50)))
    with pytest.raises(ValueError, match="too large"):
        drawings.before_after_png(huge, small, 8_000_000)
    with pytest.raises(ValueError, match="too large"):
        drawings.before_after_png(small, huge, 8_000_000)


_SWATCHES = [(230, 30, 30), (30, 200, 30), (30, 30, 230), (230, 200, 30), (200, 30, 200), (30, 200, 200)]


def _centre(pixels: np.ndarray, colour) -> tuple[float, float, int]:
    ys, xs = np.nonzero(_colour_mask(pixels, colour))
    return float(xs.mean()), float(ys.mean()), len(xs)


def test_contact_sheet_lays_out_numbered_thumbnails_in_a_grid():
    def sheet(n: int, **kwargs) -> np.ndarray:
        entries = [(f"Style {i}, Painter (19{i:02d})", _encoded(Image.new("RGB", (100, 100), _SWATCHES[i])))
                   for i in range(n)]
        return _rgb(drawings.contact_sheet_png(entries, **kwargs))

    five = sheet(5, columns=4, thumb=64)
    assert five.shape == sheet(6, columns=4, thumb=64).shape  # two rows of four either way
    four = sheet(4, columns=4, thumb=64)
    assert four.shape[1] == five.shape[1] and five.shape[0] > 1.7 * four.shape[0] - 20
    assert sheet(2, columns=4, thumb=64).shape[1] < 0.6 * four.shape[1]  # only as many columns as entries
    centres = [_centre(five, _SWATCHES[i]) for i in range(5)]
    assert all(abs(n - 64 * 64) < 200 for _, _, n in centres)  # each thumbnail fills its 64 px square
    xs, ys = [c[0] for c in centres], [c[1] for c in centres]
    assert xs[0] < xs[1] < xs[2] < xs[3] and len({round(y) for y in ys[:4]}) == 1  # first row, left to right
    assert abs(xs[4] - xs[0]) < 1 and ys[4] > ys[0] + 64  # the fifth starts the second row
    below = five[int(ys[0]) + 34: int(ys[0]) + 34 + 40, int(xs[0]) - 32: int(xs[0]) + 32]
    assert (below.max(axis=-1) < 150).sum() > 30  # a label under the thumbnail


def test_contact_sheet_survives_an_unreadable_entry_and_an_empty_library():
    entries = [("ok", _encoded(Image.new("RGB", (80, 120), _SWATCHES[0]))), ("broken", b"\x89PNG not really"),
               ("a name " * 40, _encoded(Image.new("RGBA", (120, 80), (0, 0, 0, 0))))]
    pixels = _rgb(drawings.contact_sheet_png(entries, columns=3, thumb=96))
    assert _colour_mask(pixels, drawings._UNREADABLE).sum() > 0.8 * 96 * 96  # the grey tile
    assert _centre(pixels, _SWATCHES[0])[2] == 64 * 96  # aspect kept: 80×120 shown as 64×96
    empty = drawings.contact_sheet_png([])
    img = Image.open(io.BytesIO(empty))
    assert img.format == "PNG" and img.width < 400 and img.height < 200
    assert len(np.unique(np.asarray(img.convert("L")))) > 2  # it says so in words


def test_contact_sheet_of_twelve_photos_stays_small(monkeypatch):
    entries = [(f"{i}. noisy", _encoded(_noise(300, 260, i))) for i in range(12)]
    data = drawings.contact_sheet_png(entries)
    assert len(data) < 2_000_000
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.width > 4 * 192 and img.height > 3 * 192
    monkeypatch.setattr(drawings, "_SHEET_BUDGET", 10_000)  # over budget: saved with 256 colours
    fewer = drawings.contact_sheet_png(entries[:4], thumb=96)
    img = Image.open(io.BytesIO(fewer))
    assert img.format == "PNG" and img.mode == "P" and img.width > 4 * 96


def test_line_status_text():
    text = words.line_status_text(LineStatus(waiting=3, queue_max=20, running=1, capacity=2, workers_alive=2,
                                              average_s=75.0, recent_jobs=4, accepting=True, pool_ready=True))
    assert "3 of at most 20" in text and "**Running:** 1" in text and "2/2 ready" in text
    assert "2 min (last 4 jobs)" in text
    text = words.line_status_text(LineStatus(0, 20, 0, 1, 0, None, 0, False, False))
    assert "starting up" in text and "no finished jobs yet" in text and "shutting down" in text


# --------------------------------------------------------------------------- delivery's pure parts


def test_token_lifetime_with_margin():
    assert token_usable(1000.0, 900, 60, now=1000.0 + 839)
    assert not token_usable(1000.0, 900, 60, now=1000.0 + 841)  # too close to expiry: use the channel
    assert not token_usable(1000.0, 900, 0, now=1000.0 + 900)


def test_prepare_result_fits_image_and_chart_under_the_limit():
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noisy.save(buf, "PNG")
    big = buf.getvalue()
    assert len(big) > 200_000
    limit = 200_000
    image, ext, chart = prepare_result(big, SUMMARY["history"], limit, SUMMARY["scale_starts"])
    assert ext in ("webp", "jpg") and chart is not None
    assert len(image) + len(chart) < limit
    assert Image.open(io.BytesIO(image)).size[0] > 16
    small, ext, chart = prepare_result(b"\x89PNG-tiny", SUMMARY["history"], 10_000_000)
    assert (small, ext) == (b"\x89PNG-tiny", "png")


async def test_status_updater_coalesces_edits_and_always_sends_the_final_text():
    edits: list[tuple[float, str, bool]] = []
    loop = asyncio.get_running_loop()

    async def edit(text: str, final: bool) -> bool:
        edits.append((loop.time(), text, final))
        return True

    updater = StatusUpdater(edit, interval=0.3)
    updater.set("waiting 2")
    await asyncio.sleep(0.05)
    assert edits == []  # nothing before the message exists
    updater.attach("waiting 2")
    for i in range(20):  # a burst of progress: most of it is skipped
        updater.set(f"step {i}")
        await asyncio.sleep(0.03)
    updater.set("done", final=True)
    await updater.wait_closed(5)
    texts = [t for _, t, _ in edits]
    assert texts[-1] == "done" and edits[-1][2] is True
    assert 2 <= len(edits) <= 5
    gaps = [b[0] - a[0] for a, b in zip(edits, edits[1:-1])]  # the final edit may come sooner
    assert all(g >= 0.25 for g in gaps), gaps
    updater.set("ignored after the end")
    await asyncio.sleep(0.05)
    assert edits[-1][1] == "done"


async def test_status_updater_stops_editing_a_message_that_is_gone():
    calls = []

    async def edit(text: str, final: bool) -> bool:
        calls.append(text)
        return False  # e.g. someone deleted the message

    updater = StatusUpdater(edit, interval=0.01)
    updater.attach(None)
    updater.set("a")
    await asyncio.sleep(0.05)
    updater.set("b")
    updater.set("c", final=True)
    await updater.wait_closed(2)
    assert calls == ["a"]


def test_gateway_text_names_the_servers_shard_and_the_shards_that_are_down():
    from bot.core.shards import ShardStatus

    up = [ShardStatus(0, True, 41.6, 250, None), ShardStatus(1, True, 38.0, 251, None)]
    assert words.gateway_text(up, 2, 1) == "**Gateway:** 2 shards, all connected; this server is on shard 1, 38 ms"
    half = [ShardStatus(2, True, 50.0, 240, None), ShardStatus(3, False, None, 245, 95.0)]
    text = words.gateway_text(half, 4, 2)
    assert text.startswith("**Gateway:** 4 shards (2 in this process), 1 connected; this server is on shard 2, 50 ms")
    assert text.endswith("\nShard 3 is reconnecting (down for 2 min)")
