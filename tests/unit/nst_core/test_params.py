"""Parameters and schedule: validation and the pure helpers."""

from __future__ import annotations

import json

import pytest

from nst_core import PRESETS, ParamsError, StylizeParams
from nst_core.schedule import fit_size, scale_sizes, split_steps


def test_defaults_come_from_the_preset():
    p = StylizeParams(preset="fast")
    assert (p.target_size, p.total_steps, p.scale_count) == (PRESETS["fast"].size, PRESETS["fast"].steps, PRESETS["fast"].scales)
    assert StylizeParams(preset="fast", size=300).target_size == 300


@pytest.mark.parametrize("changes, message", [
    ({"preset": "ultra"}, "preset must be one of"),
    ({"size": 10}, "size must be between"),
    ({"size": 512.5}, "size must be a whole number"),
    ({"iterations": -1}, "iterations must be between"),
    ({"strength": float("nan")}, "strength must be between"),
    ({"strength": "strong"}, "strength must be a number"),
    ({"backbone": "resnet"}, "backbone must be one of"),
    ({"precision": "int8"}, "precision must be one of"),
    ({"style_blend": (1.0, -1.0)}, "style_blend"),
    ({"preserve_colors": "yes"}, "preserve_colors must be true or false"),
    ({"seed": True}, "seed must be a whole number"),
])
def test_bad_values_are_refused_with_the_field_name(changes, message):
    with pytest.raises(ParamsError, match=message):
        StylizeParams(**changes)


def test_round_trip_through_json():
    p = StylizeParams(preset="best", seed=3, style_blend=(1.0, 2.0), preserve_colors=True)
    assert StylizeParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(ParamsError, match="unknown parameter"):
        StylizeParams.from_dict({"sizee": 3})


def test_scale_sizes_grow_to_the_target():
    assert scale_sizes(512, 3) == [256, 362, 512]
    assert scale_sizes(768, 4) == [256, 369, 533, 768]  # the style's structure is laid down at 256 px
    assert scale_sizes(384, 2) == [192, 384]
    assert scale_sizes(512, 1) == [512]
    assert scale_sizes(100, 3) == [100]  # smaller than the first scale: one scale
    for preset in PRESETS.values():
        sizes = scale_sizes(preset.size, preset.scales)
        assert sizes[-1] == preset.size and sizes == sorted(sizes) and len(sizes) == preset.scales


def test_split_steps_favours_small_scales_and_keeps_the_total():
    steps = split_steps(300, [256, 362, 512])
    assert sum(steps) == 300 and steps[0] > steps[1] > steps[2] > 0
    assert split_steps(3, [100, 200, 300]) == [1, 1, 1]
    assert sum(split_steps(2, [100, 200, 300])) == 2


def test_fit_size_keeps_aspect():
    assert fit_size(4000, 3000, 512) == (512, 384)
    assert fit_size(20000, 20, 512) == (512, 1)
