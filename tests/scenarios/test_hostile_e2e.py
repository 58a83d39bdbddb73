"""Hostile uploads through the fake Discord: each is handled or refused clearly; the bot stays up.

The corpus is generated here: empty files, text posing as an image, truncated PNG and JPEG,
a decompression bomb (a few hundred bytes claiming 50000×50000 pixels), a 20000×20 strip,
an animated GIF, a CMYK JPEG, a 16-bit PNG, a palette PNG with transparency, an EXIF-rotated
JPEG, SVG and HEIC; and two bombs that pass every header check: a 38 KB progressive JPEG
repeating its scans 1,000 times (hours of decoding at 8 MB) and a 40 KB 4000×4000 16-bit PNG
(hundreds of MiB to convert naively). Meanwhile another user's ordinary job must go through,
and the bot's memory stays bounded.
"""

from __future__ import annotations

import io
import re
import struct
import time
import zlib

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot.delivery.outbox import is_delivery_of
from bot_fixtures import CONTENT_PNG, PNG_MAGIC, STYLE_PNG, start_bot, write_config

try:  # `python -m pytest` from the repo root
    from tests.fake_discord import FakeDiscord, InteractionRecord
except ImportError:  # plain `pytest`
    from fake_discord import FakeDiscord, InteractionRecord

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]


# --------------------------------------------------------------------------- the corpus


def _save(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _photo(width: int = 40, height: int = 30, seed: int = 3) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.int16)
    arr += rng.integers(-20, 20, arr.shape)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 50_000) -> bytes:
    """A valid PNG header for side×side 1-bit pixels, with only a few rows of (zero) data."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    rows = zlib.compress((b"\x00" * (1 + (side + 7) // 8)) * 64, 9)
    return PNG_MAGIC + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def animated_gif() -> bytes:
    frames = [_photo(seed=s).convert("P") for s in range(3)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def sixteen_bit_png() -> bytes:
    ramp = (np.mgrid[0:30, 0:40][1] * 1600).astype(np.uint16)  # 0..62400: needs the full 16 bits
    img = Image.fromarray(ramp)
    assert img.mode == "I;16"
    return _save(img, "PNG")


def palette_png_with_transparency() -> bytes:
    img = _photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _save(img, "PNG", transparency=0)


def scan_bomb_jpeg(side: int = 2000, scans: int = 1000) -> bytes:
    """A valid progressive JPEG whose last scan is repeated: decoding costs scans × pixels."""
    data = _save(Image.new("RGB", (side, side), (120, 60, 200)), "JPEG", progressive=True)
    sos, eoi = b"\xff\xda", b"\xff\xd9"
    last_scan = data[data.rindex(sos):-len(eoi)]
    return data[:-len(eoi)] + last_scan * (scans - data.count(sos)) + eoi


def sixteen_bit_bomb_png(side: int = 4000) -> bytes:
    """40 KB of 16-bit grey, 4000×4000: cheap to send, costly to convert through wide arrays."""
    columns = (np.arange(side, dtype=np.uint32) * 16).astype(np.uint16)
    return _save(Image.fromarray(np.ascontiguousarray(np.broadcast_to(columns, (side, side)))), "PNG")


def exif_rotated_jpeg() -> bytes:
    """Stored 48×32, with EXIF orientation 6: shown (and to be stylised) as 32×48."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(_photo(48, 32), "JPEG", quality=90, exif=exif.tobytes())


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="40" height="30">' \
      b'<rect width="40" height="30" fill="red"/></svg>'
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200)

# name, file name, bytes, content type (None: what the fake guesses), expected words of the refusal
REFUSED = [
    ("zero bytes", "empty.png", b"", "image/png", ["empty"]),
    ("text with an image extension", "notes.jpg", b"Dear diary, today I uploaded a text file.\n" * 3, None,
     ["not an image that can be read"]),
    ("truncated PNG", "cut.png", _save(_photo(), "PNG")[:300], None, ["PNG", "truncated or corrupt"]),
    ("truncated JPEG", "cut.jpg", _save(_photo(), "JPEG", quality=95)[:400], None, ["JPEG", "truncated or corrupt"]),
    ("decompression bomb", "bomb.png", bomb_png(), None, ["50000×50000", "megapixels"]),
    ("20000×20 strip", "strip.png", _save(Image.new("RGB", (20000, 20), (10, 200, 30)), "PNG"), None,
     ["20000×20", "too long and thin"]),
    ("SVG", "drawing.svg", SVG, "image/svg+xml", ["image/svg+xml", "PNG, JPEG"]),
    ("SVG posing as PNG", "drawing.png", SVG, "image/png", ["SVG files are not supported"]),
    ("HEIC", "photo.heic", HEIC, "image/heic", ["image/heic", "PNG, JPEG"]),
    ("HEIC posing as JPEG", "photo.jpg", HEIC, "image/jpeg", ["HEIC files are not supported"]),
    ("progressive JPEG scan bomb", "scans.jpg", scan_bomb_jpeg(), None, ["more than 100 scans"]),
]

