"""The style library offered to ``/stylize library_style``: built-in paintings and the operator's folder.

The built-in paintings ship with the bot as package data (``bot/styles``: JPEG files and
``catalogue.toml``, read through :mod:`importlib.resources`). The operator's folder
(``[styles] path``) adds its own image files, each named after its file name without the
extension, and may hold a ``catalogue.toml`` of the same format giving their titles and artists.
An operator's file with a built-in's name replaces that painting.

A catalogue is a list of ``[[style]]`` tables::

    [[style]]
    name = "starry-night"        # the key /stylize receives (built-in: lowercase-with-dashes)
    file = "starry-night.jpg"    # a file in the same folder
    title = "The Starry Night"
    artist = "Vincent van Gogh"
    year = "1889"
    source = "where the file came from"
    licence = "public domain: artist died 1890"

In the operator's catalogue only ``file`` is required; ``name``, when given, must be the file's
name without the extension (operators' styles are named by file stem, as they always were).

User text is only ever matched against the listing, never joined onto a path; catalogue ``file``
values too are matched against the folder's listing, never joined onto it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import tomllib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from bot.render import drawings
from bot.intake.uploads import IMAGE_SUFFIXES
from bot.core.refusals import UploadProblem

__all__ = ["LibraryStyle", "StyleLibrary", "CatalogueError", "CATALOGUE", "builtin_styles", "parse_catalogue"]

log = logging.getLogger(__name__)

CATALOGUE = "catalogue.toml"
_CHOICE_MAX = 100  # Discord's limit on an autocomplete choice's name and value
_BUILTIN_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_FIELDS = ("name", "file", "title", "artist", "year", "source", "licence")
_BUILTIN_REQUIRED = _FIELDS  # every built-in painting says what it is and why it may be shipped


@dataclass(frozen=True, kw_only=True)
class LibraryStyle:
    """One style of the library."""

    name: str  # the key /stylize library_style receives (the autocomplete choice's value, at most 100 characters)
    title: str
    artist: str = ""
    year: str = ""
    source: str = ""  # where the file came from
    licence: str = ""  # why it may be used (built-ins: "public domain: ...")
    path: Path
    builtin: bool

    @property
    def label(self) -> str:
        """``Title, Artist (year)``, or as much of it as is known; at most 100 characters (a choice's name)."""
        label = self.title
        if self.artist:
            label += f", {self.artist}"
        if self.year:
            label += f" ({self.year})"
        return label if len(label) <= _CHOICE_MAX else label[:_CHOICE_MAX - 1].rstrip() + "…"


class CatalogueError(ValueError):
    """A ``catalogue.toml`` that cannot be used; the message says what is wrong with it."""


def parse_catalogue(text: str, *, builtin: bool) -> list[dict[str, str]]:
    """The entries of a catalogue, in its order, checked; raises :class:`CatalogueError`.

    ``builtin``: every field is required and names must be lowercase-with-dashes. Otherwise
    (the operator's) only ``file`` is required. Files are not looked up here.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"style"})
    if unknown:
        raise CatalogueError(f"unknown key {unknown[0]} (a catalogue is a list of [[style]] tables)")
    styles = data.get("style", [])
    if not isinstance(styles, list) or not all(isinstance(s, dict) for s in styles):
        raise CatalogueError("style must be a list of tables ([[style]])")
    entries: list[dict[str, str]] = []
    names: set[str] = set()
    seen_files: set[str] = set()
    for number, table in enumerate(styles, 1):
        where = f"style {number}"
        entry = _entry(table, where, builtin)
        file = entry["file"]
        if "/" in file or "\\" in file or file in (".", "..") or Path(file).suffix.lower() not in IMAGE_SUFFIXES:
            raise CatalogueError(f"{where}: file must be the name of an image file in the same folder "
                                 f"({', '.join(IMAGE_SUFFIXES)}), not {file!r}")
        if "name" in entry:
            if builtin and not _BUILTIN_NAME.fullmatch(entry["name"]):
                raise CatalogueError(f"{where}: name must be lowercase letters, digits and dashes, "
                                     f"not {entry['name']!r}")
            if len(entry["name"]) > _CHOICE_MAX:
                raise CatalogueError(f"{where}: name is longer than {_CHOICE_MAX} characters")
            if entry["name"] in names:
                raise CatalogueError(f"{where}: name {entry['name']!r} is used twice")
            names.add(entry["name"])
        if file in seen_files:
            raise CatalogueError(f"{where}: file {file!r} is listed twice")
        seen_files.add(file)
        entries.append(entry)
    return entries


def _entry(table: dict[str, Any], where: str, builtin: bool) -> dict[str, str]:
    unknown = sorted(set(table) - set(_FIELDS))
    if unknown:
        raise CatalogueError(f"{where}: unknown key {unknown[0]} (known keys: {', '.join(_FIELDS)})")
    entry = {}
    for key, value in table.items():
        if key == "year" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # year = 1889 reads as well as year = "1889"
        if not isinstance(value, str):
            raise CatalogueError(f"{where}: {key} must be a string, not {value!r}")
        entry[key] = value.strip()
    for key in _BUILTIN_REQUIRED if builtin else ("file",):
        if not entry.get(key):
            raise CatalogueError(f"{where}: {key} is missing or empty")
    return entry


def _style(entry: dict[str, str], name: str, path: Path, builtin: bool) -> LibraryStyle:
    return LibraryStyle(name=name, title=entry.get("title") or _title_from_stem(name), artist=entry.get("artist", ""),
                        year=entry.get("year", ""), source=entry.get("source", ""),
                        licence=entry.get("licence", ""), path=path, builtin=builtin)


def _title_from_stem(stem: str) -> str:
    return " ".join(stem.replace("_", " ").replace("-", " ").split()) or stem


@functools.cache
def builtin_styles() -> tuple[LibraryStyle, ...]:
    """The paintings shipped in ``bot/styles``, in catalogue order; raises :class:`CatalogueError` if broken."""
    root = files("bot") / "styles"
    if not isinstance(root, Path):  # e.g. imported from a zip file: no folder to read the files from
        raise CatalogueError(f"the built-in styles are not in a folder ({root})")
    try:
        text = (root / CATALOGUE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogueError(f"{root / CATALOGUE} cannot be read: {exc}") from None
    styles = []
    for entry in parse_catalogue(text, builtin=True):
        path = root / entry["file"]
        if not path.is_file():
            raise CatalogueError(f"{entry['name']}: no file {entry['file']!r} in {root}")
        styles.append(_style(entry, entry["name"], path, builtin=True))
    return tuple(styles)


class StyleLibrary:
    """The styles offered by name: the built-in paintings (unless ``builtin`` is false), then the operator's folder.

    The folder (and its ``catalogue.toml``) is re-read at most every ``refresh_s`` seconds.
    User text is only ever matched against this listing, never joined onto a path.
    """

    def __init__(self, path: str | Path | None, refresh_s: float = 30.0, *, builtin: bool = True) -> None:
        self.path = Path(path).expanduser() if path else None
        self._refresh_s = refresh_s
        self._builtin: tuple[LibraryStyle, ...] = ()
        if builtin:
            try:
                self._builtin = builtin_styles()
            except CatalogueError as exc:  # the package is damaged; the operator's folder still works
                log.error("built-in styles unavailable: %s", exc)
        self._entries: dict[str, LibraryStyle] = {style.name: style for style in self._builtin}
        self._read_at = -float("inf")
        self._warned: set[str] = set()
        self._sheet: tuple[tuple, bytes] | None = None  # (what it shows, the PNG)
        self._sheet_lock = asyncio.Lock()

    def _warn(self, message: str) -> None:
        """Log a problem with the operator's folder once, not on every re-read."""
        if message not in self._warned:
            self._warned.add(message)
            log.warning(message)

    def _listing(self) -> dict[str, LibraryStyle]:
        if self.path is None:
            return self._entries
        if time.monotonic() - self._read_at > self._refresh_s:  # a small folder; re-read now and then
            merged = {style.name: style for style in self._builtin}
            for style in self._operator_styles(self.path):
                merged[style.name] = style  # replaces a built-in in place, else goes after them
            self._entries = merged
            self._read_at = time.monotonic()
        return self._entries

    def _operator_styles(self, folder: Path) -> list[LibraryStyle]:
        try:
            found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError:
            found = []
        by_stem = {p.stem: p for p in found}  # a.jpg and a.png: the later name wins, as it always has
        catalogue: dict[str, dict[str, str]] = {}
        try:
            text = (folder / CATALOGUE).read_text(encoding="utf-8")
        except FileNotFoundError:
            text = None
        except (OSError, UnicodeDecodeError) as exc:
            self._warn(f"styles catalogue {folder / CATALOGUE} cannot be read ({exc}); styles are named by file")
            text = None
        if text is not None:
            try:
                entries = parse_catalogue(text, builtin=False)
            except CatalogueError as exc:
                self._warn(f"styles catalogue {folder / CATALOGUE} ignored: {exc}; styles are named by file")
                entries = []
            files_here = {p.name: p for p in found}
            for entry in entries:
                path = files_here.get(entry["file"])  # matched against the listing, never joined onto the folder
                if path is None:
                    self._warn(f"styles catalogue {folder / CATALOGUE}: no image file {entry['file']!r} in the folder")
                    continue
                if entry.get("name", path.stem) != path.stem:
                    self._warn(f"styles catalogue {folder / CATALOGUE}: {entry['file']} is offered as {path.stem!r}, "
                               f"not {entry['name']!r} (the operator's styles are named by file)")
                catalogue[path.stem] = entry
        styles = []
        for stem, path in sorted(by_stem.items()):
            if len(stem) > _CHOICE_MAX:
                self._warn(f"style {path.name} is not offered: Discord allows names of at most {_CHOICE_MAX} "
                           "characters; rename the file")
                continue
            entry = catalogue.get(stem, {})
            if entry and entry["file"] != path.name:  # a.jpg described, a.png offered
                entry = {}
            styles.append(_style(entry, stem, path, builtin=False))
        return styles

    def entries(self) -> list[LibraryStyle]:
        """Built-in paintings in catalogue order, then the operator's styles by name."""
        return list(self._listing().values())

    def names(self) -> list[str]:
        return list(self._listing())

    def get(self, name: str) -> LibraryStyle | None:
        return self._listing().get(name)

    def search(self, text: str, limit: int = 25) -> list[LibraryStyle]:
        """Styles whose name, title or artist starts with ``text`` (any case), then those that contain it."""
        text = text.strip().lower()
        starts, contains = [], []
        for style in self.entries():
            fields = (style.name.lower(), style.title.lower(), style.artist.lower())
            if any(f.startswith(text) for f in fields):
                starts.append(style)
            elif any(text in f for f in fields):
                contains.append(style)
        return (starts + contains)[:max(limit, 0)]

    async def contact_sheet(self) -> bytes:
        """One PNG of every style, numbered and labelled as :meth:`entries` lists them; drawn in
        a thread, and kept until the library changes."""
        entries = self.entries()
        key = tuple((e.name, e.label, str(e.path), _mtime(e.path)) for e in entries)
        async with self._sheet_lock:  # one drawing at a time; the others get its result
            if self._sheet is not None and self._sheet[0] == key:
                return self._sheet[1]

            def draw() -> bytes:
                tiles = []
                for entry in entries:
                    try:
                        tiles.append((entry.label, entry.path.read_bytes()))
                    except OSError:
                        tiles.append((entry.label, b""))  # drawn as an "unreadable" tile
                return drawings.contact_sheet_png(tiles)
            self._sheet = (key, await asyncio.to_thread(draw))
            return self._sheet[1]

    async def read(self, name: str) -> bytes:
        style = self.get(name)
        shown = name.replace("`", "'")[:_CHOICE_MAX]
        if style is None:
            raise UploadProblem(f"There is no style called `{shown}` in the library. "
                                "Pick one from the list that appears as you type.")
        try:
            return await asyncio.to_thread(style.path.read_bytes)
        except OSError:
            log.exception("library style unreadable", extra={"style": name})
            raise UploadProblem(f"The library style `{shown}` cannot be read right now. "
                                "Please pick another one.") from None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
