"""The bot's answers to interactions: the callback and the interaction webhook.

``POST /interactions/{id}/{token}/callback`` (types 4-9; deadline, double-ack and wrong-type refusals;
``?with_response``) and ``/webhooks/{app}/{token}`` (followups: the first after a defer replaces
the loading @original) with ``GET/PATCH/DELETE .../messages/{@original|id}``, limited to the
interaction's own messages and refused once its token expired.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional, Tuple

from aiohttp import web

from .common import (
    API_PREFIX,
    INTERACTION_ALREADY_ACKNOWLEDGED,
    INVALID_FORM_BODY,
    INVALID_WEBHOOK_TOKEN,
    UNKNOWN_INTERACTION,
    UNKNOWN_MESSAGE,
    UNKNOWN_WEBHOOK,
    _RECORD_KEY,
    _error,
    _form_error,
    _json,
    _no_content,
)
from .models import CallbackRecord, InteractionRecord, MessageFlags, MessageRecord

_ALLOWED_CALLBACKS = {
    2: {4, 5, 9},  # application command
    3: {4, 5, 6, 7, 9},  # message component
    4: {8},  # autocomplete
    5: {4, 5, 6, 7},  # modal submit
}

#: message type of an interaction's response, by application command type
#: (1 chat input → 20 CHAT_INPUT_COMMAND; 2 user / 3 message → 23 CONTEXT_MENU_COMMAND)
_COMMAND_MESSAGE_TYPE = {1: 20, 2: 23, 3: 23}


class InteractionWebhooksMixin:
    """``FakeDiscord``'s interaction callback and webhook routes (state: the ``InteractionRecord`` s)."""

    def _add_interaction_webhook_routes(self, r: web.UrlDispatcher) -> None:
        a = API_PREFIX
        r.add_post(a + "/interactions/{interaction_id}/{token}/callback", self._interaction_callback)
        r.add_post(a + "/webhooks/{webhook_id}/{token}", self._webhook_execute)
        r.add_get(a + "/webhooks/{webhook_id}/{token}/messages/{message_id}", self._webhook_get_message)
        r.add_patch(a + "/webhooks/{webhook_id}/{token}/messages/{message_id}", self._webhook_edit_message)
        r.add_delete(a + "/webhooks/{webhook_id}/{token}/messages/{message_id}", self._webhook_delete_message)

    # -- the initial callback --------------------------------------------------
    async def _interaction_callback(self, request: web.Request) -> web.Response:
        rec = request[_RECORD_KEY]
        try:
            iid = int(request.match_info["interaction_id"])
        except ValueError:
            return _error(404, UNKNOWN_INTERACTION, "Unknown interaction")
        inter = self._interactions_by_id.get(iid)
        if inter is None or inter.token != request.match_info["token"]:
            return _error(404, UNKNOWN_INTERACTION, "Unknown interaction")
        now = time.monotonic()
        body = await self._body(request)
        payload = body.json or {}
        ctype = int(payload.get("type", 0))
        data = payload.get("data") or {}
        cb = CallbackRecord(type=ctype, data=data, files=body.files, at=now - inter.dispatched_t, status=0,
                            query=dict(request.query))
        inter.callbacks.append(cb)

        def fail(resp: web.Response) -> web.Response:
            cb.status = resp.status
            inter.rejected.append(rec)
            self._record("callback", {"interaction": inter, "callback": cb})
            return resp

        if inter.acknowledged:
            return fail(_error(400, INTERACTION_ALREADY_ACKNOWLEDGED, "Interaction has already been acknowledged."))
        if self.interaction_deadline is not None and cb.at > self.interaction_deadline:
            return fail(_error(404, UNKNOWN_INTERACTION, "Unknown interaction"))
        if ctype not in _ALLOWED_CALLBACKS.get(inter.type, set()):
            return fail(_form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID",
                                    f"Interaction response type {ctype} is not valid for interaction type {inter.type}"))
        channel = self.channels[inter.channel_id]
        msg: Optional[MessageRecord] = None
        if ctype in (4, 7):
            bad = self._validate_message_payload(data, body.files, creating=(ctype == 4))
            if bad is not None:
                return fail(bad)
        if ctype == 4:
            flags = int(data.get("flags") or 0) & MessageFlags.EPHEMERAL
            msg = self._new_message(channel, data, body.files, kind="original", interaction=inter, flags=flags,
                                    mtype=self._response_type(inter))
            inter.original_id = msg.id
        elif ctype == 5:
            flags = MessageFlags.LOADING | (int(data.get("flags") or 0) & MessageFlags.EPHEMERAL)
            msg = self._new_message(channel, {}, [], kind="original", interaction=inter, flags=flags,
                                    mtype=self._response_type(inter))
            inter.original_id = msg.id
        elif ctype == 6:
            if inter.message_id is not None:
                inter.original_id = inter.message_id
        elif ctype == 7:
            if inter.message_id is None or inter.message_id not in self.messages:
                return fail(_error(400, INVALID_FORM_BODY, "Invalid Form Body"))
            msg = self._edit(self.messages[inter.message_id], data, body.files)
            inter.original_id = msg.id
        elif ctype == 8:
            inter.autocomplete_choices = list(data.get("choices") or [])
        elif ctype == 9:
            inter.modal = data
        cb.status = 200
        self._record("callback", {"interaction": inter, "callback": cb})

        with_response = request.query.get("with_response", "").lower() in ("1", "true")
        if not with_response:
            cb.status = 204
            return _no_content()
        out: Dict[str, Any] = {"interaction": {"id": str(inter.id), "type": inter.type}}
        if msg is not None:
            out["interaction"].update(response_message_id=str(msg.id), response_message_loading=msg.loading,
                                      response_message_ephemeral=msg.ephemeral)
            out["resource"] = {"type": ctype, "message": self._msg_json(msg)}
        return _json(out)

    @staticmethod
    def _response_type(inter: InteractionRecord) -> int:
        """Message type of a response to *inter* (20 slash command, 23 context menu, else 0)."""
        if inter.type != 2:
            return 0
        return _COMMAND_MESSAGE_TYPE.get(int((inter.payload.get("data") or {}).get("type", 1)), 20)

    # -- the interaction webhook -----------------------------------------------
    def _webhook_interaction(self, request: web.Request) -> Tuple[Optional[InteractionRecord], Optional[web.Response]]:
        rec = request[_RECORD_KEY]
        inter = self._interactions_by_token.get(request.match_info["token"])
        if request.match_info["webhook_id"] != str(self.application_id):
            if inter is not None:
                inter.rejected.append(rec)
            return None, _error(404, UNKNOWN_WEBHOOK, "Unknown Webhook")
        if inter is None or inter.expired:
            if inter is not None:
                inter.rejected.append(rec)
                self._record("token_rejected", {"interaction": inter, "request": rec})
            return None, _error(401, INVALID_WEBHOOK_TOKEN, "Invalid Webhook Token")
        return inter, None

    def _webhook_message(self, inter: InteractionRecord, request: web.Request
                         ) -> Tuple[Optional[MessageRecord], Optional[web.Response]]:
        ref = request.match_info["message_id"]
        if ref == "@original":
            mid = inter.original_id
        else:
            try:
                mid = int(ref)
            except ValueError:
                mid = None
            if mid not in (inter.original_id, *inter.followup_ids):
                mid = None
        msg = self.messages.get(mid) if mid is not None else None
        if msg is None or msg.deleted:
            inter.rejected.append(request[_RECORD_KEY])
            return None, _error(404, UNKNOWN_MESSAGE, "Unknown Message")
        return msg, None

    async def _webhook_execute(self, request: web.Request) -> web.Response:
        inter, err = self._webhook_interaction(request)
        if err:
            return err
        assert inter is not None
        if not inter.acknowledged:
            inter.rejected.append(request[_RECORD_KEY])
            return _error(404, UNKNOWN_WEBHOOK, "Unknown Webhook")
        body = await self._body(request)
        payload = body.json or {}
        bad = self._validate_message_payload(payload, body.files, creating=True)
        if bad is not None:
            inter.rejected.append(request[_RECORD_KEY])
            return bad
        original = self.messages.get(inter.original_id) if inter.original_id else None
        ack = inter.ack
        if (original is not None and original.loading and not inter.followup_ids and ack is not None
                and ack.type == 5):
            # Discord: the first followup after a "thinking" defer replaces the loading
            # message (keeping the defer's ephemerality) instead of creating a new one.
            msg = self._edit(original, payload, body.files)
            msg.edited_timestamp = None
        else:
            flags = int(payload.get("flags") or 0) & MessageFlags.EPHEMERAL
            msg = self._new_message(self.channels[inter.channel_id], payload, body.files, kind="followup",
                                    interaction=inter, flags=flags)
        inter.followup_ids.append(msg.id)
        self._record("followup", {"interaction": inter, "message": msg})
        if request.query.get("wait", "").lower() in ("1", "true"):
            return _json(self._msg_json(msg))
        return _no_content()

    async def _webhook_get_message(self, request: web.Request) -> web.Response:
        inter, err = self._webhook_interaction(request)
        if err:
            return err
        msg, err = self._webhook_message(inter, request)  # type: ignore[arg-type]
        return err or _json(self._msg_json(msg))  # type: ignore[arg-type]

    async def _webhook_edit_message(self, request: web.Request) -> web.Response:
        inter, err = self._webhook_interaction(request)
        if err:
            return err
        assert inter is not None
        msg, err = self._webhook_message(inter, request)
        if err:
            return err
        assert msg is not None
        body = await self._body(request)
        payload = body.json or {}
        bad = self._validate_message_payload(payload, body.files, creating=False)
        if bad is not None:
            inter.rejected.append(request[_RECORD_KEY])
            return bad
        self._edit(msg, payload, body.files)
        if msg.id == inter.original_id:
            inter.original_edits.append((time.monotonic() - inter.dispatched_t, payload))
        self._record("webhook_edit", {"interaction": inter, "message": msg})
        return _json(self._msg_json(msg))

    async def _webhook_delete_message(self, request: web.Request) -> web.Response:
        inter, err = self._webhook_interaction(request)
        if err:
            return err
        msg, err = self._webhook_message(inter, request)  # type: ignore[arg-type]
        if err:
            return err
        msg.deleted = True  # type: ignore[union-attr]
        self._record("message_delete", msg)
        return _no_content()
