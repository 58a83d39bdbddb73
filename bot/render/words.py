"""What users read: status lines, progress bars and the result embed (the pictures the bot
draws are in :mod:`bot.render.drawings`).

Pure functions of plain data (job fields, pool events, the loss summary dict), so every
wording is testable without Discord. The loss summary arrives from the worker as
``LossSummary.to_dict()`` (:mod:`nst_core.summary`), and a result kept in the job store is
read back as that same dict, so it is read here as a dict.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from bot.core.line import GuildLine, LineStatus
from bot.core.shards import ShardStatus

__all__ = [
    "format_duration", "format_bytes", "progress_bar", "time_left", "status_header", "waiting_line",
    "starting_line", "progress_line", "retrying_line", "done_line", "failed_line", "cancelled_line",
    "result_content", "failure_notice", "line_status_text", "loss_change",
    "restart_note", "moved_line", "remix_line", "CHART_FILENAME", "LOSS_LABELS", "seconds_per_step", "styles_text",
    "clip",
]

CHART_FILENAME = "losses.png"
LOSS_LABELS = {"content": "Content loss", "style": "Style loss", "tv": "TV loss", "total": "Total loss"}
_BAR_FULL, _BAR_EMPTY = "█", "░"


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
    return f"**Job `{job_id}`** · preset {preset} · style `{clip(style_label, 60)}`"


_REMIX_WORDS = {"again": "🎲 Again", "more": "➕ More style", "less": "➖ Less style", "colours": "🎨 Colours",
                "sharper": "⬆️ Sharper"}


def remix_line(remix: str | None, parent_id: str) -> str:
    """Under a remix's header: which button of which result made it."""
    return f"↪️ {_REMIX_WORDS.get(remix or '', 'Remix')} of job `{parent_id}`"


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


def seconds_per_step(seconds: float | None, iterations: Any) -> str | None:
    """``"0.16 s/step"``; None when either number is missing or there were no steps."""
    try:
        per = float(seconds) / int(iterations)  # type: ignore[arg-type]
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    if not math.isfinite(per) or per < 0:
        return None
    return f"{per:.2g} s/step" if per < 100 else f"{per:.0f} s/step"


def styles_text(style_label: str, style2_label: str | None = None, blend: float | None = None,
                limit: int = 200) -> str:
    """``"starry.jpg 70% + wave.png 30%"`` (``blend``: the second style's share, 0..1; None
    or NaN means an even mix); just the clipped label when there is one style."""
    if style2_label is None:
        return clip(style_label, limit)
    share = 0.5 if blend is None or not math.isfinite(blend) else min(1.0, max(0.0, float(blend)))
    second = round(share * 100)
    return f"{clip(style_label, limit)} {100 - second}% + {clip(style2_label, limit)} {second}%"


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


def gateway_text(shards: list[ShardStatus], shard_count: int, guild_shard: int) -> str:
    """``/stylebot status``: the gateway shards, in one line unless some are down."""
    mine = next((shard for shard in shards if shard.shard_id == guild_shard), None)
    latency = f", {mine.latency_ms:.0f} ms" if mine is not None and mine.latency_ms is not None else ""
    down = [shard for shard in shards if not shard.connected]
    total = f"{shard_count} shard{'s' if shard_count != 1 else ''}"
    if len(shards) < shard_count:
        total += f" ({len(shards)} in this process)"
    state = "all connected" if not down else f"{len(shards) - len(down)} connected"
    lines = [f"**Gateway:** {total}, {state}; this server is on shard {guild_shard}{latency}"]
    lines += [f"Shard {shard.shard_id} is reconnecting (down for {format_duration(shard.down_for_s or 0.0)})"
              for shard in down[:5]]
    return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def clip(text: str, limit: int) -> str:
    """``text`` for inside backticks, at most ``limit`` characters."""
    text = text.replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"
