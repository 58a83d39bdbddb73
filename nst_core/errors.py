"""Exception types of the engine. Each message is written for the person who caused it."""

from __future__ import annotations

__all__ = ["NSTError", "ImageError", "WeightsError", "ParamsError", "Cancelled"]


class NSTError(Exception):
    """Base class: ``str(error)`` is a complete, user-readable sentence."""


class ImageError(NSTError):
    """An input image was refused: not an image, truncated, empty or too large."""


class WeightsError(NSTError):
    """Backbone weights could not be found or loaded."""


class ParamsError(NSTError, ValueError):
    """A stylisation parameter is out of range or of the wrong type."""


class Cancelled(NSTError):
    """The caller asked to stop (``should_stop`` returned true)."""
