"""Shared fixtures: tiny generated pictures and a warm engine with random weights."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Ray starts its worker processes (our actors) at nice 15 by default: beside other tests running
# at the same time (pytest-xdist) they would get almost no CPU and Ray's tests crawl. The raylet
# reads this when a test starts Ray, so actors compete like the local pool's workers do.
os.environ.setdefault("RAY_worker_niceness", "0")

REPO = Path(__file__).resolve().parent.parent  # the repository's root, wherever a test file lies

import numpy as np
import pytest


def make_content(width: int = 48, height: int = 32) -> np.ndarray:
    """A small 'scene': a sky gradient, a dark house block and a bright sun."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3), np.float32)
    img[..., 0] = 90 + 100 * y / height
    img[..., 1] = 140 + 60 * y / height
    img[..., 2] = 220 - 40 * y / height
    img[height // 2:, width // 4: width // 2] = (120, 60, 40)
    img[(y - height // 4) ** 2 + (x - 3 * width // 4) ** 2 < (height // 6) ** 2] = (250, 220, 60)
    return img.clip(0, 255).astype(np.uint8)


def make_style(width: int = 40, height: int = 40, seed: int = 1) -> np.ndarray:
    """Strong diagonal stripes with noise: a texture VGG features respond to."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    stripes = ((x + y) // 4) % 2
    img = np.stack([200 * stripes + 30, 40 + 100 * (1 - stripes), 160 * stripes], axis=-1).astype(np.float32)
    img += rng.normal(0, 20, img.shape)
    return img.clip(0, 255).astype(np.uint8)


# Under pytest-xdist (pyproject: -n ... --dist loadscope) a file, or a test class, runs whole on
# one worker, and the files are handed out in collection order. The long ones (mostly waiting:
# worker start-ups, restarts, bots against the fake Discord) go first, so the short ones fill in
# around them instead of the longest starting last. Within a file the order is kept.
LONG_FIRST = (
    "test_ray_pool.py", "test_pool.py", "test_durability_e2e.py", "test_play_e2e.py", "test_stylize_e2e.py",
    "test_events_e2e.py", "test_gateway_e2e.py",
    "test_cli.py", "test_workers_down_e2e.py", "test_engine.py", "test_servers_e2e.py", "test_image_bombs.py",
    "test_hostile_e2e.py",
)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a plain run keeps pytest's order
        rank = {name: i for i, name in enumerate(LONG_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.fixture(scope="session")
def content_rgb() -> np.ndarray:
    return make_content()


@pytest.fixture(scope="session")
def style_rgb() -> np.ndarray:
    return make_style()


@pytest.fixture(scope="session")
def engine():
    from nst_core.engine import Engine

    return Engine()


@pytest.fixture(scope="session")
def tiny_params():
    """Random VGG19 weights, a 48 px output over two scales, a few steps: fast on any CPU."""
    from nst_core import StylizeParams

    return StylizeParams(
        weights="random", size=48, scales=2, min_scale_size=32, iterations=8, precision="float32",
        style_weight=1e3, tv_weight=1.0, learning_rate=6.0,
    )

