"""``python -m bot --config config.toml``: run the bot (the ``stylebot`` console script).

Kept import-light: worker processes are spawned, and a spawned child re-imports this
module (as ``__mp_main__``) before running its own target.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]

DEFAULT_CONFIG = Path("config.toml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stylebot", description="The neural style transfer Discord bot.")
    parser.add_argument("--config", type=Path, default=None,
                        help=f"TOML settings file (default: {DEFAULT_CONFIG} if present, else built-in defaults); "
                             "NSTBOT_<SECTION>__<KEY> environment variables override it")
    parser.add_argument("--sync", action="store_true",
                        help="sync the slash commands globally even if their definitions did not change")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the settings, print them (without the token) and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import os

    from .config import TOKEN_ENV, ConfigError, load_config, read_token

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
            return 0
        token = read_token()
    except ConfigError as exc:
        print(f"stylebot: configuration error: {exc}", file=sys.stderr)
        return 2
    # Kept in memory only: worker processes (spawned, or Ray's) inherit the environment.
    os.environ.pop(TOKEN_ENV, None)

    import asyncio

    from .app import run

    return asyncio.run(run(config, token, force_sync=args.sync, config_warnings=notes))


if __name__ == "__main__":
    sys.exit(main())
