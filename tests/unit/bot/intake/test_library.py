"""The style library: the built-in paintings (bot/styles), the operator's folder and its catalogue, search, reading."""

from __future__ import annotations

import io
import logging
import re
import tomllib
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.config import StylesConfig
from bot.intake.library import CATALOGUE, LibraryStyle, StyleLibrary, builtin_styles, parse_catalogue
from bot.core.refusals import UploadProblem

pytestmark = pytest.mark.timeout(60)

BUILTIN = ["starry-night", "great-wave", "composition-vii", "the-scream", "shipwreck-of-the-minotaur",
           "woman-with-a-hat"]


def picture(path: Path, size: tuple[int, int] = (24, 16), seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def folder(tmp_path: Path, *names: str, catalogue: str | None = None) -> Path:
    styles = tmp_path / "styles"
    styles.mkdir()
    for number, name in enumerate(names):
        picture(styles / name, seed=number)
    if catalogue is not None:
        (styles / CATALOGUE).write_text(catalogue)
    return styles


# --------------------------------------------------------------------------- the built-in paintings


def test_the_builtin_catalogue_loads_and_describes_every_painting():
    styles = builtin_styles()
    assert [s.name for s in styles] == BUILTIN
    root = files("bot") / "styles"
    shipped = sorted(p.name for p in Path(str(root)).iterdir() if p.name != CATALOGUE)
    assert shipped == sorted(s.path.name for s in styles), "every file in bot/styles is in the catalogue"
    for style in styles:
        assert style.builtin
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", style.name) and len(style.name) <= 100
        assert style.title and style.artist and style.year and style.source
        assert style.licence.startswith("public domain: "), style.licence
        assert style.path.suffix == ".jpg"


def test_the_builtin_files_are_small_clean_rgb_jpegs():
    for style in builtin_styles():
        data = style.path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert max(image.size) <= 1024, (style.name, image.size)
            assert not image.getexif() and "comment" not in image.info and "icc_profile" not in image.info
            image.load()  # decodes completely
        assert len(data) < 600_000, (style.name, len(data))


def test_the_builtin_catalogue_is_the_documented_format():
    text = (files("bot") / "styles" / CATALOGUE).read_text(encoding="utf-8")
    data = tomllib.loads(text)
    assert set(data) == {"style"}
    for table in data["style"]:
        assert set(table) == {"name", "file", "title", "artist", "year", "source", "licence"}
    assert [e["name"] for e in parse_catalogue(text, builtin=True)] == BUILTIN


def test_labels_are_title_artist_year_within_discords_limit():
    labels = {s.name: s.label for s in builtin_styles()}
    assert labels["starry-night"] == "The Starry Night, Vincent van Gogh (1889)"
    assert labels["great-wave"] == "The Great Wave off Kanagawa, Katsushika Hokusai (c. 1831)"
    assert labels["composition-vii"] == "Composition VII, Wassily Kandinsky (1913)"
    assert all(0 < len(label) <= 100 for label in labels.values())
    plain = LibraryStyle(name="x", title="Just a title", path=Path("x.png"), builtin=False)
    assert plain.label == "Just a title"
    assert LibraryStyle(name="x", title="T", year="1900", path=Path("x.png"), builtin=False).label == "T (1900)"
    long = LibraryStyle(name="x", title="T" * 80, artist="A" * 40, year="1900", path=Path("x.png"), builtin=False)
    assert len(long.label) == 100 and long.label.endswith("…")


@pytest.mark.parametrize("text, problem", [
    ("[[style]]\nname = 'Bad Name'\nfile = 'a.jpg'\ntitle = 't'\nartist = 'a'\nyear = '1'\nsource = 's'\n"
     "licence = 'l'\n", "lowercase letters"),
    ("[[style]]\nname = 'a'\nfile = 'a.jpg'\ntitle = 't'\nartist = 'a'\nyear = '1'\nsource = 's'\n", "licence"),
    ("[[style]]\nname = 'a'\nfile = '../a.jpg'\ntitle = 't'\nartist = 'a'\nyear = '1'\nsource = 's'\n"
     "licence = 'l'\n", "file must be the name of an image file"),
    ("[[style]]\nname = 'a'\nfile = 'a.jpg'\ntitle = 't'\nartist = 'a'\nyear = '1'\nsource = 's'\n"
     "licence = 'l'\ncolour = 'blue'\n", "unknown key colour"),
])
def test_a_builtin_catalogue_entry_must_be_complete_and_well_formed(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_catalogue(text, builtin=True)


# --------------------------------------------------------------------------- built-ins and the operator's folder


def test_without_a_folder_the_library_offers_the_builtins():
    library = StyleLibrary(None)
    assert library.names() == BUILTIN
    assert library.get("starry-night").builtin
    assert StyleLibrary("", builtin=False).names() == []


def test_builtins_come_first_then_the_operators_files_by_name(tmp_path):
    styles = folder(tmp_path, "waves.png", "Mosaic_Tiles.jpg", "autumn-leaves.webp")
    library = StyleLibrary(styles)
    assert library.names() == BUILTIN + ["Mosaic_Tiles", "autumn-leaves", "waves"]
    leaves = library.get("autumn-leaves")
    assert leaves.title == "autumn leaves" and leaves.label == "autumn leaves"
    assert library.get("Mosaic_Tiles").title == "Mosaic Tiles"
    assert not leaves.builtin and leaves.path == styles / "autumn-leaves.webp"


def test_an_operators_file_with_a_builtins_name_replaces_it_in_place(tmp_path):
    styles = folder(tmp_path, "great-wave.png", "zebra.png")
    library = StyleLibrary(styles)
    assert library.names() == BUILTIN + ["zebra"]
    wave = library.get("great-wave")
    assert not wave.builtin and wave.path == styles / "great-wave.png"
    assert wave.title == "great wave" and wave.artist == ""  # the built-in's description is not the operator's file's
    assert library.entries()[1] is wave


def test_builtin_false_offers_only_the_operators_folder(tmp_path):
    styles = folder(tmp_path, "mosaic.png", "waves.png")
    library = StyleLibrary(styles, builtin=False)
    assert library.names() == ["mosaic", "waves"]
    assert library.get("starry-night") is None
    assert [s.name for s in library.search("")] == ["mosaic", "waves"]


def test_the_config_offers_builtins_unless_turned_off():
    assert StylesConfig().builtin is True
    assert StylesConfig(builtin=False).builtin is False


def test_the_operators_catalogue_gives_titles_and_artists(tmp_path):
    styles = folder(tmp_path, "harbour.png", "untitled_3.jpg", catalogue="""
[[style]]
file = "harbour.png"
title = "Harbour at Dusk"
artist = "A. Painter"
year = 1902
source = "our own print"
licence = "public domain: the artist died in 1931"
""")
    library = StyleLibrary(styles, builtin=False)
    harbour = library.get("harbour")
    assert (harbour.title, harbour.artist, harbour.year, harbour.source) == (
        "Harbour at Dusk", "A. Painter", "1902", "our own print")
    assert harbour.label == "Harbour at Dusk, A. Painter (1902)"
    assert library.get("untitled_3").label == "untitled 3"
    assert library.names() == ["harbour", "untitled_3"]


def test_operator_names_stay_file_stems_whatever_the_catalogue_says(tmp_path, caplog):
    styles = folder(tmp_path, "harbour.png", catalogue="""
[[style]]
name = "dusk"
file = "harbour.png"
title = "Harbour at Dusk"

[[style]]
file = "gone.png"
title = "Deleted since"
""")
    with caplog.at_level(logging.WARNING, logger="bot.intake.library"):
        library = StyleLibrary(styles, builtin=False)
        assert library.names() == ["harbour"]
    assert library.get("harbour").title == "Harbour at Dusk"
    assert library.get("dusk") is None
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "offered as 'harbour'" in messages and "no image file 'gone.png'" in messages


@pytest.mark.parametrize("text", [
    "this is not [toml",
    "[[style]]\ntitle = 'no file'\n",
    "[[style]]\nfile = 'mosaic.png'\ntitle = 3\n",
    "style = 'mosaic.png'\n",
    "[[style]]\nfile = '../../etc/passwd.png'\n",
    "[[style]]\nfile = 'mosaic.png'\n[[style]]\nfile = 'mosaic.png'\n",
    "[painting]\nfile = 'mosaic.png'\n",
])
def test_a_malformed_operator_catalogue_is_logged_and_ignored(tmp_path, caplog, text):
    styles = folder(tmp_path, "mosaic.png", "waves.png", catalogue=text)
    with caplog.at_level(logging.WARNING, logger="bot.intake.library"):
        library = StyleLibrary(styles, refresh_s=0.0)
        assert library.names() == BUILTIN + ["mosaic", "waves"]
        assert library.get("mosaic").title == "mosaic"
        library.names()  # re-read: the same problem is not logged again
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "catalogue" in warnings[0].getMessage() and "ignored" in warnings[0].getMessage()


def test_an_unreadable_operator_catalogue_is_logged_and_ignored(tmp_path, caplog):
    styles = folder(tmp_path, "mosaic.png")
    (styles / CATALOGUE).write_bytes(b"\xff\xfe not utf-8 \xff")
    with caplog.at_level(logging.WARNING, logger="bot.intake.library"):
        assert StyleLibrary(styles, builtin=False).names() == ["mosaic"]
    assert "cannot be read" in caplog.text


def test_the_folder_is_reread_after_refresh_s(tmp_path):
    styles = folder(tmp_path, "mosaic.png")
    library = StyleLibrary(styles, refresh_s=0.0, builtin=False)
    assert library.names() == ["mosaic"]
    picture(styles / "waves.png")
    (styles / CATALOGUE).write_text('[[style]]\nfile = "waves.png"\ntitle = "Waves"\n')
    assert library.names() == ["mosaic", "waves"] and library.get("waves").title == "Waves"
    (styles / "mosaic.png").unlink()
    assert library.names() == ["waves"]


def test_a_missing_folder_leaves_the_builtins(tmp_path):
    assert StyleLibrary(tmp_path / "nowhere").names() == BUILTIN


def test_names_longer_than_discord_allows_are_not_offered(tmp_path, caplog):
    styles = folder(tmp_path, "x" * 101 + ".png", "ok.png")
    with caplog.at_level(logging.WARNING, logger="bot.intake.library"):
        assert StyleLibrary(styles, builtin=False).names() == ["ok"]
    assert "rename the file" in caplog.text


def test_other_files_in_the_folder_are_not_styles(tmp_path):
    styles = folder(tmp_path, "mosaic.png", catalogue="")
    (styles / "notes.txt").write_text("hello")
    (styles / "sub.png").mkdir()
    assert StyleLibrary(styles, builtin=False).names() == ["mosaic"]


# --------------------------------------------------------------------------- search


def test_search_matches_name_title_or_artist_prefixes_first(tmp_path):
    styles = folder(tmp_path, "the-kiss.png", "starfield.png", catalogue="""
[[style]]
file = "the-kiss.png"
title = "Nocturne with a Starry Sky"
""")
    library = StyleLibrary(styles)
    assert [s.name for s in library.search("STAR")] == ["starry-night", "starfield", "the-kiss"]
    assert [s.name for s in library.search("gogh")] == ["starry-night"]
    assert [s.name for s in library.search("  Hokusai ")] == ["great-wave"]
    assert [s.name for s in library.search("kandinsky")] == ["composition-vii"]
    assert [s.name for s in library.search("the")] == ["starry-night", "great-wave", "the-scream",
                                                    "shipwreck-of-the-minotaur", "the-kiss"]
    assert library.search("no such painting") == []


def test_search_with_empty_text_lists_everything_up_to_the_limit(tmp_path):
    styles = folder(tmp_path, *(f"s{i:02}.png" for i in range(30)))
    library = StyleLibrary(styles)
    assert [s.name for s in library.search("")] == library.names()[:25]
    assert len(library.search("", limit=5)) == 5
    assert len(library.search("s", limit=100)) == 36  # every name, title or artist with an s


# --------------------------------------------------------------------------- reading


async def test_read_returns_the_files_bytes(tmp_path):
    styles = folder(tmp_path, "mosaic.png", "great-wave.png")
    library = StyleLibrary(styles)
    assert await library.read("mosaic") == (styles / "mosaic.png").read_bytes()
    assert await library.read("great-wave") == (styles / "great-wave.png").read_bytes()
    starry = await library.read("starry-night")
    assert starry == builtin_styles()[0].path.read_bytes() and starry[:2] == b"\xff\xd8"


@pytest.mark.parametrize("name", ["nope", "../etc/passwd", "/etc/passwd", "mosaic.png", "../styles/mosaic",
                                  "Starry-Night", ""])
async def test_read_of_a_name_not_in_the_listing_is_refused(tmp_path, name):
    (tmp_path / "mosaic").write_bytes(b"outside the folder")
    library = StyleLibrary(folder(tmp_path, "mosaic.png"))
    with pytest.raises(UploadProblem, match="There is no style called .* in the library"):
        await library.read(name)


async def test_the_refusal_cannot_break_out_of_its_code_span(tmp_path):
    with pytest.raises(UploadProblem) as refused:
        await StyleLibrary(None).read("`@everyone`" + "x" * 300)
    message = str(refused.value)
    assert "@everyone" in message and message.count("`") == 2 and len(message) < 200


async def test_a_file_that_went_away_is_refused_politely(tmp_path):
    styles = folder(tmp_path, "mosaic.png")
    library = StyleLibrary(styles, refresh_s=3600.0, builtin=False)
    assert library.names() == ["mosaic"]
    (styles / "mosaic.png").unlink()
    with pytest.raises(UploadProblem, match="cannot be read right now"):
        await library.read("mosaic")
