"""The engine end to end on tiny images with random VGG weights."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nst_core import Cancelled, ParamsError, StylizeParams, WeightsError
from conftest import make_content, make_style


def test_losses_fall_and_output_has_the_requested_size(engine, content_rgb, style_rgb, tiny_params):
    params = tiny_params.replace(iterations=60, scales=1, learning_rate=20.0)
    result = engine.stylize(content_rgb, style_rgb, params)
    assert isinstance(result.image, Image.Image) and result.image.mode == "RGB"
    assert result.image.size == (48, 32)  # longer side = size, aspect of the 48x32 content kept
    s = result.summary
    assert s.final["style"] < 0.9 * s.initial["style"]  # random weights: slow but steady
    assert s.final["total"] < s.initial["total"]
    assert s.iterations == 60 and s.resolution == (48, 32)
    assert abs(s.final["total"] - (s.final["content"] + s.final["style"] + s.final["tv"])) < 1e-3 * s.final["total"]
    assert len(s.history) <= 64 and s.history[0]["step"] == 1 and s.history[-1]["step"] == 60
    assert s.seconds > 0


def test_the_image_changes_towards_the_style(engine, content_rgb, style_rgb, tiny_params):
    out = np.asarray(engine.stylize(content_rgb, style_rgb, tiny_params.replace(iterations=20)).image, np.float32)
    assert np.abs(out - content_rgb).mean() > 2.0


def test_progress_every_step_with_previews_at_scale_ends(engine, content_rgb, style_rgb, tiny_params):
    events = []
    result = engine.stylize(content_rgb, style_rgb, tiny_params, on_progress=events.append)
    assert [e.step for e in events] == list(range(1, tiny_params.total_steps + 1))
    assert all(e.total == tiny_params.total_steps and e.scales == 2 for e in events)
    assert [e.size for e in events][0] == (32, 21) and events[-1].size == (48, 32)
    with_preview = [e for e in events if e.preview is not None]
    # exactly one preview per scale, at its last step
    assert [e.scale for e in with_preview] == [0, 1]
    assert all(events[events.index(e) + 1].scale == e.scale + 1 for e in with_preview[:-1])
    assert with_preview[-1].preview.dtype == np.uint8 and with_preview[-1].preview.shape == (32, 48, 3)
    assert set(events[0].losses) == {"content", "style", "tv", "total"}
    assert result.summary.scales == [(32, 21), (48, 32)]


def test_cancel_stops_within_one_step(engine, content_rgb, style_rgb, tiny_params):
    steps = []
    with pytest.raises(Cancelled):
        engine.stylize(content_rgb, style_rgb, tiny_params.replace(iterations=50),
                       on_progress=lambda e: steps.append(e.step), should_stop=lambda: len(steps) >= 3)
    assert steps == [1, 2, 3]


def test_same_seed_same_output_other_seed_differs(engine, content_rgb, style_rgb, tiny_params):
    a = np.asarray(engine.stylize(content_rgb, style_rgb, tiny_params.replace(seed=7)).image)
    b = np.asarray(engine.stylize(content_rgb, style_rgb, tiny_params.replace(seed=7)).image)
    c = np.asarray(engine.stylize(content_rgb, style_rgb, tiny_params.replace(seed=8)).image)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_one_trace_for_all_steps_scales_and_sizes(content_rgb, style_rgb, tiny_params):
    from nst_core.engine import Engine

    fresh = Engine()
    fresh.stylize(content_rgb, style_rgb, tiny_params.replace(iterations=6, scales=3))
    fresh.stylize(make_content(40, 56), style_rgb, tiny_params.replace(size=56, iterations=4))
    assert fresh.objective(tiny_params).traces == 1


def test_preserve_colors_keeps_the_content_chroma(engine, content_rgb, style_rgb, tiny_params):
    out = engine.stylize(content_rgb, style_rgb, tiny_params.replace(preserve_colors=True, iterations=20)).image
    plain = engine.stylize(content_rgb, style_rgb, tiny_params.replace(iterations=20)).image
    content_ycc = np.asarray(Image.fromarray(content_rgb).convert("YCbCr"), np.float32)
    out_ycc = np.asarray(out.convert("YCbCr"), np.float32)
    plain_ycc = np.asarray(plain.convert("YCbCr"), np.float32)
    chroma_err = np.abs(out_ycc[..., 1:] - content_ycc[..., 1:]).mean()
    assert chroma_err < 2.0  # rounding through RGB only
    assert np.abs(plain_ycc[..., 1:] - content_ycc[..., 1:]).mean() > 2 * chroma_err + 1
    # the texture (luminance) still comes from the stylised image
    assert np.abs(out_ycc[..., 0] - plain_ycc[..., 0]).mean() < 2.0


def test_style_cache_reused_and_blend_validated(content_rgb, style_rgb, tiny_params):
    from nst_core.engine import Engine

    fresh = Engine()
    fresh.stylize(content_rgb, style_rgb, tiny_params.replace(iterations=1))
    hits = fresh.style_cache_hits
    fresh.stylize(content_rgb, style_rgb.copy(), tiny_params.replace(iterations=1))
    assert fresh.style_cache_hits == hits + 2  # both scales' targets came from the cache
    other = make_style(seed=5)
    blended = fresh.stylize(content_rgb, [style_rgb, other], tiny_params.replace(style_blend=(3.0, 1.0)))
    assert blended.image.size == (48, 32)
    with pytest.raises(ParamsError, match="style_blend has 1 weights for 2"):
        fresh.stylize(content_rgb, [style_rgb, other], tiny_params.replace(style_blend=(1.0,)))


def test_zero_iterations_returns_the_content_size(engine, content_rgb, style_rgb, tiny_params):
    result = engine.stylize(content_rgb, style_rgb, tiny_params.replace(iterations=0, init_noise=0.0, scales=1))
    assert result.summary.iterations == 0
    assert np.abs(np.asarray(result.image, np.float32) - content_rgb).mean() < 1.0


def test_a_long_thin_strip_is_refused_with_a_clear_error(engine, style_rgb, tiny_params):
    from nst_core import ImageError

    strip = make_content(2000, 20)
    with pytest.raises(ImageError, match="too long and thin.*2000×20"):
        engine.stylize(strip, style_rgb, tiny_params)


def test_missing_weights_file_is_a_clear_error(engine, content_rgb, style_rgb, tiny_params):
    with pytest.raises(WeightsError, match="does not exist.*weights"):
        engine.stylize(content_rgb, style_rgb, tiny_params.replace(weights="/nonexistent/vgg.h5"))


def test_vgg16_backbone_runs(engine, content_rgb, style_rgb, tiny_params):
    result = engine.stylize(content_rgb, style_rgb, tiny_params.replace(backbone="vgg16", iterations=4))
    assert result.summary.iterations == 4


def test_summary_records_where_each_scale_began(engine, content_rgb, style_rgb, tiny_params):
    from nst_core import LossSummary

    params = tiny_params.replace(iterations=8, scales=2)
    events = []
    summary = engine.stylize(content_rgb, style_rgb, params, on_progress=events.append).summary
    starts = summary.scale_starts
    assert len(starts) == len(summary.scales) == 2
    assert starts[0] == 1 and all(a < b for a, b in zip(starts, starts[1:]))
    # each start is the first step reported for that scale
    assert starts == [next(e.step for e in events if e.scale == i) for i in range(2)]
    assert LossSummary.from_dict(summary.to_dict()).scale_starts == starts
    old = summary.to_dict()
    del old["scale_starts"]  # stored by a version before the field existed
    assert LossSummary.from_dict(old).scale_starts == []
