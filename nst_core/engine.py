"""The stylisation driver: coarse-to-fine Adam on the pixels, one compiled step.

``Engine`` keeps feature models, their compiled step and the style targets it has
seen, so a long-lived worker pays for each of them once. ``stylize`` is the whole
public surface; progress goes to a callback and cancellation comes from another.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from .pixels import from_array, image_hash, resize_longer_side, resize_to, to_array
from .backbone import FeatureExtractor, build_feature_model, configure_devices, resolve_precision
from .errors import Cancelled, ImageError, ParamsError
from .losses import content_loss, gram_matrix, layer_norms, style_loss, tv_loss
from .params import StylizeParams
from .schedule import fit_size, scale_sizes, split_steps
from .summary import LOSS_NAMES, LossSummary

__all__ = ["Engine", "stylize", "ProgressEvent", "LossSummary", "StylizeResult", "ImageInput"]

ImageInput = Image.Image | np.ndarray
HISTORY_POINTS = 64
PREVIEW_SIZE = 256
MIN_SIDE = 16  # pixels; VGG's four poolings before block5 need at least this
STYLE_CACHE_ENTRIES = 32
_FLOAT16_LOSS_SCALE = 1024.0  # keeps float16 gradients out of the subnormal range


@dataclass(frozen=True)
class ProgressEvent:
    """One optimisation step. ``preview`` (small RGB uint8) only at the end of a scale."""

    step: int  # 1-based, over all scales
    total: int
    scale: int  # 0-based index of the current scale
    scales: int
    size: tuple[int, int]  # (width, height) of the current scale
    losses: dict[str, float]
    preview: np.ndarray | None = None


@dataclass
class StylizeResult:
    image: Image.Image
    summary: LossSummary


class _Objective:
    """One feature model with its compiled step, shared by every image size.

    The step takes the image and Adam's state as tensors with unknown height and width,
    so it is traced once for all scales and all jobs instead of once per shape.
    """

    def __init__(self, extractor: FeatureExtractor, n_content: int, policy: str, jit_compile: bool | None) -> None:
        self.extractor = extractor
        self.n_content = n_content
        self.loss_scale = _FLOAT16_LOSS_SCALE if policy == "mixed_float16" else 1.0
        self.traces = 0
        image = tf.TensorSpec((1, None, None, 3), tf.float32)
        any_ = tf.TensorSpec(None, tf.float32)
        n_style = len(extractor.layers) - n_content
        targets = (
            [any_] * n_content, any_, [any_] * n_style, any_,
            tf.TensorSpec((3,), tf.float32),
        )
        self.features = tf.function(lambda x: self.extractor(x), input_signature=[image], reduce_retracing=True)
        self.losses = tf.function(self._losses, input_signature=[image, *targets])
        self.step = tf.function(
            self._step, jit_compile=jit_compile,
            input_signature=[image, image, image, image, tf.TensorSpec((), tf.float32), *targets,
                             tf.TensorSpec((5,), tf.float32)])

    def _losses(self, x, content_targets, content_norms, style_targets, style_norms, weights):
        feats = self.extractor(x)
        c = content_loss(feats[: self.n_content], content_targets, content_norms)
        s = style_loss(feats[self.n_content:], style_targets, style_norms)
        terms = tf.stack([c, s, tv_loss(x)]) * weights
        return tf.concat([terms, [tf.reduce_sum(terms)]], axis=0)

    def _step(self, x, m, v, ema, t, content_targets, content_norms, style_targets, style_norms, weights, hyper):
        self.traces += 1  # Python side effect: runs only while tracing
        lr, beta1, beta2, eps, decay = tf.unstack(hyper)
        with tf.GradientTape() as tape:
            tape.watch(x)
            losses = self._losses(x, content_targets, content_norms, style_targets, style_norms, weights)
            scaled = losses[3] * self.loss_scale
        grad = tape.gradient(scaled, x) / self.loss_scale
        grad = tf.where(tf.math.is_finite(grad), grad, tf.zeros_like(grad))  # float16 overflow: skip
        # Adam as in Keras (epsilon outside the bias correction), on 0..255 pixels.
        m = beta1 * m + (1.0 - beta1) * grad
        v = beta2 * v + (1.0 - beta2) * tf.square(grad)
        step_size = lr * tf.sqrt(1.0 - tf.pow(beta2, t)) / (1.0 - tf.pow(beta1, t))
        x = tf.clip_by_value(x - step_size * m / (tf.sqrt(v) + eps), 0.0, 255.0)
        ema = decay * ema + (1.0 - decay) * x
        return x, m, v, ema, losses


class Engine:
    """Holds warm models, compiled steps and cached style targets; thread-compatible, not thread-safe."""

    def __init__(self, *, jit_compile: bool | None = None) -> None:
        """``jit_compile``: compile the step with XLA (per image shape); None lets TensorFlow decide."""
        configure_devices()
        self.jit_compile = jit_compile
        self._objectives: dict[tuple, _Objective] = {}
        self._style_cache: collections.OrderedDict[tuple, list[tf.Tensor]] = collections.OrderedDict()
        self.style_cache_hits = 0

    def objective(self, params: StylizeParams) -> _Objective:
        """The compiled objective for these params' backbone, weights, precision and layers."""
        policy = resolve_precision(params.precision)
        key = (params.backbone, params.weights, policy, params.content_layers, params.style_layers)
        if key not in self._objectives:
            layers = params.content_layers + params.style_layers
            extractor = build_feature_model(params.backbone, params.weights, layers, policy)
            self._objectives[key] = _Objective(extractor, len(params.content_layers), policy, self.jit_compile)
        return self._objectives[key]

    def warm_up(self, params: StylizeParams | None = None) -> None:
        """Load the model and trace the step now, so the first job does not pay for it."""
        params = params or StylizeParams()
        tiny = np.full((32, 32, 3), 128, np.uint8)
        self.stylize(tiny, tiny, params.replace(size=32, iterations=1, scales=1, min_scale_size=32))

    def stylize(
        self,
        content: ImageInput,
        style: ImageInput | Sequence[ImageInput],
        params: StylizeParams | None = None,
        *,
        on_progress: Callable[[ProgressEvent], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> StylizeResult:
        """Repaint ``content`` in the style of ``style`` (one image or several, see ``style_blend``).

        Raises :class:`Cancelled` within one step of ``should_stop()`` turning true.
        """
        params = params or StylizeParams()
        started = time.perf_counter()
        styles = list(style) if isinstance(style, (list, tuple)) else [style]
        blend = _blend_weights(params, len(styles))
        objective = self.objective(params)
        content_img = _as_image(content)
        style_imgs = [_as_image(s) for s in styles]

        sizes = scale_sizes(params.target_size, params.scale_count, params.min_scale_size)
        shapes = [fit_size(*content_img.size, s) for s in sizes]
        _check_shape(content_img.size, shapes[0])
        steps_per_scale = split_steps(params.total_steps, sizes)
        total = sum(steps_per_scale)
        weights = tf.constant(
            [params.content_weight, params.style_weight * params.strength, params.tv_weight], tf.float32)
        hyper = tf.constant(
            [params.learning_rate, params.beta1, params.beta2, params.epsilon, params.ema_decay], tf.float32)

        rng = np.random.default_rng(params.seed)
        x = None
        step = 0
        initial: dict[str, float] | None = None
        history: list[dict[str, float]] = []
        scale_starts: list[int] = []  # the 1-based step at which each scale began
        for index, ((width, height), n_steps) in enumerate(zip(shapes, steps_per_scale)):
            scale_starts.append(step + 1)
            content_px = _tensor(resize_to(content_img, width, height))
            if x is None:
                noise = rng.normal(0.0, params.init_noise, content_px.shape).astype(np.float32)
                x = tf.clip_by_value(content_px + noise, 0.0, 255.0)
            else:
                x = tf.clip_by_value(tf.image.resize(x, (height, width), method="bicubic"), 0.0, 255.0)
            targets = self._targets(objective, params, content_px, style_imgs, blend, max(width, height))
            m, v, ema = tf.zeros_like(x), tf.zeros_like(x), x
            for t in range(1, n_steps + 1):
                if should_stop is not None and should_stop():
                    raise Cancelled("The job was cancelled.")
                x, m, v, ema, losses = objective.step(x, m, v, ema, tf.constant(t, tf.float32), *targets, weights, hyper)
                step += 1
                values = dict(zip(LOSS_NAMES, (float(l) for l in losses.numpy())))
                initial = initial or values
                history.append({"step": step, **values})
                if on_progress is not None:
                    preview = _preview(ema) if t == n_steps else None
                    on_progress(ProgressEvent(step, total, index, len(shapes), (width, height), values, preview))
            x = ema if n_steps else x

        final = dict(zip(LOSS_NAMES, (float(l) for l in objective.losses(x, *targets, weights).numpy())))
        output = from_array(np.round(x[0].numpy()))
        if params.preserve_colors:
            output = _keep_colors(output, content_img)
        summary = LossSummary(
            initial=initial or final, final=final, history=_downsample(history, HISTORY_POINTS),
            iterations=step, scales=shapes, resolution=shapes[-1], seconds=time.perf_counter() - started,
            scale_starts=scale_starts,
        )
        return StylizeResult(output, summary)

    def _targets(self, objective: _Objective, params: StylizeParams, content_px: tf.Tensor,
                 styles: list[Image.Image], blend: list[float], longer_side: int) -> tuple:
        content_feats = [tf.cast(f, tf.float32) for f in objective.features(content_px)[: objective.n_content]]
        grams = None
        style_side = max(16, round(longer_side * params.style_scale))
        for img, w in zip(styles, blend):
            if w == 0:
                continue
            g = [w * gram for gram in self._style_grams(objective, img, style_side)]
            grams = g if grams is None else [a + b for a, b in zip(grams, g)]
        return (
            content_feats, layer_norms(content_feats, params.normalize_losses),
            grams, layer_norms(grams, params.normalize_losses),
        )

    def _style_grams(self, objective: _Objective, img: Image.Image, longer_side: int) -> list[tf.Tensor]:
        """Gram matrices of a style image at a size, cached by pixel hash (styles repeat a lot)."""
        key = (id(objective), image_hash(img), longer_side)
        if key in self._style_cache:
            self._style_cache.move_to_end(key)
            self.style_cache_hits += 1
            return self._style_cache[key]
        pixels = _tensor(resize_longer_side(img, longer_side))
        grams = [gram_matrix(f) for f in objective.features(pixels)[objective.n_content:]]
        self._style_cache[key] = grams
        if len(self._style_cache) > STYLE_CACHE_ENTRIES:
            self._style_cache.popitem(last=False)
        return grams


_default_engine: Engine | None = None
_default_lock = threading.Lock()


def stylize(
    content: ImageInput,
    style: ImageInput | Sequence[ImageInput],
    params: StylizeParams | None = None,
    *,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> StylizeResult:
    """:meth:`Engine.stylize` on a process-wide engine created on first use."""
    global _default_engine
    with _default_lock:
        if _default_engine is None:
            _default_engine = Engine()
    return _default_engine.stylize(content, style, params, on_progress=on_progress, should_stop=should_stop)


def _check_shape(original: tuple[int, int], first_scale: tuple[int, int]) -> None:
    """VGG halves the image four times before block5: thinner strips cannot be stylised."""
    if min(first_scale) < MIN_SIDE:
        width, height = original
        raise ImageError(
            f"The content image is too long and thin ({width}×{height}): at this size its shorter side would be "
            f"{min(first_scale)} px, and at least {MIN_SIDE} px is needed. Crop it closer to a square, or ask for "
            f"a larger size.")


def _blend_weights(params: StylizeParams, count: int) -> list[float]:
    if count == 0:
        raise ParamsError("at least one style image is needed")
    if params.style_blend is None:
        return [1.0 / count] * count
    if len(params.style_blend) != count:
        raise ParamsError(f"style_blend has {len(params.style_blend)} weights for {count} style images")
    total = sum(params.style_blend)
    return [w / total for w in params.style_blend]


def _as_image(value: ImageInput) -> Image.Image:
    if isinstance(value, Image.Image):
        return value.convert("RGB") if value.mode != "RGB" else value
    if isinstance(value, np.ndarray):
        return from_array(value)
    raise ParamsError(f"images must be PIL images or uint8 arrays, not {type(value).__name__}")


def _tensor(img: Image.Image) -> tf.Tensor:
    return tf.constant(to_array(img)[None].astype(np.float32))


def _preview(x: tf.Tensor) -> np.ndarray:
    img = from_array(np.round(x[0].numpy()))
    return to_array(resize_longer_side(img, min(PREVIEW_SIZE, max(img.size))))


def _keep_colors(output: Image.Image, content: Image.Image) -> Image.Image:
    """Luminance from the stylised output, chroma (Cb, Cr) from the content."""
    y, _, _ = output.convert("YCbCr").split()
    _, cb, cr = resize_to(content, *output.size).convert("YCbCr").split()
    return Image.merge("YCbCr", (y, cb, cr)).convert("RGB")


def _downsample(history: list[dict[str, float]], points: int) -> list[dict[str, float]]:
    if len(history) <= points:
        return history
    picks = np.linspace(0, len(history) - 1, points).round().astype(int)
    return [history[i] for i in sorted(set(picks))]
