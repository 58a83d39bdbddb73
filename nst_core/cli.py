"""The ``nst`` command line: ``nst stylize CONTENT STYLE -o OUT.png``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import NSTError
from .params import BACKBONES, StylizeParams
from .schedule import PRESETS

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nst", description="Neural style transfer (Gatys et al.) on TensorFlow.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("stylize", help="repaint CONTENT in the style of STYLE")
    run.add_argument("content", type=Path, help="content image (PNG, JPEG, WebP, GIF, BMP)")
    run.add_argument("style", type=Path, nargs="+", help="style image(s); several are blended")
    run.add_argument("-o", "--output", type=Path, required=True, help="where to write the PNG result")
    run.add_argument("--preset", choices=list(PRESETS), default="balanced", help="size, scales and steps (default balanced)")
    run.add_argument("--size", type=int, help="longer side of the output in pixels (default: the preset's)")
    run.add_argument("--iterations", type=int, help="optimisation steps over all scales (default: the preset's)")
    run.add_argument("--content-weight", type=float)
    run.add_argument("--style-weight", type=float)
    run.add_argument("--tv-weight", type=float)
    run.add_argument("--strength", type=float, help="style strength, 0..10 (default 1)")
    run.add_argument("--style-blend", type=float, nargs="+", help="one weight per style image")
    run.add_argument("--preserve-colors", action="store_true", help="keep the content's colours")
    run.add_argument("--seed", type=int)
    run.add_argument("--backbone", choices=BACKBONES, default="vgg19")
    run.add_argument("--weights", default="imagenet", help="imagenet | random | PATH to a Keras weights file")
    run.add_argument("--precision", choices=["auto", "float32", "mixed"], default="auto")
    run.add_argument("--max-pixels", type=int, default=40_000_000, help="refuse inputs with more pixels")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def _params(args: argparse.Namespace) -> StylizeParams:
    options = {
        "preset": args.preset, "size": args.size, "iterations": args.iterations, "backbone": args.backbone,
        "weights": args.weights, "precision": args.precision, "preserve_colors": args.preserve_colors,
        "content_weight": args.content_weight, "style_weight": args.style_weight, "tv_weight": args.tv_weight,
        "strength": args.strength, "seed": args.seed,
        "style_blend": tuple(args.style_blend) if args.style_blend else None,
    }
    # Options left out keep the parameter's own default.
    return StylizeParams(**{k: v for k, v in options.items() if v is not None})


def _read(path: Path, max_pixels: int):
    from .images import decode_image

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NSTError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    return decode_image(data, max_pixels=max_pixels)


def format_summary(summary) -> str:
    """The loss summary as a few aligned lines."""
    lines = [f"{'loss':<8}{'initial':>12}{'final':>12}{'final/initial':>15}"]
    for name in ("content", "style", "tv", "total"):
        lines.append(f"{name:<8}{summary.initial[name]:>12.4g}{summary.final[name]:>12.4g}{summary.reduction(name):>15.3f}")
    scales = " → ".join(f"{w}×{h}" for w, h in summary.scales)
    lines.append(f"{summary.iterations} steps over scales {scales} in {summary.seconds:.1f} s")
    lines.extend(summary.notes)
    return "\n".join(lines)


def _stylize(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    params = _params(args)
    content = _read(args.content, args.max_pixels)
    styles = [_read(p, args.max_pixels) for p in args.style]
    from .engine import stylize
    from .images import encode_png

    with tqdm(total=params.total_steps, disable=args.quiet, unit="step", file=sys.stderr) as bar:
        def on_progress(event) -> None:
            bar.total = event.total
            bar.set_postfix_str(f"scale {event.scale + 1}/{event.scales} loss {event.losses['total']:.4g}")
            bar.update(1)

        result = stylize(content, styles, params, on_progress=on_progress)
    try:
        args.output.write_bytes(encode_png(result.image))
    except OSError as exc:
        raise NSTError(f"Cannot write {args.output}: {exc.strerror or exc}.") from exc
    print(format_summary(result.summary))
    print(f"wrote {args.output} ({result.image.width}×{result.image.height})")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the terminal
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
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
