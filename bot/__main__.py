"""``python -m bot --config config.toml``: run the bot (the ``stylebot`` console script).

Kept import-light: worker processes are spawned, and a spawned child re-imports this
module (as ``__mp_main__``) before running its own target.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]

DEFAULT_CONFIG = Path("config.toml")
_TOKEN_FD = "STYLEBOT_TOKEN_FD"  # set by main() for itself: where the token waits after the re-exec


def _without_token_in_environment(token: str, argv: list[str]) -> None:
    """Run this program again, same process id, with the token moved out of its environment.

    Removing it from ``os.environ`` is not enough: ``/proc/<pid>/environ`` still shows the
    environment the process started with, and worker processes (which decode strangers'
    pictures) run as the same user. So the process re-executes itself without the variable
    and reads the token from a pipe it inherits; the token then lives in memory only.
    """
    from bot.config import TOKEN_ENV

    read_end, write_end = os.pipe()
    os.write(write_end, token.encode())  # far below a pipe's buffer: never blocks
    os.close(write_end)
    os.set_inheritable(read_end, True)
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    env[_TOKEN_FD] = str(read_end)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "bot", *argv], env)


def _token_from_pipe() -> str | None:
    fd = os.environ.pop(_TOKEN_FD, None)
    if fd is None:
        return None
    with os.fdopen(int(fd), "rb") as pipe:
        return pipe.read().decode()


def _token_is_set() -> bool:
    """Whether a token reached this process, in the environment or (after the re-exec) on the pipe."""
    from bot.config import ConfigError
    from bot.config_loading import read_token

    try:  # the order main() reads them in
        if (_token_from_pipe() or "").strip():
            return True
    except (OSError, ValueError):  # a stale or bad descriptor number: no token there
        pass
    try:
        read_token()
    except ConfigError:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stylebot", description="The neural style transfer Discord bot.")
    parser.add_argument("--config", type=Path, default=None,
                        help=f"TOML settings file (default: {DEFAULT_CONFIG} if present, else built-in defaults); "
                             "NSTBOT_<SECTION>__<KEY> environment variables override it")
    parser.add_argument("--sync", action="store_true",
                        help="sync the slash commands globally even if their definitions did not change")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the settings, print them (without the token), say whether DISCORD_TOKEN is set "
                             "and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    from bot.config import ConfigError, TOKEN_ENV
    from bot.config_loading import load_config, read_token

    path = args.config if args.config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    notes: list[str] = []
    try:
        config = load_config(path, warnings=notes)
        if args.check_config:
            import dataclasses
            import json

            for note in notes:
                print(f"stylebot: warning: {note}", file=sys.stderr)
            print(json.dumps(dataclasses.asdict(config), indent=2, default=str))
            # On stderr, like the warnings, so stdout stays the settings' JSON. Never the value.
            print(f"{TOKEN_ENV}: " + ("set" if _token_is_set() else "not set (the bot needs it to start)"),
                  file=sys.stderr)
            return 0
        token = _token_from_pipe() or read_token()
    except ConfigError as exc:
        print(f"stylebot: configuration error: {exc}", file=sys.stderr)
        return 2
    if TOKEN_ENV in os.environ:  # kept in memory only: workers (spawned, or Ray's) see our environment
        _without_token_in_environment(token, argv)

    import asyncio

    from bot.app.run import run

    return asyncio.run(run(config, token, force_sync=args.sync, config_warnings=notes))


if __name__ == "__main__":
    sys.exit(main())
