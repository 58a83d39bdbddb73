"""The three losses of Gatys et al., as small pure TensorFlow functions.

Every loss is a mean, so it does not grow with the image: the same weights work at
every scale of the coarse-to-fine schedule. With ``normalize`` each layer's error is
divided by its target's mean square, so layers count equally whatever their
activation range (which differs by orders of magnitude between VGG blocks).
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["gram_matrix", "layer_norms", "content_loss", "style_loss", "tv_loss"]


def gram_matrix(features: tf.Tensor) -> tf.Tensor:
    """(1, H, W, C) activations -> float32 (C, C) Gram matrix divided by the number of positions.

    bfloat16 activations are multiplied in bfloat16: the kernel accumulates in float32 and
    rounds the result to bfloat16 (TensorFlow has no CPU kernel with a float32 result), which
    is then cast; bfloat16 has float32's range, so no entry can overflow. float16 activations
    are cast to float32 first, since a Gram entry easily exceeds float16's largest value, 65504.
    """
    if features.dtype == tf.float16:
        features = tf.cast(features, tf.float32)
    return _flat_gram(tf.reshape(features, (-1, tf.shape(features)[-1])))


@tf.custom_gradient
def _flat_gram(flat: tf.Tensor):
    """(N, C) -> (C, C) float32 F^T F / N, with a one-matmul gradient.

    The symbolic gradient of matmul(F, F, transpose_a=True) is two (N, C) x (C, C) matmuls
    and an add; since both operands are F it is F (U + U^T) / N, a single matmul.
    """
    positions = tf.cast(tf.shape(flat)[0], tf.float32)
    gram = tf.cast(tf.matmul(flat, flat, transpose_a=True), tf.float32) / positions

    def gradient(upstream: tf.Tensor) -> tf.Tensor:
        return tf.matmul(flat, tf.cast((upstream + tf.transpose(upstream)) / positions, flat.dtype))

    return gram, gradient


def layer_norms(targets: list[tf.Tensor], normalize: bool) -> tf.Tensor:
    """Per-layer divisors: the targets' mean squares, or ones for the plain formulas."""
    if not normalize:
        return tf.ones((len(targets),), tf.float32)
    return tf.stack([tf.reduce_mean(tf.square(t)) + 1e-8 for t in targets])


def content_loss(features: list[tf.Tensor], targets: list[tf.Tensor], norms: tf.Tensor) -> tf.Tensor:
    """Mean over layers of the mean squared feature distance (features in any precision, targets float32)."""
    per_layer = [
        tf.reduce_mean(tf.square(tf.cast(f, tf.float32) - t)) / norms[i] for i, (f, t) in enumerate(zip(features, targets))
    ]
    return tf.add_n(per_layer) / len(per_layer)


def style_loss(features: list[tf.Tensor], target_grams: list[tf.Tensor], norms: tf.Tensor) -> tf.Tensor:
    """Mean over layers of the mean squared Gram-matrix distance (equal layer weights)."""
    per_layer = [
        tf.reduce_mean(tf.square(gram_matrix(f) - g)) / norms[i] for i, (f, g) in enumerate(zip(features, target_grams))
    ]
    return tf.add_n(per_layer) / len(per_layer)


def tv_loss(image: tf.Tensor) -> tf.Tensor:
    """Total variation per pixel: tf.image.total_variation divided by height * width."""
    shape = tf.shape(image)
    pixels = tf.cast(shape[1] * shape[2], tf.float32)
    return _total_variation(image) / pixels


@tf.custom_gradient
def _total_variation(image: tf.Tensor):
    """Sum of absolute neighbour differences, with a gradient built from pads.

    The symbolic gradient goes through four StridedSliceGrad calls, a slow kernel. Each
    difference's sign enters the pixel after it with a plus and the pixel before it with a minus.
    """
    down = image[:, 1:] - image[:, :-1]
    right = image[:, :, 1:] - image[:, :, :-1]
    total = tf.reduce_sum(tf.abs(down)) + tf.reduce_sum(tf.abs(right))

    def gradient(upstream: tf.Tensor) -> tf.Tensor:
        sd, sr = tf.sign(down), tf.sign(right)
        grad = _pad(sd, 1, before=True) - _pad(sd, 1, before=False) + _pad(sr, 2, before=True) - _pad(sr, 2, before=False)
        return upstream * grad

    return total, gradient


def _pad(t: tf.Tensor, axis: int, *, before: bool) -> tf.Tensor:
    """One zero row or column along ``axis`` of an NHWC tensor, before the first or after the last."""
    paddings = [[0, 0]] * 4
    paddings[axis] = [1, 0] if before else [0, 1]
    return tf.pad(t, paddings)
