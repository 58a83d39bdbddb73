"""Files in the spool: written whole or not at all, removed with their size accounted for."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

__all__ = ["write_file", "remove", "tree_size", "chmod"]

log = logging.getLogger(__name__)


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either nothing or all of it, even after a crash."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove(path: Path) -> int:
    """Delete a file or folder; returns the bytes it held (0 if it was not there)."""
    try:
        size = tree_size(path) if path.is_dir() else path.stat().st_size
    except OSError:
        return 0
    try:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as exc:
        log.warning("could not remove a spool file", extra={"path": str(path), "error": str(exc)})
        return 0
    return size


def tree_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def chmod(path: Path, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError:
        pass
