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
    """(1, H, W, C) activations -> (C, C) Gram matrix divided by the number of positions."""
    channels = tf.shape(features)[-1]
    flat = tf.reshape(features, (-1, channels))
    positions = tf.cast(tf.shape(flat)[0], features.dtype)
    return tf.matmul(flat, flat, transpose_a=True) / positions


def layer_norms(targets: list[tf.Tensor], normalize: bool) -> tf.Tensor:
    """Per-layer divisors: the targets' mean squares, or ones for the plain formulas."""
    if not normalize:
        return tf.ones((len(targets),), tf.float32)
    return tf.stack([tf.reduce_mean(tf.square(t)) + 1e-8 for t in targets])


def content_loss(features: list[tf.Tensor], targets: list[tf.Tensor], norms: tf.Tensor) -> tf.Tensor:
    """Mean over layers of the mean squared feature distance."""
    per_layer = [tf.reduce_mean(tf.square(f - t)) / norms[i] for i, (f, t) in enumerate(zip(features, targets))]
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
    return tf.reduce_sum(tf.image.total_variation(image)) / pixels
