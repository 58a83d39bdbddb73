"""Neutral quality numbers on a stylised output, measured with VGG16 ImageNet features at 256 px.

style distance   = mean over relu1_1..relu5_1 of |G(out)-G(style)|^2 / |G(style)|^2
content distance = |F(out)-F(content)|^2 / |F(content)|^2 at relu4_2
SSIM             = structural similarity of the luminance of output and content
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from PIL import Image

from nst_core.backbone import build_feature_model
from nst_core.pixels import resize_longer_side, resize_to, to_array
from nst_core.losses import gram_matrix

EVAL_SIZE = 256
STYLE_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")
CONTENT_LAYER = "block4_conv2"


class QualityMeter:
    def __init__(self, weights_path: str) -> None:
        self.features = build_feature_model("vgg16", weights_path, (CONTENT_LAYER, *STYLE_LAYERS))

    def _feats(self, img: Image.Image) -> list[tf.Tensor]:
        return self.features(tf.constant(to_array(img)[None].astype(np.float32)))

    def measure(self, output: Image.Image, content: Image.Image, style: Image.Image) -> dict[str, float]:
        out = resize_longer_side(output, EVAL_SIZE)
        con = resize_to(content, *out.size)
        sty = resize_longer_side(style, EVAL_SIZE)
        fo, fc, fs = self._feats(out), self._feats(con), self._feats(sty)
        style_d = np.mean([
            float(tf.reduce_sum(tf.square(gram_matrix(a) - gram_matrix(b))) / tf.reduce_sum(tf.square(gram_matrix(b))))
            for a, b in zip(fo[1:], fs[1:])
        ])
        content_d = float(tf.reduce_sum(tf.square(fo[0] - fc[0])) / tf.reduce_sum(tf.square(fc[0])))
        y_out = np.asarray(out.convert("L"), np.float32)[None, ..., None]
        y_con = np.asarray(con.convert("L"), np.float32)[None, ..., None]
        ssim = float(tf.image.ssim(tf.constant(y_out), tf.constant(y_con), max_val=255.0)[0])
        return {"style": float(style_d), "content": content_d, "ssim": ssim}
