"""The Gram matrix in every precision: its values, its hand-written gradient, its range."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from nst_core.losses import gram_matrix  # noqa: E402


def _features(seed: int = 0, shape=(1, 6, 5, 4)) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).uniform(0.0, 3.0, shape).astype(np.float32))


def _plain_gram(features: tf.Tensor) -> tf.Tensor:
    flat = tf.reshape(features, (-1, features.shape[-1]))
    return tf.matmul(flat, flat, transpose_a=True) / flat.shape[0]


def test_the_gram_matrix_is_the_mean_outer_product_of_positions():
    f = _features()
    flat = f.numpy().reshape(-1, 4)
    expected = sum(np.outer(row, row) for row in flat) / len(flat)
    assert gram_matrix(f).dtype == tf.float32
    np.testing.assert_allclose(gram_matrix(f).numpy(), expected, rtol=1e-5)


def test_its_one_matmul_gradient_equals_the_symbolic_one():
    f = _features(1)
    weights = tf.constant(np.random.default_rng(2).normal(size=(4, 4)).astype(np.float32))  # not symmetric
    grads = []
    for gram in (gram_matrix, _plain_gram):
        with tf.GradientTape() as tape:
            tape.watch(f)
            loss = tf.reduce_sum(gram(f) * weights)
        grads.append(tape.gradient(loss, f).numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_bfloat16_features_give_a_float32_gram_and_gradient_close_to_float32():
    f = _features(3, (1, 16, 16, 8))
    low = tf.cast(f, tf.bfloat16)
    with tf.GradientTape() as tape:
        tape.watch(low)
        gram = gram_matrix(low)
        loss = tf.reduce_sum(tf.square(gram))
    grad = tape.gradient(loss, low)
    assert gram.dtype == tf.float32 and grad.dtype == tf.bfloat16
    reference = gram_matrix(tf.cast(low, tf.float32))
    np.testing.assert_allclose(gram.numpy(), reference.numpy(), rtol=1e-2)


def test_float16_features_beyond_its_range_do_not_overflow():
    f = tf.cast(tf.fill((1, 4, 4, 2), 400.0), tf.float16)  # 400^2 = 160000 > float16's 65504
    assert np.allclose(gram_matrix(f).numpy(), 160000.0)


def test_total_variation_and_its_gradient_match_tensorflows():
    from nst_core.losses import tv_loss

    image = tf.constant(np.random.default_rng(4).uniform(0, 255, (1, 7, 5, 3)).astype(np.float32))
    image = tf.concat([image, image[:, -1:]], axis=1)  # a repeated row: differences of exactly zero
    results = []
    for loss in (tv_loss, lambda x: tf.reduce_sum(tf.image.total_variation(x)) / (8 * 5)):
        with tf.GradientTape() as tape:
            tape.watch(image)
            value = loss(image)
        results.append((value.numpy(), tape.gradient(value, image).numpy()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-7)
