"""The buttons under a result: what each one asks for, in plain functions (no Discord).

🎲 Again (a new seed), ➕ More style / ➖ Less style (strength times or divided by
:data:`STRENGTH_STEP`), 🎨 Colours (``preserve_colors`` switched), ⬆️ Sharper (the next preset
up) each make a new job from the result's own pictures and settings; 🔍 Compare and 🗑️ Delete
act on the result itself. :func:`remix` turns a press into the new job's settings, or a
:class:`RemixRefused` sentence for the presser. :class:`DoublePress` makes a quick second
press of the same button answer with the first job instead of making another.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from nst_core.params import StylizeParams

__all__ = ["REMIXES", "ACTIONS", "TOWARDS_ORIGINAL", "STRENGTH_STEP", "MIN_STRENGTH", "RemixRefused", "Remix", "remix", "next_preset",
           "DoublePress"]

REMIXES = ("again", "more", "less", "colours", "sharper")  # buttons that make a new job
ACTIONS = REMIXES + ("compare", "delete")
TOWARDS_ORIGINAL = ("less", "colours")  # remixes that take a picture back towards its original photo
STRENGTH_STEP = 1.5
MIN_STRENGTH = 0.1  # below this the style hardly shows; "Less style" stops here


class RemixRefused(Exception):
    """The press cannot make a job; the message says why, for the presser only."""


@dataclass(frozen=True)
class Remix:
    """The new job's settings: what ``/stylize`` would have been given."""

    preset: str
    strength: float
    preserve_colors: bool
    seed: int


def next_preset(preset: str, allowed: Sequence[str]) -> str | None:
    """The preset after ``preset`` in ``allowed`` (fast, balanced, best order), or None."""
    if preset not in allowed:
        return None
    index = list(allowed).index(preset)
    return allowed[index + 1] if index + 1 < len(allowed) else None


def remix(action: str, parent: StylizeParams, *, max_strength: float, allowed_presets: Sequence[str],
          new_seed: Callable[[], int] = lambda: random.randrange(2**31)) -> Remix:
    """The settings of the job that ``action`` makes from a result made with ``parent``.

    Only the one thing the button names changes; the seed stays, so the difference is the
    button's (Again alone draws a new one). Raises :class:`RemixRefused`.
    """
    preset, strength, colours, seed = parent.preset, parent.strength, parent.preserve_colors, parent.seed
    if action == "again":
        seed = new_seed()
    elif action == "more":
        if strength >= max_strength:
            raise RemixRefused(f"This result already has the most style allowed here (strength {max_strength:g}).")
        strength = min(max_strength, max(MIN_STRENGTH, strength * STRENGTH_STEP))  # from 0, a start
    elif action == "less":
        if strength <= MIN_STRENGTH:
            raise RemixRefused(f"This result already has the least style the button gives (strength "
                               f"{MIN_STRENGTH:g}). Try 🎨 Colours, or /stylize with a lower strength.")
        strength = max(MIN_STRENGTH, strength / STRENGTH_STEP)
    elif action == "colours":
        colours = not colours
    elif action == "sharper":
        sharper = next_preset(preset, allowed_presets)
        if sharper is None:
            raise RemixRefused(f"There is no sharper preset than `{preset}` that this server allows.")
        preset = sharper
    else:
        raise ValueError(f"not a remix: {action!r}")
    if preset not in allowed_presets:  # the server's rules tightened since the result was posted
        raise RemixRefused(f"This server no longer allows the `{preset}` preset, which this result used. "
                           "Use /stylize with another preset.")
    return Remix(preset=preset, strength=round(strength, 4), preserve_colors=colours, seed=seed)


class DoublePress:
    """Remembers recent presses (member, result, button): a second press while the first is
    still being handled, or within ``window_s`` after, answers with the first one's job instead
    of making another. Checked and marked without awaiting, so two presses handled at the same
    time cannot both pass."""

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._presses: dict[tuple[int, str, str], tuple[float, str | None]] = {}

    def first(self, user_id: int, job_id: str, action: str) -> tuple[bool, str | None]:
        """``(True, None)`` for a first press (now marked); ``(False, job id or None)`` for a
        repeat: the job the first press made, or None while it is still being made."""
        now = self.clock()
        if len(self._presses) > 256:  # now and then; presses still being made stay until made()
            self._presses = {k: v for k, v in self._presses.items() if v[1] is None or now - v[0] < self.window_s}
        key = (user_id, job_id, action)
        if key in self._presses:
            at, made = self._presses[key]
            if made is None or now - at < self.window_s:
                return False, made
        self._presses[key] = (now, None)
        return True, None

    def made(self, user_id: int, job_id: str, action: str, new_job_id: str | None) -> None:
        """The first press made ``new_job_id``; None: it made nothing, so pressing again may."""
        key = (user_id, job_id, action)
        if new_job_id is None:
            self._presses.pop(key, None)
        elif key in self._presses:
            self._presses[key] = (self._presses[key][0], new_job_id)
