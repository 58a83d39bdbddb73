"""The bot's log: JSON lines (or plain text) on stderr with each record's extra fields, the
token replaced wherever it would appear, and library warnings logged once per place."""

from __future__ import annotations

import datetime
import json
import logging
import sys
import warnings
from typing import Any, Callable

__all__ = ["setup_logging"]


_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class _Formatter(logging.Formatter):
    """JSON lines (or plain text) with the record's extra fields; secrets replaced."""

    def __init__(self, style: str, secrets: list[str]) -> None:
        super().__init__()
        self.json = style == "json"
        self.secrets = [s for s in secrets if s]

    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}
        when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        if self.json:
            data: dict[str, Any] = {"ts": when.isoformat(timespec="milliseconds"), "level": record.levelname,
                                    "logger": record.name, "msg": record.getMessage(), **extra}
            if record.exc_info:
                data["exc"] = self.formatException(record.exc_info)
            text = json.dumps(data, default=str, ensure_ascii=False)
        else:
            fields = " ".join(f"{k}={v!r}" for k, v in extra.items())
            text = f"{when:%Y-%m-%d %H:%M:%S} {record.levelname} {record.name}: {record.getMessage()} {fields}".rstrip()
            if record.exc_info:
                text += "\n" + self.formatException(record.exc_info)
        for secret in self.secrets:  # defence in depth: nothing should log it, nothing can
            text = text.replace(secret, "[redacted]")
        return text


def setup_logging(level: str, style: str, secrets: list[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(style, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # discord.py is chatty at DEBUG (every gateway frame); keep it at INFO unless asked.
    logging.getLogger("discord").setLevel(level if level != "DEBUG" else "INFO")
    warnings.showwarning = _warning_logger()


def _warning_logger() -> Callable[..., None]:
    """Library warnings go to the log (so its format and redaction apply), once per place in
    the code that warns: a crafted file can make a library warn thousands of times, each
    time with another text."""
    seen: set[tuple[type, str, int]] = set()
    logger = logging.getLogger("py.warnings")

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if (category, filename, lineno) in seen:
            return
        seen.add((category, filename, lineno))
        logger.warning("%s: %s", category.__name__, str(message)[:500], extra={"source": f"{filename}:{lineno}"})
    return show