# name, file name, bytes, (width, height) of the result (fast preset: longer side 32)
HANDLED = [
    ("animated GIF", "moving.gif", animated_gif(), (32, 24)),
    ("CMYK JPEG", "print.jpg", _save(_photo().convert("CMYK"), "JPEG", quality=90), (32, 24)),
    ("16-bit PNG", "deep.png", sixteen_bit_png(), (32, 24)),
    ("palette PNG with transparency", "palette.png", palette_png_with_transparency(), (32, 24)),
    ("EXIF-rotated JPEG", "rotated.jpg", exif_rotated_jpeg(), (21, 32)),
    ("4000×4000 16-bit PNG", "deep-bomb.png", sixteen_bit_bomb_png(), (32, 32)),
]


# --------------------------------------------------------------------------- the bot


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    fake = FakeDiscord(token_ttl=900)
    await fake.start()
    # 16 MP allowed, so the two bombs get past the pixel limit and meet the checks meant for them.
    bot = start_bot(fake, write_config(tmp, limits={"queue_max": 20, "per_user_waiting": 2,
                                                     "per_guild_waiting": 20, "max_pixels": 16_000_000}), tmp)
    try:
        await fake.wait_ready(timeout=60)
        await fake.wait_for_commands(guild=fake.guild, names=["stylize"], timeout=30)
        yield fake, bot
    finally:
        try:
            if bot.proc.poll() is None:
                await bot.stop()
        finally:
            await fake.stop()
    assert not fake.unhandled, f"the bot hit routes the fake does not serve: {fake.unhandled}"


async def stylize(fake: FakeDiscord, user: str, name: str, data: bytes, ctype: str | None) -> InteractionRecord:
    key = f"{time.monotonic_ns()}/{name}"
    opts = {"content": fake.add_attachment(key, data, ctype),
            "style": fake.add_attachment(f"{key}.style.png", STYLE_PNG, "image/png"), "preset": "fast"}
    inter = await fake.send_slash_command("stylize", user=user, options=opts)
    cb = await inter.wait_for_callback(timeout=5)
    assert cb.type == 5 and cb.at < 3.0, "every command is acknowledged in time, whatever it carries"
    return inter


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (Linux's VmHWM)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def job_id_of(inter: InteractionRecord) -> str | None:
    m = re.search(r"Job `([0-9a-f]+)`", inter.original.content if inter.original else "")
    return m.group(1) if m else None


async def test_hostile_uploads_are_handled_or_refused_and_the_bot_keeps_serving(env):
    fake, bot = env
    users = [fake.add_user(f"user{i}").username for i in range(len(HANDLED))]
    # An ordinary job by someone else, in line while the hostile ones arrive.
    ordinary = await stylize(fake, "alice", "content.png", CONTENT_PNG, "image/png")

    handled = []
    for (label, name, data, size), user in zip(HANDLED, users):
        handled.append((label, await stylize(fake, user, name, data, None), size))

    for label, name, data, ctype, words in REFUSED:
        inter = await stylize(fake, "bob", name, data, ctype)
        reply = await inter.wait_for_reply(timeout=20)
        assert reply.ephemeral and not inter.public_texts(), label
        text = reply.content
        assert f"`{name}`" in text, (label, text)
        for word in words:
            assert word in text, (label, word, text)
        assert bot.proc.poll() is None, f"the bot died on: {label}"

    for label, inter, size in [("ordinary", ordinary, (32, 21))] + handled:
        await inter.wait_until(lambda r: job_id_of(r), timeout=20)
        job_id = job_id_of(inter)
        result = await inter.wait_until(
            lambda r: next((m for m in r.followups if is_delivery_of(m.embeds, job_id, "result")), None),
            timeout=120)
        image = Image.open(io.BytesIO(result.attachments[0].data))
        assert image.size == size, (label, image.size)
        assert np.asarray(image.convert("RGB")).std() > 1.0, f"{label}: a blank result"

    # Nothing crashed, nothing was logged as a failed command, and the bot still answers.
    assert bot.proc.poll() is None
    assert peak_rss_mib(bot.proc.pid) < 300, "the bot's memory must stay bounded whatever the upload"
    records = bot.log_records()
    assert not [r for r in records if r.get("msg") == "command failed"]
    assert not [r for r in records if r.get("level") == "ERROR"], [r for r in records if r.get("level") == "ERROR"]
    refused = [r for r in records if r.get("msg") == "stylize refused"]
    assert len(refused) == len(REFUSED) and all(r["why"] == "invalid_upload" for r in refused)
    last = await stylize(fake, "bob", "again.png", CONTENT_PNG, "image/png")
    await last.wait_until(lambda r: job_id_of(r), timeout=20)
