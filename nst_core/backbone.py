"""VGG feature extractors and where their weights come from.

The model maps RGB pixels in 0..255 to the requested layer activations. Caffe
preprocessing (BGR, ImageNet means subtracted) happens inside, so callers never see it.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Sequence

import keras
import tensorflow as tf

from .errors import WeightsError

__all__ = ["build_feature_model", "FeatureExtractor", "configure_devices", "resolve_precision", "has_gpu", "CAFFE_MEAN_BGR"]

log = logging.getLogger(__name__)

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_APPLICATIONS = {"vgg19": keras.applications.VGG19, "vgg16": keras.applications.VGG16}
_LAYER_ORDER = {
    "vgg16": [f"block{b}_conv{c}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3)) for c in range(1, n + 1)],
    "vgg19": [f"block{b}_conv{c}" for b, n in zip(range(1, 6), (2, 2, 4, 4, 4)) for c in range(1, n + 1)],
}
_WEIGHTS_HELP = (
    "Provide them in one of these ways: let Keras download them once (needs internet; they are "
    "cached in ~/.keras/models), put the file {file} in ~/.keras/models yourself, or pass a "
    "local Keras weights file for the network without its top (--weights PATH, or "
    "[engine] weights = \"PATH\")."
)
_KERAS_FILES = {
    "vgg19": "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
}


@functools.cache
def configure_devices() -> None:
    """Let GPU memory grow on demand (several workers may share a card); runs once.

    Must run before TensorFlow first touches a GPU.
    """
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised: growth can no longer change
            log.debug("memory growth not set on %s: GPU already initialised", gpu.name)


def has_gpu() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    """Map 'auto' | 'float32' | 'mixed' to a Keras dtype policy name.

    'auto' uses float16 on GPUs and bfloat16 only on CPUs that compute it natively
    (elsewhere it is emulated and slower than float32).
    """
    if precision == "float32":
        return "float32"
    if has_gpu():
        return "mixed_float16"
    if precision == "mixed" or _cpu_has_bf16():
        return "mixed_bfloat16"
    return "float32"


def build_feature_model(
    backbone: str, weights: str, layers: Sequence[str], policy: str = "float32", seed: int = 0
) -> "FeatureExtractor":
    """A model from RGB 0..255 images (1, H, W, 3) to the given layers' activations.

    It stops at the deepest layer used, so nothing beyond it is computed.
    ``weights``: 'imagenet' (Keras' download and cache), 'random' (seeded; tests) or a path.
    """
    if backbone not in _APPLICATIONS:
        raise WeightsError(f"Unknown backbone {backbone!r}; use vgg19 or vgg16.")
    known = _LAYER_ORDER[backbone]
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise WeightsError(f"{backbone} has no layer named {', '.join(unknown)}; known layers: {', '.join(known)}.")
    base = _load_base(backbone, weights, policy, seed)
    outputs = [base.get_layer(name).output for name in layers]
    return FeatureExtractor(keras.Model(base.input, outputs, name=f"{backbone}_features"), tuple(layers))


class FeatureExtractor:
    """Callable: RGB 0..255 float32 (1, H, W, 3) -> activations, one per layer.

    Caffe preprocessing runs in float32 ahead of the (possibly reduced-precision) network.
    Activations come back in the network's compute dtype: casting every feature map to
    float32 (and its gradient back) took about 0.1 s of a 1.2 s bfloat16 step at 512 px in a
    profile; the losses cast only what they need.
    """

    def __init__(self, model: keras.Model, layers: tuple[str, ...]) -> None:
        self.model = model
        self.layers = layers

    def __call__(self, rgb: tf.Tensor) -> list[tf.Tensor]:
        # tf.reverse, not rgb[..., ::-1]: the strided slice's gradient is a slow kernel.
        bgr = tf.reverse(rgb, axis=[-1]) - tf.constant(CAFFE_MEAN_BGR, dtype=tf.float32)
        feats = self.model(bgr, training=False)
        return list(feats) if isinstance(feats, (list, tuple)) else [feats]


def _load_base(backbone: str, weights: str, policy: str, seed: int) -> keras.Model:
    application = _APPLICATIONS[backbone]
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        if weights == "random":
            keras.utils.set_random_seed(seed)
            return application(include_top=False, weights=None, input_shape=(None, None, 3))
        if weights == "imagenet":
            return _load_imagenet(application, backbone)
        path = Path(os.path.expanduser(weights))
        if not path.is_file():
            raise WeightsError(f"Weights file {path} does not exist. " + _WEIGHTS_HELP.format(file=_KERAS_FILES[backbone]))
        try:
            return application(include_top=False, weights=str(path), input_shape=(None, None, 3))
        except Exception as exc:  # Keras raises many types for a wrong or broken file
            raise WeightsError(
                f"Could not load {backbone} weights from {path}: {exc}. The file must hold the "
                f"weights of {backbone} without its top (a Keras .h5 or .weights.h5 file)."
            ) from exc
    finally:
        keras.config.set_dtype_policy(previous)


def _load_imagenet(application, backbone: str) -> keras.Model:
    try:
        return application(include_top=False, weights="imagenet", input_shape=(None, None, 3))
    except Exception as exc:  # download failures surface as URLError, OSError, Exception
        raise WeightsError(
            f"The ImageNet weights for {backbone} are not cached and could not be downloaded ({exc}). "
            + _WEIGHTS_HELP.format(file=_KERAS_FILES[backbone])
        ) from exc
