"""Neural style transfer engine (Gatys et al. 2015) on TensorFlow 2 + Keras. No Discord here.

Modules: ``images`` (check and decode uploads; ``decode_cost`` finds the costly ones) ·
``pixels`` (colour modes, arrays, resizing, encoding, fit to a byte budget) · ``backbone``
(VGG feature models and weights) · ``losses`` · ``schedule`` (presets, coarse-to-fine sizes) ·
``params`` (validated options) · ``engine`` (``stylize``) · ``cli`` (the ``nst`` command) ·
``pool`` (warm worker processes).

TensorFlow is imported lazily: ``import nst_core`` stays cheap for processes (like the
bot) that only need images, params or errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import Cancelled, ImageError, NSTError, ParamsError, WeightsError
from .params import StylizeParams
from .schedule import PRESETS
from .summary import LossSummary

if TYPE_CHECKING:
    from .engine import Engine, ProgressEvent, StylizeResult, stylize

__all__ = [
    "Cancelled", "ImageError", "NSTError", "ParamsError", "WeightsError",
    "StylizeParams", "PRESETS",
    "Engine", "LossSummary", "ProgressEvent", "StylizeResult", "stylize",
]

_ENGINE_NAMES = {"Engine", "ProgressEvent", "StylizeResult", "stylize"}


def __getattr__(name: str):
    if name in _ENGINE_NAMES:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'nst_core' has no attribute {name!r}")
