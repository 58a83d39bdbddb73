"""Application commands: the registry the bot syncs to (global and per guild).

``PUT``/``POST``/``GET``/``PATCH``/``DELETE /applications/{app}[/guilds/{guild}]/commands[/{id}]``,
validated as Discord does (chat-input names and descriptions, required options first; context-menu
commands without description or options). Tests read ``commands()`` / ``command_puts`` and the
interaction senders (``interactions.py``) look commands up with ``_find_command``.
"""

from __future__ import annotations

import re
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

from aiohttp import web

from .common import (API_PREFIX, MISSING_ACCESS, UNKNOWN_COMMAND, FakeDiscordError, _error, _form_error, _json,
                     _no_content)
from .models import as_id, snowflake

_NAME_RE = re.compile(r"^[-_'\w]{1,32}$", re.UNICODE)


class CommandsMixin:
    """``FakeDiscord``'s command registry (state: ``_commands`` scope → {(name, type): definition},
    ``command_puts``)."""

    def _add_command_routes(self, r: web.UrlDispatcher) -> None:
        for prefix in ("/applications/{app_id}/commands", "/applications/{app_id}/guilds/{guild_id}/commands"):
            a = API_PREFIX + prefix
            r.add_get(a, self._get_commands)
            r.add_put(a, self._put_commands)
            r.add_post(a, self._post_command)
            r.add_get(a + "/{command_id}", self._get_command)
            r.add_patch(a + "/{command_id}", self._patch_command)
            r.add_delete(a + "/{command_id}", self._delete_command)

    # -- test-facing -----------------------------------------------------------
    def commands(self, guild: Any = None) -> List[Dict[str, Any]]:
        """Registered command definitions (global when *guild* is None)."""
        scope = None if guild is None else as_id(guild)
        return list(self._commands.get(scope, {}).values())

    def command_sync_count(self, guild: Any = None) -> int:
        """How many bulk PUTs hit the global (guild=None) or a guild's command list."""
        scope = None if guild is None else as_id(guild)
        return sum(1 for s, _, _ in self.command_puts if s == scope)

    async def wait_for_commands(self, guild: Any = None, names: Iterable[str] = (), timeout: float = 10.0
                                ) -> List[Dict[str, Any]]:
        wanted = set(names)
        scope = None if guild is None else as_id(guild)

        def check():
            if not any(s == scope for s, _, _ in self.command_puts):
                return None
            have = {c["name"] for c in self.commands(scope)}
            return self.commands(scope) if wanted <= have else None
        return await self.wait_for(check, timeout, what=f"command sync ({scope}) {sorted(wanted)}")

    def _find_command(self, name: str, guild_id: Optional[int], ctype: int = 1) -> Tuple[Dict[str, Any], bool]:
        if guild_id is not None:
            cmd = self._commands.get(guild_id, {}).get((name, ctype))
            if cmd is not None:
                return cmd, True
        cmd = self._commands[None].get((name, ctype))
        if cmd is not None:
            return cmd, False
        known = sorted({n for scope in self._commands.values() for (n, _t) in scope})
        raise FakeDiscordError(f"command {name!r} is not registered with the fake (not synced?); known: {known}")

    # -- REST ------------------------------------------------------------------
    def _command_scope(self, request: web.Request) -> Tuple[Optional[int], Optional[web.Response]]:
        if request.match_info["app_id"] != str(self.application_id):
            return None, _error(403, MISSING_ACCESS, "Missing Access")
        gid = request.match_info.get("guild_id")
        if gid is None:
            return None, None
        if int(gid) not in self.guilds:
            return None, _error(403, MISSING_ACCESS, "Missing Access")
        return int(gid), None

    def _validate_command(self, cmd: Any, index: Optional[int]) -> Optional[web.Response]:
        prefix = "" if index is None else f"{index}."
        if not isinstance(cmd, dict) or not isinstance(cmd.get("name"), str):
            return _form_error(f"{prefix}name", "BASE_TYPE_REQUIRED", "This field is required")
        ctype = cmd.get("type", 1)
        name = cmd["name"]
        if ctype not in (1, 2, 3):
            return _form_error(f"{prefix}type", "BASE_TYPE_CHOICES", "Value must be one of {1, 2, 3}.")
        if ctype == 1:
            if not _NAME_RE.match(name) or name != name.lower():
                return _form_error(f"{prefix}name", "APPLICATION_COMMAND_INVALID_NAME",
                                   "Command name is invalid")
            desc = cmd.get("description") or ""
            if not 1 <= len(desc) <= 100:
                return _form_error(f"{prefix}description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        else:
            # user (2) / message (3) context-menu commands: any case and spaces, 1-32 characters,
            # no description (absent or ""), no options
            if not 1 <= len(name) <= 32:
                return _form_error(f"{prefix}name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length.")
            if cmd.get("description"):
                return _form_error(f"{prefix}description", "APPLICATION_COMMAND_CONTEXT_MENU_DESCRIPTION_INVALID",
                                   "Context menu commands cannot have description")
            if cmd.get("options"):
                return _form_error(f"{prefix}options", "APPLICATION_COMMAND_CONTEXT_MENU_OPTIONS_INVALID",
                                   "Context menu commands cannot have options")
        opts = cmd.get("options") or []
        if len(opts) > 25:
            return _form_error(f"{prefix}options", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        seen_optional = False
        for i, opt in enumerate(opts):
            if opt.get("type") in (1, 2):
                continue
            if not _NAME_RE.match(opt.get("name", "")) or opt["name"] != opt["name"].lower():
                return _form_error(f"{prefix}options.{i}.name", "APPLICATION_COMMAND_INVALID_NAME",
                                   "Command name is invalid")
            if opt.get("required"):
                if seen_optional:
                    return _form_error(f"{prefix}options.{i}.required", "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                                       "Required options must be placed before non-required options")
            else:
                seen_optional = True
        return None

    def _store_command(self, scope: Optional[int], cmd: Dict[str, Any], existing: Dict[Tuple[str, int], Dict[str, Any]]
                       ) -> Dict[str, Any]:
        key = (cmd["name"], int(cmd.get("type", 1)))
        old = existing.get(key)
        out = dict(cmd)
        out["id"] = old["id"] if old else str(snowflake())
        out["application_id"] = str(self.application_id)
        out["version"] = str(snowflake())
        out["type"] = key[1]
        out.setdefault("description", "")
        if key[1] == 1:  # Discord omits options on context-menu commands
            out.setdefault("options", [])
        out.setdefault("default_member_permissions", None)
        out.setdefault("dm_permission", True)
        out.setdefault("nsfw", False)
        out.setdefault("contexts", None)
        out.setdefault("integration_types", [0])
        if scope is not None:
            out["guild_id"] = str(scope)
        return out

    async def _get_commands(self, request: web.Request) -> web.Response:
        scope, err = self._command_scope(request)
        if err:
            return err
        return _json(self.commands(scope))

    async def _put_commands(self, request: web.Request) -> web.Response:
        scope, err = self._command_scope(request)
        if err:
            return err
        payload = (await self._body(request)).json
        if not isinstance(payload, list):
            return _form_error("_", "BASE_TYPE_ARRAY", "Must be an array")
        if len(payload) > 100:
            return _form_error("_", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
        for i, cmd in enumerate(payload):
            bad = self._validate_command(cmd, i)
            if bad is not None:
                return bad
        old = self._commands.get(scope, {})
        new: Dict[Tuple[str, int], Dict[str, Any]] = {}
        for cmd in payload:
            stored = self._store_command(scope, cmd, old)
            new[(stored["name"], stored["type"])] = stored
        self._commands[scope] = new
        self.command_puts.append((scope, payload, time.monotonic()))
        self._record("commands_put", {"guild_id": scope, "names": [c["name"] for c in payload]})
        return _json(list(new.values()))

    async def _post_command(self, request: web.Request) -> web.Response:
        scope, err = self._command_scope(request)
        if err:
            return err
        cmd = (await self._body(request)).json
        bad = self._validate_command(cmd, None)
        if bad is not None:
            return bad
        table = self._commands.setdefault(scope, {})
        existed = (cmd["name"], int(cmd.get("type", 1))) in table
        stored = self._store_command(scope, cmd, table)
        table[(stored["name"], stored["type"])] = stored
        self._record("command_upsert", {"guild_id": scope, "name": stored["name"]})
        return _json(stored, status=200 if existed else 201)

    def _command_by_id(self, scope: Optional[int], command_id: str) -> Optional[Tuple[Tuple[str, int], Dict[str, Any]]]:
        for key, cmd in self._commands.get(scope, {}).items():
            if cmd["id"] == command_id:
                return key, cmd
        return None

    async def _get_command(self, request: web.Request) -> web.Response:
        scope, err = self._command_scope(request)
        if err:
            return err
        found = self._command_by_id(scope, request.match_info["command_id"])
        if found is None:
            return _error(404, UNKNOWN_COMMAND, "Unknown application command")
        return _json(found[1])

    async def _patch_command(self, request: web.Request) -> web.Response:
        scope, err = self._command_scope(request)
        if err:
            return err
        found = self._command_by_id(scope, request.match_info["command_id"])
        if found is None:
            return _error(404, UNKNOWN_COMMAND, "Unknown application command")
        key, cmd = found
        patch = (await self._body(request)).json or {}
        cmd = {**cmd, **patch}
        table = self._commands[scope]
        del table[key]
        table[(cmd["name"], int(cmd.get("type", 1)))] = cmd
        return _json(cmd)

    async def _delete_command(self, request: web.Request) -> web.Response:
        scope, err = self._command_scope(request)
        if err:
            return err
        found = self._command_by_id(scope, request.match_info["command_id"])
        if found is None:
            return _error(404, UNKNOWN_COMMAND, "Unknown application command")
        del self._commands[scope][found[0]]
        return _no_content()
