"""Helpers for the bot's end-to-end tests: pictures, a config file and the bot as a subprocess."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from conftest import make_content, make_style

from conftest import REPO  # noqa: E402
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


CONTENT_PNG = png(make_content(48, 32))
STYLE_PNG = png(make_style(40, 40))


def noise_png(width: int, height: int, seed: int = 0) -> bytes:
    """Incompressible pixels: a PNG whose byte size is about 3 bytes per pixel."""
    rng = np.random.default_rng(seed)
    return png(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# Tiny presets: 32-48 px, one scale, a few steps with random VGG19 weights on one CPU worker.
# "best" is long on purpose: it is the job that tests cancel (or that is still running).
TINY_PRESETS = {
    "fast": {"size": 32, "steps": 6, "scales": 1},
    "balanced": {"size": 48, "steps": 24, "scales": 2},
    "best": {"size": 48, "steps": 3000, "scales": 1},
}


def write_config(directory: Path, *, styles_dir: Path | None = None, presets: dict[str, dict[str, int]] | None = None,
                 **sections: dict[str, Any]) -> Path:
    """A TOML config for a test bot: random weights, tiny presets, one CPU worker."""
    base: dict[str, dict[str, Any]] = {
        "discord": {"interaction_ttl_s": 900, "interaction_margin_s": 30},
        "engine": {"weights": "random", "default_preset": "fast", "max_size": 64, "precision": "float32"},
        "pool": {"devices": "cpu", "workers": 1, "job_timeout_s": 120},
        "limits": {"max_upload_bytes": 60_000, "max_pixels": 40_000, "per_user_waiting": 2, "queue_max": 4},
        "progress": {"edit_interval_s": 0.5},
        "storage": {"path": str(directory / "data" / "jobs.sqlite3")},
        "shutdown": {"running_jobs": "cancel", "timeout_s": 10},
        "logging": {"level": "INFO", "format": "json"},
    }
    if styles_dir is not None:
        base["styles"] = {"path": str(styles_dir)}
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    lines = []
    for name, values in base.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
        lines.append("")
    for name, preset in (presets or TINY_PRESETS).items():
        lines.append(f"[engine.presets.{name}]")
        lines += [f"{k} = {v}" for k, v in preset.items()]
        lines.append("")
    path = directory / "config.toml"
    path.write_text("\n".join(lines))
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


@dataclass
class BotProcess:
    """``python -m bot`` running against a fake Discord; its log goes to a file."""

    proc: subprocess.Popen
    log_path: Path
    token: str
    started: float = field(default_factory=time.monotonic)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        """The bot's JSON log lines (worker processes' stray output is skipped)."""
        records = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    pass
        return records

    async def wait_log(self, pattern: str, timeout: float = 60.0) -> dict[str, Any]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.log_records():
                if regex.search(record.get("msg", "")):
                    return record
            if self.proc.poll() is not None:
                raise AssertionError(f"bot exited ({self.proc.returncode}):\n{self.tail()}")
            await asyncio.sleep(0.2)
        raise AssertionError(f"no log line matching {pattern!r} within {timeout} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"bot did not exit within {timeout} s of signal {sig}:\n{self.tail()}")
        return self.proc.returncode


def start_bot(fake: Any, config_path: Path, workdir: Path, extra_env: dict[str, str] | None = None) -> BotProcess:
    """Start the bot on ``fake``; where Discord lives comes in through NSTBOT_ overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NSTBOT_")}
    env.update({
        "DISCORD_TOKEN": fake.bot_token,
        "NSTBOT_DISCORD__API_BASE": fake.api_base,
        "NSTBOT_DISCORD__GATEWAY_URL": fake.gateway_url,
        "NSTBOT_DISCORD__DEV_GUILD_IDS": str(fake.guild.id),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "CUDA_VISIBLE_DEVICES": "-1",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra_env or {})
    log_path = workdir / "bot.log"
    log_file = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "bot", "--config", str(config_path)], cwd=REPO, env=env,
                            stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    return BotProcess(proc, log_path, fake.bot_token)


async def shut_down(bot: BotProcess | None, fake: Any) -> None:
    """Stop the bot (if it runs), then the fake; the bot must have used only routes the fake serves."""
    try:
        if bot is not None and bot.proc.poll() is None:
            await bot.stop()
    finally:
        await fake.stop()
    assert not fake.unhandled, f"the bot hit routes the fake does not serve: {fake.unhandled}"


def free_port() -> int:
    """A TCP port nothing listens on right now (for the bot's health server)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill9(bot: BotProcess, timeout: float = 10.0) -> list[int]:
    """``kill -9`` the bot (not its workers); returns the pids of the processes it had started."""
    import psutil

    try:
        children = [c.pid for c in psutil.Process(bot.proc.pid).children(recursive=True)]
    except psutil.Error:
        children = []
    bot.proc.send_signal(signal.SIGKILL)
    bot.proc.wait(timeout)
    return children


async def wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    """Wait until none of ``pids`` runs (zombies count as gone); returns those still running."""
    import psutil

    def alive() -> list[int]:
        out = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
            except psutil.Error:
                pass
        return out

    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return alive()


def reap(pids: list[int]) -> None:
    """Kill whatever of ``pids`` is still running (cleanup after a failed test)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def status_texts(message: Any) -> list[str]:
    """Every text a message has shown, oldest first (its edit history, then now)."""
    return [snap.get("content") or "" for snap in message.history] + [message.content or ""]


def position_of(text: str) -> int | None:
    m = re.search(r"position \*\*(\d+)\*\*", text)
    return int(m.group(1)) if m else None
