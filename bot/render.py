"""What users read: status lines, progress bars, the result embed and the loss chart.

Pure functions of plain data (job fields, pool events, the loss summary dict), so every
wording is testable without Discord. The loss summary arrives as ``LossSummary.to_dict()``;
it is read here as a dict because the class lives in the engine module, which the bot
process must not import (it loads TensorFlow).
"""

from __future__ import annotations

import io
import math
from typing import Any, Mapping, Sequence

import discord
from PIL import Image, ImageDraw, ImageFont

from .scheduler import GuildLine, LineStatus

__all__ = [
    "format_duration", "format_bytes", "progress_bar", "time_left", "status_header", "waiting_line",
    "starting_line", "progress_line", "retrying_line", "done_line", "failed_line", "cancelled_line",
    "result_content", "failure_notice", "result_embed", "loss_chart_png", "line_status_text", "loss_change",
    "restart_note", "moved_line", "CHART_FILENAME", "LOSS_LABELS",
]

CHART_FILENAME = "losses.png"
LOSS_LABELS = {"content": "Content loss", "style": "Style loss", "tv": "TV loss", "total": "Total loss"}
_CHART_COLOURS = {"content": (31, 119, 180), "style": (255, 127, 14), "tv": (44, 160, 44), "total": (30, 30, 30)}
_BAR_FULL, _BAR_EMPTY = "█", "░"
_EMBED_COLOUR = 0x7B5CD6


# --------------------------------------------------------------------------- small formats


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"3 min"``, ``"1 h 5 min"`` (rounded up to whole minutes past a minute)."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} h"


def format_bytes(n: int) -> str:
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


def progress_bar(fraction: float, width: int = 16) -> str:
    """A text bar such as ``█████░░░░░░░░░░░``; ``fraction`` is clamped to 0..1."""
    fraction = min(1.0, max(0.0, fraction))
    full = int(round(fraction * width))
    return _BAR_FULL * full + _BAR_EMPTY * (width - full)


def time_left(elapsed: float, step: int, total: int) -> float | None:
    """Seconds left at the current step rate; None before the first step."""
    if step <= 0 or total <= 0 or elapsed < 0:
        return None
    return max(0.0, elapsed * (total - step) / step)


def loss_change(initial: float, final: float) -> str:
    """``"0.0123 → 0.00412 (−67%)"``: where a loss started, ended and how far it fell."""
    text = f"{initial:.3g} → {final:.3g}"
    if initial > 0:
        change = (final / initial - 1.0) * 100.0
        sign = "−" if change < 0 else "+"
        text += f" ({sign}{abs(change):.0f}%)"
    return text


# --------------------------------------------------------------------------- status message


def status_header(job_id: str, preset: str, style_label: str) -> str:
    return f"**Job `{job_id}`** · preset {preset} · style `{_clip(style_label, 60)}`"


def waiting_line(position: int, eta_s: float | None, note: str | None = None) -> str:
    when = f" · starts in about {format_duration(eta_s)}" if eta_s is not None else ""
    return f"⏳ Waiting — position **{position}** in line{when}" + (f"\n⚠️ {note}" if note else "")


def starting_line(worker: str | None = None) -> str:
    return "⚙️ Starting" + (f" on {worker}" if worker else "") + "…"


def progress_line(step: int, total: int, scale: int, scales: int, size: Sequence[int],
                  seconds_left: float | None) -> str:
    """``⚙️ Running `█████░░░` 50% · step 15/30 · scale 1/2 (256×171) · about 20 s left``."""
    fraction = step / total if total else 0.0
    left = f" · about {format_duration(seconds_left)} left" if seconds_left is not None else ""
    width, height = size
    return (f"⚙️ Running `{progress_bar(fraction)}` {fraction * 100:.0f}% · step {step}/{total} · "
            f"scale {scale + 1}/{scales} ({width}×{height}){left}")


def retrying_line(reason: str) -> str:
    return f"🔁 {reason}"


def done_line(seconds: float | None) -> str:
    took = f" in {format_duration(seconds)}" if seconds is not None else ""
    return f"✅ Done{took} — the result is below."


def failed_line(reason: str) -> str:
    return f"❌ {reason}"


def cancelled_line(by_user: int | None, requester: int) -> str:
    if by_user is None or by_user == requester:
        return "🛑 Cancelled."
    return f"🛑 Cancelled by <@{by_user}>."


def restart_note(user_id: int) -> str:
    """Added under the header of a job's new status message after the bot restarted."""
    return f"🔁 <@{user_id}> the bot restarted; this job was put back in line and keeps its place."


def paused_line(was_running: bool) -> str:
    """The last text of a job's status message when the bot stops before the job is done."""
    if was_running:
        return ("⏸️ The bot is restarting, so this job was stopped. It starts again, first in line, "
                "when the bot is back; you will be told here.")
    return "⏸️ The bot is restarting. This job keeps its place in line and runs when the bot is back."


def moved_line() -> str:
    """The last text of a status message whose job continues in a new one after a restart."""
    return "🔁 The bot restarted — this job continues in a new message below."


# --------------------------------------------------------------------------- results

_READY = "your stylised image is ready"
_DID_NOT_FINISH = "did not finish:"


def result_content(user_id: int, job_id: str, late: bool = False) -> str:
    note = " (delivered here because the original command is too old to answer)" if late else ""
    return f"<@{user_id}> {_READY}{note} · job `{job_id}`"


def failure_notice(user_id: int, job_id: str, reason: str) -> str:
    return f"<@{user_id}> job `{job_id}` {_DID_NOT_FINISH} {reason}"


