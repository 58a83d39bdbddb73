"""The operator's folder of style images, offered to ``/stylize library_style`` by name."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from .uploads import UploadProblem

__all__ = ["StyleLibrary"]

log = logging.getLogger(__name__)

_LIBRARY_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


class StyleLibrary:
    """The operator's folder of style images, offered by name (the file name without suffix).

    User text is only ever matched against this listing, never joined onto a path.
    """

    def __init__(self, path: str | Path | None, refresh_s: float = 30.0) -> None:
        self.path = Path(path).expanduser() if path else None
        self._refresh_s = refresh_s
        self._files: dict[str, Path] = {}
        self._read_at = -float("inf")

    def _listing(self) -> dict[str, Path]:
        if self.path is None:
            return {}
        if time.monotonic() - self._read_at > self._refresh_s:  # a small folder; re-read now and then
            try:
                files = sorted(p for p in self.path.iterdir()
                               if p.is_file() and p.suffix.lower() in _LIBRARY_SUFFIXES)
            except OSError:
                files = []
            self._files = {p.stem: p for p in files}
            self._read_at = time.monotonic()
        return self._files

    def names(self) -> list[str]:
        return list(self._listing())

    def search(self, text: str, limit: int = 25) -> list[str]:
        text = text.strip().lower()
        names = self.names()
        starts = [n for n in names if n.lower().startswith(text)]
        contains = [n for n in names if text in n.lower() and n not in starts]
        return (starts + contains)[:limit]

    async def read(self, name: str) -> bytes:
        path = self._listing().get(name)
        if path is None:
            raise UploadProblem(f"There is no style called `{name}` in the library. "
                                "Pick one from the list that appears as you type.")
        try:
            return await asyncio.to_thread(path.read_bytes)
        except OSError:
            log.exception("library style unreadable", extra={"style": name})
            raise UploadProblem(f"The library style `{name}` cannot be read right now. "
                                "Please pick another one.") from None


# --------------------------------------------------------------------------- Cancel button
