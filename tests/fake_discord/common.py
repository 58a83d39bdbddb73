"""Shared plumbing of the fake: Discord error codes, JSON/error responses, the parsed request body.

Every other module of the fake answers through ``_json`` / ``_error`` / ``_form_error`` /
``_no_content`` so that bodies look like Discord's (``{"message", "code", "errors"}``) and carry
``Content-Type: application/json`` exactly, which discord.py insists on.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Optional

from aiohttp import web

from .models import RequestRecord, StoredFile

log = logging.getLogger("fake_discord")

API_PREFIX = "/api/v10"

# Discord JSON error codes used by the fake
UNKNOWN_CHANNEL = 10003
UNKNOWN_GUILD = 10004
UNKNOWN_MEMBER = 10007
UNKNOWN_MESSAGE = 10008
UNKNOWN_USER = 10013
UNKNOWN_WEBHOOK = 10015
UNKNOWN_COMMAND = 10063
UNKNOWN_INTERACTION = 10062
INTERACTION_ALREADY_ACKNOWLEDGED = 40060
REQUEST_TOO_LARGE = 40005
MISSING_ACCESS = 50001
CANNOT_EXECUTE_ON_DM = 50003
CANNOT_EDIT_OTHERS_MESSAGE = 50005
CANNOT_SEND_EMPTY_MESSAGE = 50006
CANNOT_SEND_TO_USER = 50007
MISSING_PERMISSIONS = 50013
INVALID_WEBHOOK_TOKEN = 50027
INVALID_RECIPIENTS = 50033
INVALID_FORM_BODY = 50035


class _Body:
    __slots__ = ("json", "files", "raw")

    def __init__(self, json_: Any, files: List[StoredFile], raw: bytes = b"") -> None:
        self.json = json_
        self.files = files
        self.raw = raw


if hasattr(web, "RequestKey"):  # aiohttp >= 3.12 wants typed keys for request storage
    _BODY_KEY: Any = web.RequestKey("fake_discord_body", _Body)
    _RECORD_KEY: Any = web.RequestKey("fake_discord_record", RequestRecord)
else:  # pragma: no cover
    _BODY_KEY, _RECORD_KEY = "fake_discord_body", "fake_discord_record"


class FakeDiscordError(AssertionError):
    """Raised by test-facing helpers on misuse (unknown command, missing component...)."""


def _json(data: Any, status: int = 200, headers: Optional[Dict[str, str]] = None) -> web.Response:
    # NB: discord.py only parses a body as JSON when Content-Type is *exactly*
    # "application/json" (no charset), so never use web.json_response(text=...).
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json",
                        headers=headers)


def _error(status: int, code: int, message: str, errors: Optional[Dict[str, Any]] = None,
           headers: Optional[Dict[str, str]] = None) -> web.Response:
    body: Dict[str, Any] = {"message": message, "code": code}
    if errors:
        body["errors"] = errors
    return _json(body, status=status, headers=headers)


def _form_error(field: str, code: str, message: str) -> web.Response:
    errors: Dict[str, Any] = {}
    cur = errors
    parts = field.split(".")
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = {"_errors": [{"code": code, "message": message}]}
    return _error(400, INVALID_FORM_BODY, "Invalid Form Body", errors)


def _no_content() -> web.Response:
    return web.Response(status=204)
