"""The validated parameters of one stylisation, as plain serialisable data."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import ParamsError
from .schedule import PRESETS, MIN_SCALE_SIZE, Preset

__all__ = ["StylizeParams", "BACKBONES", "PRECISIONS", "MAX_STRENGTH"]

BACKBONES = ("vgg19", "vgg16")
PRECISIONS = ("auto", "float32", "mixed")
MAX_SIZE = 4096
MAX_ITERATIONS = 20000
MAX_STRENGTH = 10.0  # the style weight times ten: beyond it the picture is only texture


@dataclass(frozen=True, kw_only=True)
class StylizeParams:
    """Everything that decides the output of :func:`nst_core.stylize`.

    ``size``, ``iterations`` and ``scales`` default to the preset's values. Loss weights
    are for size-normalised losses, so the same weights work at every resolution.
    """

    preset: str = "balanced"
    size: int | None = None  # longer side of the output in pixels
    iterations: int | None = None  # optimisation steps over all scales
    scales: int | None = None  # coarse-to-fine scales
    min_scale_size: int = MIN_SCALE_SIZE  # longer side of the first scale, at least
    # Tuned on real ImageNet features (benchmarks/preset_quality.py, `balanced`, five styles):
    # style distance at most 0.10 for each while the scene stays readable (SSIM 0.36-0.49).
    # 15 left Cubism (0.104) and the Great Wave (0.113) short of the style.
    content_weight: float = 1.0
    style_weight: float = 20.0
    tv_weight: float = 5e-4
    strength: float = 1.0  # multiplies the style weight; 0 reproduces the content
    preserve_colors: bool = False  # keep the content's colours, transfer texture and light
    style_blend: tuple[float, ...] | None = None  # weights when several style images are given
    seed: int = 0  # seeds the noise added to the starting image
    init_noise: float = 8.0  # std of that noise in 0..255 pixel units; lets texture grow in flat areas
    backbone: str = "vgg19"
    weights: str = "imagenet"  # "imagenet", "random" or a path to a Keras weights file
    content_layers: tuple[str, ...] = ("block4_conv2",)
    style_layers: tuple[str, ...] = (
        "block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1",
    )
    normalize_losses: bool = True  # divide each layer's loss by its target's mean square
    learning_rate: float = 4.0  # in 0..255 pixel units
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8  # size-normalised losses have small gradients: a large epsilon stalls Adam
    ema_decay: float = 0.9  # output is the moving average of iterates at the last scale
    precision: str = "auto"  # "auto": float16 on GPUs, bfloat16 on CPUs with native support
    style_scale: float = 1.0  # style image size relative to the output's longer side

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ParamsError(f"preset must be one of {', '.join(PRESETS)}, not {self.preset!r}")
        _int_range("size", self.size, 16, MAX_SIZE, optional=True)
        _int_range("iterations", self.iterations, 0, MAX_ITERATIONS, optional=True)
        _int_range("scales", self.scales, 1, 8, optional=True)
        _int_range("min_scale_size", self.min_scale_size, 16, MAX_SIZE)
        _int_range("seed", self.seed, 0, 2**31 - 1)
        for name in ("content_weight", "style_weight", "tv_weight", "learning_rate", "epsilon"):
            _float_range(name, getattr(self, name), 0.0, 1e12)
        _float_range("strength", self.strength, 0.0, MAX_STRENGTH)
        _float_range("init_noise", self.init_noise, 0.0, 128.0)
        _float_range("beta1", self.beta1, 0.0, 0.9999)
        _float_range("beta2", self.beta2, 0.0, 0.99999)
        _float_range("ema_decay", self.ema_decay, 0.0, 0.9999)
        _float_range("style_scale", self.style_scale, 0.1, 4.0)
        if self.backbone not in BACKBONES:
            raise ParamsError(f"backbone must be one of {', '.join(BACKBONES)}, not {self.backbone!r}")
        if self.precision not in PRECISIONS:
            raise ParamsError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if not isinstance(self.weights, str) or not self.weights:
            raise ParamsError("weights must be 'imagenet', 'random' or a file path")
        for name in ("preserve_colors", "normalize_losses"):
            if not isinstance(getattr(self, name), bool):
                raise ParamsError(f"{name} must be true or false")
        for name in ("content_layers", "style_layers"):
            layers = getattr(self, name)
            if not layers or not all(isinstance(x, str) and x for x in layers):
                raise ParamsError(f"{name} must name at least one layer")
            object.__setattr__(self, name, tuple(layers))
        if self.style_blend is not None:
            blend = tuple(float(w) for w in self.style_blend)
            if not blend or any(not math.isfinite(w) or w < 0 for w in blend) or sum(blend) <= 0:
                raise ParamsError("style_blend weights must be non-negative with a positive sum")
            object.__setattr__(self, "style_blend", blend)

    @property
    def preset_values(self) -> Preset:
        return PRESETS[self.preset]

    @property
    def target_size(self) -> int:
        return self.size if self.size is not None else self.preset_values.size

    @property
    def total_steps(self) -> int:
        return self.iterations if self.iterations is not None else self.preset_values.steps

    @property
    def scale_count(self) -> int:
        return self.scales if self.scales is not None else self.preset_values.scales

    def replace(self, **changes: Any) -> "StylizeParams":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible data (tuples become lists)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StylizeParams":
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParamsError(f"unknown parameter(s): {', '.join(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


def _int_range(name: str, value: Any, lo: int, hi: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamsError(f"{name} must be a whole number, not {value!r}")
    if not lo <= value <= hi:
        raise ParamsError(f"{name} must be between {lo} and {hi}, not {value}")


def _float_range(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamsError(f"{name} must be a number, not {value!r}")
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ParamsError(f"{name} must be between {lo:g} and {hi:g}, not {value}")
