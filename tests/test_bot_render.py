"""What users read (render) and the pure parts of delivery: throttled edits, token lifetime, fitting."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from bot import render
from bot.outbox import prepare_result
from bot.status import StatusUpdater, token_usable
from bot.scheduler import LineStatus

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
}


def test_small_formats():
    assert render.format_duration(0.2) == "1 s"
    assert render.format_duration(42) == "42 s"
    assert render.format_duration(61) == "2 min"
    assert render.format_duration(3600 + 5 * 60) == "1 h 5 min"
    assert render.progress_bar(0.5, 10) == "█████░░░░░"
    assert render.progress_bar(3, 4) == "████" and render.progress_bar(-1, 4) == "░░░░"
    assert render.time_left(10.0, 5, 20) == 30.0 and render.time_left(3.0, 0, 20) is None
    assert render.loss_change(2.0, 0.5) == "2 → 0.5 (−75%)"
    assert render.loss_change(0.5, 0.6) == "0.5 → 0.6 (+20%)"
    assert render.loss_change(0.0, 0.2) == "0 → 0.2"


def test_status_lines():
    assert render.waiting_line(3, 95) == "⏳ Waiting — position **3** in line · starts in about 2 min"
    assert render.waiting_line(1, None) == "⏳ Waiting — position **1** in line"
    line = render.progress_line(15, 30, 1, 2, (256, 171), 20.0)
    assert "`████████░░░░░░░░`" in line
    for part in ("50%", "step 15/30", "scale 2/2 (256×171)", "about 20 s left"):
        assert part in line
    assert render.cancelled_line(5, 5) == "🛑 Cancelled." and "<@7>" in render.cancelled_line(7, 5)
    assert "`ab`" in render.status_header("ab", "fast", "x.png")
    assert "<@9>" in render.result_content(9, "ab") and "too old" in render.result_content(9, "ab", late=True)


def test_result_embed_reports_the_loss_summary():
    embed = render.result_embed(SUMMARY, job_id="abc", preset="balanced", seed=42, strength=1.5,
                                preserve_colors=True, style_label="waves.png", seconds=3.25)
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Style loss"] == "2 → 0.5 (−75%)"
    assert fields["TV loss"] == "0.5 → 0.6 (+20%)"
    assert fields["Content loss"] == "0 → 0.2"
    assert fields["Iterations"] == "40"
    assert fields["Scales"] == "24×16 → 48×32" and fields["Resolution"] == "48×32"
    assert fields["Time"] == "3.2 s" and fields["Seed"] == "42"
    assert fields["Preset"] == "balanced (strength 1.5, colours preserved)"
    assert "ran out of memory" in embed.description
    assert embed.image.url == f"attachment://{render.CHART_FILENAME}"
    assert "waves.png" in embed.footer.text and len(embed) < 6000  # the outbox puts the job id before it


def test_loss_chart_is_a_small_png_with_curves():
    data = render.loss_chart_png(SUMMARY["history"], width=320, height=140)
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.size == (320, 140)
    pixels = np.asarray(img.convert("RGB"))
    for colour in ((31, 119, 180), (255, 127, 14)):  # content and style curves were drawn
        assert (pixels == colour).all(axis=-1).sum() > 20
    assert len(data) < 40_000
    # too little data still gives a readable image, not an exception
    assert Image.open(io.BytesIO(render.loss_chart_png([]))).size == (480, 200)
    assert Image.open(io.BytesIO(render.loss_chart_png([{"step": 1, "total": 0.0}])))


def test_line_status_text():
    text = render.line_status_text(LineStatus(waiting=3, queue_max=20, running=1, capacity=2, workers_alive=2,
                                              average_s=75.0, recent_jobs=4, accepting=True, pool_ready=True))
    assert "3 of at most 20" in text and "**Running:** 1" in text and "2/2 ready" in text
    assert "2 min (last 4 jobs)" in text
    text = render.line_status_text(LineStatus(0, 20, 0, 1, 0, None, 0, False, False))
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
    image, ext, chart = prepare_result(big, SUMMARY["history"], limit)
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
