"""A faithful re-implementation of the original loop, the baseline for our benchmarks.

Facts of the original: Keras VGG without top, content block5_conv2, style
block1_conv1..block5_conv1 with equal weights, Gram matrices divided by the number of
positions, mean squared errors, summed total variation, weights content 0.1 / style 100 /
TV 1, Adam (lr 5, beta1 0.99, epsilon 0.1) on caffe-preprocessed pixels initialised from
the content, pixels clipped after every step, lowest-loss iterate kept, and an eager
Python loop.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
CONTENT_LAYER = "block5_conv2"
STYLE_LAYERS = ["block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1"]
CONTENT_WEIGHT, STYLE_WEIGHT, TV_WEIGHT = 0.1, 100.0, 1.0


def full_model(backbone: str, weights: str | None) -> keras.Model:
    """The whole convolutional part, every layer's output by name (as the original built it)."""
    app = {"vgg19": keras.applications.VGG19, "vgg16": keras.applications.VGG16}[backbone]
    base = app(include_top=False, weights=weights, input_shape=(None, None, 3))
    return keras.Model(base.input, {layer.name: layer.output for layer in base.layers[1:]})


def preprocess(rgb: np.ndarray) -> tf.Tensor:
    return tf.constant((rgb[..., ::-1].astype(np.float32) - MEAN_BGR)[None])


def deprocess(bgr: tf.Tensor) -> np.ndarray:
    return np.clip(bgr.numpy()[0] + MEAN_BGR, 0, 255)[..., ::-1].round().astype(np.uint8)


def gram(x: tf.Tensor) -> tf.Tensor:
    flat = tf.reshape(x, (-1, x.shape[-1]))
    return tf.matmul(flat, flat, transpose_a=True) / tf.cast(tf.shape(flat)[0], tf.float32)


class OriginalObjective:
    def __init__(self, model: keras.Model, content_rgb: np.ndarray, style_rgb: np.ndarray) -> None:
        self.model = model
        self.content_target = model(preprocess(content_rgb))[CONTENT_LAYER]
        style_feats = model(preprocess(style_rgb))
        self.style_targets = [gram(style_feats[name]) for name in STYLE_LAYERS]

    def __call__(self, image: tf.Tensor) -> tuple[tf.Tensor, dict[str, float]]:
        feats = self.model(image)
        content = tf.reduce_mean(tf.square(feats[CONTENT_LAYER] - self.content_target))
        style = tf.add_n([tf.reduce_mean(tf.square(gram(feats[n]) - t)) for n, t in zip(STYLE_LAYERS, self.style_targets)])
        style = style / len(STYLE_LAYERS)
        tv = tf.reduce_sum(tf.image.total_variation(image))
        total = CONTENT_WEIGHT * content + STYLE_WEIGHT * style + TV_WEIGHT * tv
        return total, {"content": CONTENT_WEIGHT * content, "style": STYLE_WEIGHT * style, "tv": TV_WEIGHT * tv}


def run_original(model: keras.Model, content_rgb: np.ndarray, style_rgb: np.ndarray, steps: int,
                 on_step=None) -> tuple[np.ndarray, list[float], float]:
    """The eager loop. Returns (best image as RGB uint8, loss per step, seconds)."""
    objective = OriginalObjective(model, content_rgb, style_rgb)
    image = tf.Variable(preprocess(content_rgb))
    optimizer = keras.optimizers.Adam(learning_rate=5.0, beta_1=0.99, epsilon=0.1)
    low, high = -MEAN_BGR, 255.0 - MEAN_BGR
    best, best_loss, losses = image.numpy(), float("inf"), []
    started = time.perf_counter()
    for i in range(steps):
        with tf.GradientTape() as tape:
            loss, _ = objective(image)
        grad = tape.gradient(loss, image)
        optimizer.apply_gradients([(grad, image)])
        image.assign(tf.clip_by_value(image, low, high))
        value = float(loss)
        losses.append(value)
        if value < best_loss:
            best_loss, best = value, image.numpy()
        if on_step is not None:
            on_step(i, value, time.perf_counter() - started)
    return deprocess(tf.constant(best)), losses, time.perf_counter() - started
