"""The `nst` command line, run in-process on tiny generated files."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from nst_core.cli import main
from conftest import make_content, make_style

TINY = ["--weights", "random", "--size", "40", "--iterations", "4", "--precision", "float32", "-q"]


@pytest.fixture()
def files(tmp_path):
    content, style = tmp_path / "content.png", tmp_path / "style.jpg"
    Image.fromarray(make_content()).save(content)
    Image.fromarray(make_style()).save(style)
    return content, style


def test_stylize_writes_a_png_and_prints_the_summary(files, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert main(["stylize", str(files[0]), str(files[1]), "-o", str(out), *TINY]) == 0
    img = Image.open(io.BytesIO(out.read_bytes()))
    assert img.format == "PNG" and img.size == (40, 27)
    printed = capsys.readouterr().out
    for word in ("content", "style", "tv", "total", "4 steps", f"wrote {out}"):
        assert word in printed


@pytest.mark.parametrize("case, message", [
    ("missing", "Cannot read"),
    ("not_image", "not an image"),
    ("bad_size", "size must be between"),
])
def test_user_errors_print_one_line_and_exit_non_zero(case, message, files, tmp_path, capsys):
    content, style = files
    args = ["stylize", str(content), str(style), "-o", str(tmp_path / "o.png"), *TINY]
    if case == "missing":
        args[1] = str(tmp_path / "nope.png")
    elif case == "not_image":
        bad = tmp_path / "fake.png"
        bad.write_text("hello, I am text")
        args[2] = str(bad)
    else:
        args[args.index("--size") + 1] = "5"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nst: error: ") and message in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.png").exists()
