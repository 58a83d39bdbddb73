"""The `nst` command line, run in-process on tiny generated files."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from nst_core.cli import build_parser, main
from conftest import make_content, make_style

TINY = ["--weights", "random", "--size", "40", "--iterations", "4", "--precision", "float32", "-q"]
QUICK = ["--weights", "random", "--size", "32", "--iterations", "2", "--precision", "float32", "-q"]
from conftest import REPO  # noqa: E402


@pytest.fixture()
def files(tmp_path):
    content, style = tmp_path / "content.png", tmp_path / "style.jpg"
    Image.fromarray(make_content()).save(content)
    Image.fromarray(make_style()).save(style)
    return content, style


@pytest.fixture()
def no_run(monkeypatch):
    """Fails the test if the engine is started: the error must come before any work."""
    import nst_core.engine

    def stylize(*args, **kwargs):
        raise AssertionError("the engine ran although the command line should have refused first")

    monkeypatch.setattr(nst_core.engine, "stylize", stylize)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("nst: error: "), err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err.removeprefix("nst: error: ")


def test_stylize_writes_a_png_and_prints_the_summary(files, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert main(["stylize", str(files[0]), str(files[1]), "-o", str(out), *TINY]) == 0
    img = Image.open(io.BytesIO(out.read_bytes()))
    assert img.format == "PNG" and img.size == (40, 27)
    printed = capsys.readouterr().out
    for word in ("content", "style", "tv", "total", "4 steps", f"wrote {out}"):
        assert word in printed
    # The write check before the run leaves nothing behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["content.png", "out.png", "style.jpg"]


@pytest.mark.parametrize("name, fmt", [("out.jpg", "JPEG"), ("out.JPEG", "JPEG"), ("out.webp", "WEBP"),
                                       ("out.PNG", "PNG")])
def test_the_output_format_follows_the_extension(name, fmt, files, tmp_path):
    out = tmp_path / name
    assert main(["stylize", str(files[0]), str(files[1]), "-o", str(out), *QUICK]) == 0
    img = Image.open(io.BytesIO(out.read_bytes()))
    assert img.format == fmt and img.mode == "RGB" and img.size == (32, 21)


@pytest.mark.parametrize("name", ["out.tiff", "out.gif", "out"])
def test_an_unsupported_output_extension_is_refused_before_the_run(name, files, tmp_path, capsys, no_run):
    out = tmp_path / name
    assert main(["stylize", str(files[0]), str(files[1]), "-o", str(out), *QUICK]) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"cannot write the output {out}: ") and "use .png, .jpg, .jpeg or .webp" in err
    assert not out.exists()


@pytest.mark.parametrize("case", ["missing_folder", "folder_is_a_file", "output_is_a_folder", "read_only_folder"])
def test_an_output_that_cannot_be_written_is_refused_before_the_run(case, files, tmp_path, capsys, no_run):
    if case == "missing_folder":
        out = tmp_path / "no" / "such" / "out.png"
        expected = f"cannot write the output {out}: folder {out.parent} does not exist"
    elif case == "folder_is_a_file":
        (tmp_path / "plain").write_text("x")
        out = tmp_path / "plain" / "out.png"
        expected = f"cannot write the output {out}: {out.parent} is not a folder"
    elif case == "output_is_a_folder":
        out = tmp_path / "out.png"
        out.mkdir()
        expected = f"cannot write the output {out}: it is a folder"
    else:
        if os.geteuid() == 0:
            pytest.skip("root may write into a read-only folder")
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
        out = folder / "out.png"
        expected = f"cannot write the output {out}: folder {folder} is not writable"
    before = sorted(tmp_path.rglob("*"))
    try:
        assert main(["stylize", str(files[0]), str(files[1]), "-o", str(out), *QUICK]) == 2
    finally:
        if case == "read_only_folder":
            out.parent.chmod(0o755)
    assert one_line_error(capsys) == expected
    assert sorted(tmp_path.rglob("*")) == before  # nothing created, not even an empty file


def test_errors_name_the_input_that_is_bad(files, tmp_path, capsys, no_run):
    content, style = files
    out = str(tmp_path / "o.png")
    text = tmp_path / "notes.png"
    text.write_text("hello, I am text")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")

    assert main(["stylize", str(tmp_path / "nope.png"), str(style), "-o", out, *QUICK]) == 2
    assert one_line_error(capsys) == f"content image {tmp_path / 'nope.png'} does not exist"

    assert main(["stylize", str(text), str(style), "-o", out, *QUICK]) == 2
    assert one_line_error(capsys).startswith(f"content image {text}: the file is not an image")

    assert main(["stylize", str(content), str(empty), "-o", out, *QUICK]) == 2
    assert one_line_error(capsys) == f"style image {empty}: the file is empty."

    assert main(["stylize", str(content), str(style), str(tmp_path / "gone.jpg"), "-o", out, *QUICK]) == 2
    assert one_line_error(capsys) == f"style image #2 {tmp_path / 'gone.jpg'} does not exist"

    assert main(["stylize", str(content), str(style), str(text), "-o", out, *QUICK]) == 2
    assert one_line_error(capsys).startswith(f"style image #2 {text}: the file is not an image")
    assert not (tmp_path / "o.png").exists()


def test_image_messages_are_worded_for_a_terminal(files, tmp_path, capsys, no_run):
    """The engine's messages are shared with the Discord bot ("please send a PNG ..."): the CLI rewords them."""
    content, _ = files
    svg = tmp_path / "style.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>')
    text = tmp_path / "notes.png"
    text.write_text("hello, I am text")
    for bad in (svg, text):
        assert main(["stylize", str(content), str(bad), "-o", str(tmp_path / "o.png"), *QUICK]) == 2
        err = one_line_error(capsys)
        assert "use a PNG, JPEG, WebP, GIF or BMP image" in err
        assert not re.search(r"please send|attach|upload", err, re.I), err
    assert err.startswith(f"style image {text}: the file is not an image")


