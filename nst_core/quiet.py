"""TensorFlow imported without its start-up chatter (for the ``nst`` CLI and the pool's workers).

TF_CPP_MIN_LOG_LEVEL alone is not enough: TensorFlow 2.19+ logs through absl before
``absl::InitializeLog()`` runs, and those import-time lines (oneDNN, "Could not find cuda
drivers", CPU instructions) ignore it (tensorflow/tensorflow#100442). So they are caught at
file descriptor 2 while TensorFlow is imported, and shown only if the import fails.
``verbose`` (``nst --verbose``, or ``NST_VERBOSE=1`` for workers) leaves TensorFlow as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from typing import Iterator

__all__ = ["import_tensorflow", "stderr_held", "verbose_from_env", "VERBOSE_ENV"]

VERBOSE_ENV = "NST_VERBOSE"


def verbose_from_env() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip() not in ("", "0")


@contextlib.contextmanager
def stderr_held() -> Iterator[None]:
    """Keep what is written to file descriptor 2 during the block; show it only if the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    failed = True
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


def import_tensorflow(verbose: bool = False):
    """``import tensorflow``, quietly unless ``verbose``; returns the module."""
    if verbose:
        import tensorflow as tf
        return tf
    # 3, not 2: the ERROR lines at start-up ("failed call to cuInit" on every machine without a
    # GPU) are noise too; real failures still reach Python as exceptions.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with stderr_held():
        import tensorflow as tf
    from absl import logging as absl_logging  # a TensorFlow dependency

    tf.get_logger().setLevel(logging.ERROR)
    absl_logging.set_verbosity(absl_logging.ERROR)
    return tf
