"""The loss summary of a run: plain data, no TensorFlow, so the bot can read it too."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LossSummary", "LOSS_NAMES"]

LOSS_NAMES = ("content", "style", "tv", "total")


@dataclass
class LossSummary:
    """What a run did. Loss components are weighted, so they add up to ``total``."""

    initial: dict[str, float]
    final: dict[str, float]
    history: list[dict[str, float]]  # downsampled; each has step and every loss
    iterations: int
    scales: list[tuple[int, int]]  # (width, height) of each scale
    resolution: tuple[int, int]
    seconds: float
    notes: list[str] = field(default_factory=list)
    scale_starts: list[int] = field(default_factory=list)  # 1-based step at which each scale began (first 1)

    def reduction(self, name: str) -> float:
        """How far a loss fell: final / initial (0 when it started at 0)."""
        start = self.initial.get(name, 0.0)
        return self.final.get(name, 0.0) / start if start else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LossSummary":
        values = dict(data)
        values["scales"] = [tuple(s) for s in values["scales"]]
        values["resolution"] = tuple(values["resolution"])
        values["scale_starts"] = [int(s) for s in values.get("scale_starts") or ()]  # absent before it existed
        return cls(**values)
