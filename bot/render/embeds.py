"""The result's embed: the loss summary, the settings and the loss chart, as Discord shows them."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import discord

from bot.render.words import CHART_FILENAME, LOSS_LABELS, clip, loss_change, seconds_per_step, styles_text

__all__ = ["result_embed"]

_EMBED_COLOUR = 0x7B5CD6


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
    style2_label: str | None = None,
    blend: float | None = None,
) -> discord.Embed:
    """The loss summary: final losses and how far each fell, steps, scales, size, time and
    seconds per step, seed; with ``style2_label``, both styles and their blend."""
    initial, final = summary.get("initial", {}), summary.get("final", {})
    description = "\n".join(str(n) for n in (notes or summary.get("notes") or ()))
    embed = discord.Embed(title="Style transfer result", colour=_EMBED_COLOUR, description=description or None)
    if style2_label is not None:
        embed.add_field(name="Styles", value=styles_text(style_label, style2_label, blend), inline=False)
    for name in ("content", "style", "tv"):
        if name in final:
            embed.add_field(name=LOSS_LABELS[name], value=loss_change(initial.get(name, 0.0), final[name]))
    iterations = summary.get("iterations")
    embed.add_field(name="Iterations", value=str(iterations if iterations is not None else "?"))
    scales = summary.get("scales") or []
    embed.add_field(name="Scales", value=" → ".join(f"{w}×{h}" for w, h in scales) or "?")
    resolution = summary.get("resolution")
    embed.add_field(name="Resolution", value=f"{resolution[0]}×{resolution[1]}" if resolution else "?")
    took = seconds if seconds is not None else summary.get("seconds")
    speed = seconds_per_step(took, iterations)
    embed.add_field(name="Time", value=(f"{took:.1f} s" + (f" ({speed})" if speed else "")) if took is not None else "?")
    embed.add_field(name="Seed", value=str(seed))
    extras = [f"strength {strength:g}"] + (["colours preserved"] if preserve_colors else [])
    embed.add_field(name="Preset", value=f"{preset} ({', '.join(extras)})")
    # the outbox puts the job's marker before the footer: keep it short
    footer = (f"style {clip(style_label, 80)}" if style2_label is None
              else f"styles {styles_text(style_label, style2_label, blend, limit=40)}")
    embed.set_footer(text=footer)
    if chart:
        embed.set_image(url=f"attachment://{CHART_FILENAME}")
    return embed