@pytest.mark.parametrize("engine_message, terminal", [
    ("The animated PNG has more than 1,000 frames; only its first is used, so please send that frame as a still PNG.",
     "The animated PNG has more than 1,000 frames; only its first is used, so save that frame as a still PNG."),
    ("TIFF files are not supported; please send a PNG, JPEG, WebP, GIF or BMP image.",
     "TIFF files are not supported; use a PNG, JPEG, WebP, GIF or BMP image."),
    ("Crop it closer to a square, or ask for a larger size.", "Crop it closer to a square, or pass a larger --size."),
    ('or pass a local Keras weights file (--weights PATH, or [engine] weights = "PATH").',
     "or pass a local Keras weights file (--weights PATH)."),
])
def test_the_engines_discord_wording_is_rephrased(engine_message, terminal):
    from nst_core.cli import _for_terminal

    assert _for_terminal(engine_message) == terminal


@pytest.mark.parametrize("args, message", [
    (["--size", "5"], "--size must be between 16 and 4096, not 5"),
    (["--content-weight", "-1"], "--content-weight must be between"),
    (["--style-blend", "1", "2"], "--style-blend has 2 weight(s) for 1 style image(s)"),
])
def test_parameter_errors_name_the_option(args, message, files, tmp_path, capsys, no_run):
    out = tmp_path / "o.png"
    assert main(["stylize", str(files[0]), str(files[1]), "-o", str(out), *QUICK, *args]) == 2
    assert one_line_error(capsys).startswith(message)
    assert not out.exists()


def test_missing_weights_suggest_trying_random_weights(files, tmp_path, capsys):
    out = tmp_path / "o.png"
    args = ["stylize", str(files[0]), str(files[1]), "-o", str(out), *QUICK]
    args[args.index("--weights") + 1] = str(tmp_path / "vgg19.h5")
    assert main(args) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"Weights file {tmp_path / 'vgg19.h5'} does not exist.")
    assert err.endswith("pass --weights random (untrained weights: it runs, but the result shows no real style).")
    assert "[engine]" not in err  # the bot's setting means nothing here
    assert not out.exists()


def test_help_shows_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["stylize", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo the wrapping
    for option, default in [("--size", "the preset's"), ("--iterations", "the preset's"), ("--preset", "balanced"),
                            ("--content-weight", "1.0"), ("--style-weight", "20.0"), ("--tv-weight", "0.0005"),
                            ("--strength", "1.0"), ("--seed", "0"), ("--backbone", "vgg19"),
                            ("--weights", "imagenet"), ("--precision", "auto"), ("--style-blend", "equal weights")]:
        section = text[text.index(f" {option} "):]
        assert f"(default: {default})" in section[:400], option
    assert "(default: None)" not in text and "(default: False)" not in text
    stylize = build_parser()._subparsers._group_actions[0].choices["stylize"]  # type: ignore[union-attr]
    for action in stylize._actions:
        assert action.help, f"{action.option_strings or action.dest} has no help"


def test_verbose_leaves_tensorflows_logging_alone(files, tmp_path, monkeypatch):
    import tensorflow as tf

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    logger = tf.get_logger()
    monkeypatch.setattr(logger, "level", logger.level)  # restored afterwards
    logger.setLevel("WARNING")
    args = ["stylize", str(files[0]), str(files[1]), "-o", str(tmp_path / "o.png"), *QUICK]
    assert main([*args, "--verbose"]) == 0
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ and logger.level == logging.WARNING  # untouched
    assert main(args) == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3" and logger.level == logging.ERROR


@pytest.mark.timeout(180)
def test_a_terminal_run_shows_no_tensorflow_start_up_noise(files, tmp_path):
    """Run as a new user would, in a fresh process: TensorFlow's C++ start-up lines must not show."""
    out = tmp_path / "o.jpg"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    run = subprocess.run([sys.executable, "-m", "nst_core.cli", "stylize", str(files[0]), str(files[1]),
                          "-o", str(out), *QUICK], cwd=REPO, env=env, capture_output=True, text=True, timeout=170)
    assert run.returncode == 0, run.stderr
    assert "absl::InitializeLog" not in run.stderr
    assert not re.search(r"^[IWEF]\d{4} ", run.stderr, re.M), run.stderr  # absl/TF C++ log lines
    assert f"wrote {out}" in run.stdout and out.exists()
