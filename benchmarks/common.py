"""Shared bits of the benchmark scripts: where the pictures are and how to time our steps."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from nst_core.images import decode_image
from nst_core.pixels import resize_longer_side, to_array

SHARED_IMAGES = Path(os.environ.get("NST_SHARED_IMAGES", Path(__file__).resolve().parents[2] / "shared" / "images"))
CONTENT = SHARED_IMAGES / "content" / "Tuebingen_Neckarfront.jpg"
OUT = Path(__file__).resolve().parent / "out"


def load(path: Path):
    if not path.exists():
        raise SystemExit(f"{path} not found: set NST_SHARED_IMAGES to the folder holding content/ and style/")
    return decode_image(path.read_bytes())


def styles() -> list[Path]:
    return sorted((SHARED_IMAGES / "style").glob("*.jpg"))


def rgb_at(path: Path, size: int) -> np.ndarray:
    return to_array(resize_longer_side(load(path), size))


def time_engine_steps(engine, content, style, params, steps: int) -> float:
    """Seconds per step of our engine at one scale, after its first (tracing) step."""
    stamps: list[float] = []
    engine.stylize(content, style, params.replace(iterations=steps, scales=1),
                   on_progress=lambda e: stamps.append(time.perf_counter()))
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)
