"""The ``nst`` command line: ``nst stylize CONTENT STYLE -o OUT.png``."""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

from .errors import ImageError, NSTError, ParamsError, WeightsError
from .quiet import import_tensorflow
from .params import BACKBONES, MAX_SIZE, MAX_STRENGTH, PRECISIONS, StylizeParams
from .schedule import PRESETS

__all__ = ["main", "build_parser", "OUTPUT_FORMATS"]

# Output extension -> Pillow format. Chosen by the extension of -o, checked before the run.
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
_LOSSY_QUALITY = 92  # JPEG and WebP
_DEFAULTS = StylizeParams()
_WEIGHTS_HINT = ("For a quick try without them, pass --weights random (untrained weights: it runs, "
                 "but the result shows no real style).")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` where there is a default worth showing (not None, not a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nst", description="Neural style transfer (Gatys et al.) on TensorFlow.")
    sub = parser.add_subparsers(dest="command", required=True)
    presets = ", ".join(f"{name} ({p.size} px, {p.steps} steps over {p.scales} scales)" for name, p in PRESETS.items())
    run = sub.add_parser("stylize", help="repaint CONTENT in the style of STYLE", formatter_class=_HelpFormatter,
                         description="Repaint CONTENT in the style of STYLE and write the result to OUT.")
    run.add_argument("content", type=Path, metavar="CONTENT", help="content image (PNG, JPEG, WebP, GIF, BMP)")
    run.add_argument("style", type=Path, nargs="+", metavar="STYLE", help="style image(s); several are blended")
    run.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                     help="where to write the result; its extension picks the format: .png, .jpg or .jpeg "
                          f"(JPEG, quality {_LOSSY_QUALITY}), .webp (WebP, quality {_LOSSY_QUALITY})")
    run.add_argument("--preset", choices=list(PRESETS), default=_DEFAULTS.preset,
                     help=f"output size, steps and coarse-to-fine scales: {presets}")
    run.add_argument("--size", type=int, metavar="PX",
                     help=f"longer side of the output in pixels, 16 to {MAX_SIZE} (default: the preset's)")
    run.add_argument("--iterations", type=int, metavar="N", help="optimisation steps over all scales (default: the preset's)")
    run.add_argument("--content-weight", type=float, metavar="W", default=_DEFAULTS.content_weight,
                     help="weight of the content loss: higher keeps more of the content image's shapes")
    run.add_argument("--style-weight", type=float, metavar="W", default=_DEFAULTS.style_weight,
                     help="weight of the style loss (Gram matrices of VGG features): higher copies more of "
                          "the style's textures; --strength multiplies it")
    run.add_argument("--tv-weight", type=float, metavar="W", default=_DEFAULTS.tv_weight,
                     help="weight of the total-variation loss: higher smooths away pixel noise, and detail with it")
    run.add_argument("--strength", type=float, metavar="S", default=_DEFAULTS.strength,
                     help=f"style strength, 0 to {MAX_STRENGTH:g}: multiplies the style weight; 0 gives back "
                          "the content")
    run.add_argument("--style-blend", type=float, nargs="+", metavar="W",
                     help="one weight per style image, to blend several (default: equal weights)")
    run.add_argument("--preserve-colors", action="store_true",
                     help="keep the content's colours: only texture and light come from the style")
    run.add_argument("--seed", type=int, metavar="N", default=_DEFAULTS.seed,
                     help="seeds the noise added to the starting image: the same seed gives the same result")
    run.add_argument("--backbone", choices=BACKBONES, default=_DEFAULTS.backbone,
                     help="the VGG network whose features define content and style")
    run.add_argument("--weights", metavar="imagenet|random|PATH", default=_DEFAULTS.weights,
                     help="the backbone's weights: imagenet (downloaded once by Keras, cached in "
                          "~/.keras/models), random (untrained: a quick try, no real style) or PATH to a Keras "
                          "weights file for the network without its top")
    run.add_argument("--precision", choices=PRECISIONS, default=_DEFAULTS.precision,
                     help="auto: float16 mixed precision on a GPU, bfloat16 on CPUs that compute it natively, "
                          "else float32; mixed: reduced precision even where it is emulated")
    run.add_argument("--max-pixels", type=int, metavar="N", default=40_000_000, help="refuse input images with more pixels")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="show TensorFlow's start-up messages and informational logs")
    return parser


# ParamsError names the field ("content_weight must be ..."); on the command line it is an option.
_OPTION_FIELDS = {"size", "iterations", "content_weight", "style_weight", "tv_weight", "strength", "style_blend",
                  "seed", "backbone", "weights", "precision", "preset"}


def _params(args: argparse.Namespace) -> StylizeParams:
    options = {
        "preset": args.preset, "size": args.size, "iterations": args.iterations, "backbone": args.backbone,
        "weights": args.weights, "precision": args.precision, "preserve_colors": args.preserve_colors,
        "content_weight": args.content_weight, "style_weight": args.style_weight, "tv_weight": args.tv_weight,
        "strength": args.strength, "seed": args.seed,
        "style_blend": tuple(args.style_blend) if args.style_blend else None,
    }
    # Options left out keep the parameter's own default.
    try:
        return StylizeParams(**{k: v for k, v in options.items() if v is not None})
    except ParamsError as exc:
        raise ParamsError(_as_option(str(exc))) from exc


def _as_option(message: str) -> str:
    field, sep, rest = message.partition(" ")
    return f"--{field.replace('_', '-')}{sep}{rest}" if field in _OPTION_FIELDS else message


def _output_format(path: Path) -> str:
    """The output's Pillow format; refuses, before any work, an output that cannot be written."""
    def refuse(why: str) -> NSTError:
        return NSTError(f"cannot write the output {path}: {why}")

    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        why = f"unsupported extension {path.suffix!r}" if path.suffix else "it has no extension"
        raise refuse(f"{why}; use .png, .jpg, .jpeg or .webp")
    if path.is_dir():
        raise refuse("it is a folder")
    folder = path.parent
    if not folder.exists():
        raise refuse(f"folder {folder} does not exist")
    if not folder.is_dir():
        raise refuse(f"{folder} is not a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise refuse("the file exists and is read-only")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise refuse(f"folder {folder} is not writable")
    try:  # also catches what os.access cannot see (a read-only mount, root on NFS); the probe is deleted
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".nst-write-check-"):
            pass
    except OSError as exc:
        raise refuse(f"folder {folder} is not writable ({exc.strerror or exc})") from exc
    return fmt


def _encode(img, fmt: str) -> bytes:
    from .pixels import encode_png, to_rgb

    if fmt == "PNG":
        return encode_png(img)
    buf = io.BytesIO()
    if fmt == "JPEG":
        to_rgb(img).save(buf, "JPEG", quality=_LOSSY_QUALITY)
    else:
        to_rgb(img).save(buf, "WEBP", quality=_LOSSY_QUALITY, method=4)
    return buf.getvalue()


# The engine's image messages are shared with the Discord bot, where the user sends files;
# in a terminal the same advice reads differently.
_TERMINAL_WORDING = [
    (re.compile(r"\bso please send that frame as\b"), "so save that frame as"),
    (re.compile(r"\bplease send (an?) "), r"use \1 "),
    (re.compile(r"\bask for a larger size\b"), "pass a larger --size"),
    (re.compile(r"\(--weights PATH, or \[engine\] weights = \"PATH\"\)"), "(--weights PATH)"),  # the bot's setting
]


def _for_terminal(message: str) -> str:
    for pattern, replacement in _TERMINAL_WORDING:
        message = pattern.sub(replacement, message)
    return message


def _lower_first(message: str) -> str:
    """``The file is ...`` -> ``the file is ...`` after a prefix; ``SVG files ...`` stays."""
    return message[0].lower() + message[1:] if message[:1].isupper() and message[1:2].islower() else message


def _read(path: Path, max_pixels: int, what: str):
    from .images import decode_image

    if not path.exists():
        raise ImageError(f"{what} {path} does not exist")
    if path.is_dir():
        raise ImageError(f"{what} {path}: it is a folder, not an image")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from exc
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        raise ImageError(f"{what} {path}: {_lower_first(_for_terminal(str(exc)))}") from exc


def format_summary(summary) -> str:
    """The loss summary as a few aligned lines."""
    lines = [f"{'loss':<8}{'initial':>12}{'final':>12}{'final/initial':>15}"]
    for name in ("content", "style", "tv", "total"):
        lines.append(f"{name:<8}{summary.initial[name]:>12.4g}{summary.final[name]:>12.4g}{summary.reduction(name):>15.3f}")
    scales = " → ".join(f"{w}×{h}" for w, h in summary.scales)
    lines.append(f"{summary.iterations} steps over scales {scales} in {summary.seconds:.1f} s")
    lines.extend(summary.notes)
    return "\n".join(lines)


def _import_engine(verbose: bool):
    import_tensorflow(verbose)  # quietly unless --verbose (see nst_core.quiet)
    from .engine import stylize

    return stylize


def _stylize(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    params = _params(args)
    if args.style_blend and len(args.style_blend) != len(args.style):
        raise ParamsError(f"--style-blend has {len(args.style_blend)} weight(s) for {len(args.style)} style image(s); "
                          "give one per style image")
    fmt = _output_format(args.output)
    content = _read(args.content, args.max_pixels, "content image")
    several = len(args.style) > 1
    styles = [_read(p, args.max_pixels, f"style image #{i}" if several else "style image")
              for i, p in enumerate(args.style, 1)]
    stylize = _import_engine(args.verbose)

    bar = None  # made at the first step, so an error while the model loads shows no empty bar

    def on_progress(event) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=event.total, disable=args.quiet, unit="step", file=sys.stderr)
        bar.total = event.total
        bar.set_postfix_str(f"scale {event.scale + 1}/{event.scales} loss {event.losses['total']:.4g}")
        bar.update(1)

    try:
        result = stylize(content, styles, params, on_progress=on_progress)
    except WeightsError as exc:
        message = _for_terminal(str(exc))
        raise WeightsError(f"{message} {_WEIGHTS_HINT}" if params.weights != "random" else message) from exc
    except ImageError as exc:
        raise ImageError(_for_terminal(str(exc))) from exc
    except ParamsError as exc:
        raise ParamsError(_as_option(str(exc))) from exc
    finally:
        if bar is not None:
            bar.close()
    try:
        args.output.write_bytes(_encode(result.image, fmt))
    except OSError as exc:
        raise NSTError(f"cannot write the output {args.output}: {exc.strerror or exc}") from exc
    print(format_summary(result.summary))
    print(f"wrote {args.output} ({result.image.width}×{result.image.height})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "stylize":
            _stylize(args)
    except NSTError as exc:
        print(f"nst: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nst: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