def result_embed(
    summary: Mapping[str, Any],
    *,
    job_id: str,
    preset: str,
    seed: int,
    strength: float,
    preserve_colors: bool,
    style_label: str,
    seconds: float | None = None,
    chart: bool = True,
    notes: Sequence[str] = (),
) -> discord.Embed:
    """The loss summary: final losses and how far each fell, steps, scales, size, time, seed."""
    initial, final = summary.get("initial", {}), summary.get("final", {})
    description = "\n".join(str(n) for n in (notes or summary.get("notes") or ()))
    embed = discord.Embed(title="Style transfer result", colour=_EMBED_COLOUR, description=description or None)
    for name in ("content", "style", "tv"):
        if name in final:
            embed.add_field(name=LOSS_LABELS[name], value=loss_change(initial.get(name, 0.0), final[name]))
    embed.add_field(name="Iterations", value=str(summary.get("iterations", "?")))
    scales = summary.get("scales") or []
    embed.add_field(name="Scales", value=" → ".join(f"{w}×{h}" for w, h in scales) or "?")
    resolution = summary.get("resolution")
    embed.add_field(name="Resolution", value=f"{resolution[0]}×{resolution[1]}" if resolution else "?")
    took = seconds if seconds is not None else summary.get("seconds")
    embed.add_field(name="Time", value=f"{took:.1f} s" if took is not None else "?")
    embed.add_field(name="Seed", value=str(seed))
    extras = [f"strength {strength:g}"] + (["colours preserved"] if preserve_colors else [])
    embed.add_field(name="Preset", value=f"{preset} ({', '.join(extras)})")
    embed.set_footer(text=f"style {_clip(style_label, 80)}")  # the outbox puts the job's marker before it
    if chart:
        embed.set_image(url=f"attachment://{CHART_FILENAME}")
    return embed


def loss_chart_png(history: Sequence[Mapping[str, float]], width: int = 480, height: int = 200) -> bytes:
    """A small PNG of the losses over the steps, log scale, drawn with Pillow."""
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = _font()
    left, right, top, bottom = 46, 10, 22, 22
    plot = (left, top, width - right, height - bottom)
    draw.rectangle(plot, outline=(160, 160, 160))
    draw.text((left, 4), "loss (log scale) by step", fill=(60, 60, 60), font=font)
    names = [n for n in ("content", "style", "tv", "total") if any(n in h for h in history)]
    points = [(h.get("step", i), h) for i, h in enumerate(history)]
    values = [h[n] for _, h in points for n in names if n in h and h[n] > 0 and math.isfinite(h[n])]
    if len(points) < 2 or not values:
        draw.text((left + 8, top + 8), "not enough steps to draw", fill=(120, 120, 120), font=font)
        return _png(img)
    lo, hi = math.log10(min(values)), math.log10(max(values))
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    steps = [s for s, _ in points]
    x0, x1 = min(steps), max(steps)
    span_x = (x1 - x0) or 1

    def xy(step: float, value: float) -> tuple[float, float]:
        x = plot[0] + (step - x0) / span_x * (plot[2] - plot[0])
        y = plot[3] - (math.log10(value) - lo) / (hi - lo) * (plot[3] - plot[1])
        return x, y

    for decade in range(math.ceil(lo), math.floor(hi) + 1):  # grid line and label per power of ten
        _, y = xy(x0, 10.0 ** decade)
        draw.line((plot[0], y, plot[2], y), fill=(225, 225, 225))
        draw.text((4, y - 6), f"1e{decade}", fill=(90, 90, 90), font=font)
    draw.text((plot[0], plot[3] + 4), str(x0), fill=(90, 90, 90), font=font)
    draw.text((plot[2] - 6 * len(str(x1)), plot[3] + 4), str(x1), fill=(90, 90, 90), font=font)
    for i, name in enumerate(names):
        line = [xy(s, h[name]) for s, h in points if name in h and h[name] > 0 and math.isfinite(h[name])]
        if len(line) >= 2:
            draw.line(line, fill=_CHART_COLOURS[name], width=2 if name == "total" else 1)
        lx = plot[2] - 62 * (len(names) - i)
        draw.line((lx, 10, lx + 10, 10), fill=_CHART_COLOURS[name], width=2)
        draw.text((lx + 13, 4), name, fill=_CHART_COLOURS[name], font=font)
    return _png(img)


# --------------------------------------------------------------------------- /stylebot status


def line_status_text(status: LineStatus, guild: GuildLine | None = None) -> str:
    """``/stylebot status``: the whole line in numbers, and the caller's server's part of it."""
    average = (f"{format_duration(status.average_s)} (last {status.recent_jobs} jobs)"
               if status.average_s is not None else "no finished jobs yet")
    if status.workers_down:
        workers = "could not start (jobs wait until they do)"
    else:
        workers = f"{status.workers_alive}/{status.capacity} ready" if status.pool_ready else "starting up"
    lines = [
        f"**Waiting:** {status.waiting} of at most {status.queue_max}",
        f"**Running:** {status.running}",
        f"**Workers:** {workers}",
        f"**Recent average:** {average}",
    ]
    if guild is not None:
        places = ", ".join(str(p) for p in guild.positions[:10]) + ("…" if len(guild.positions) > 10 else "")
        where = f" (places {places})" if guild.positions else ""
        lines.append(f"**This server:** {guild.running} running, {guild.waiting} of at most "
                     f"{guild.per_guild_waiting} waiting{where}")
    if not status.accepting:
        lines.append("The bot is shutting down and not taking new jobs.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def _clip(text: str, limit: int) -> str:
    text = text.replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=11)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()
