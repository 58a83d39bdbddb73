"""Files: the attachment CDN (``GET /attachments/...``) and the uploads stored with messages.

``add_attachment`` registers bytes a test offers the bot (as a slash-command option or in a member's
message); uploads (multipart ``files[n]``) become :class:`~.models.AttachmentRecord` s served under
``/attachments/<channel>/<id>/<name>``; embeds pointing at the fake get Discord's media fields.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any, Dict, List, Optional

from aiohttp import web

from .common import FakeDiscordError
from .models import AttachmentRecord, StoredFile, image_size, snowflake, sniff_content_type


class AttachmentsMixin:
    """``FakeDiscord``'s files (state: ``_files`` key → (bytes, content type), ``_attachments_by_name``)."""

    def _add_attachment_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/attachments/{key:.+}", self._get_attachment)

    # -- test-facing -----------------------------------------------------------
    def add_attachment(self, name: str, data: bytes, content_type: Optional[str] = None, *,
                       description: Optional[str] = None) -> Dict[str, Any]:
        """Register downloadable bytes; returns a Discord attachment object (dict).

        The bytes are served at ``GET /attachments/<name>`` (the attachment's ``url``
        and ``proxy_url``). Width/height are filled in when Pillow can read the data.
        """
        data = bytes(data)
        ctype = content_type or sniff_content_type(name, data)
        quoted = urllib.parse.quote(name)
        self._files[name] = (data, ctype)
        width, height = image_size(data) if (ctype or "").startswith("image/") or ctype is None else (None, None)
        att = AttachmentRecord(id=snowflake(), filename=name.rsplit("/", 1)[-1], data=data, content_type=ctype,
                               url=f"{self.base_url}/attachments/{quoted}",
                               proxy_url=f"{self.base_url}/attachments/{quoted}?proxy=1",
                               description=description, ephemeral=True, width=width, height=height)
        self._attachments_by_name[name] = att
        return att.to_json()

    # -- attachments of messages -----------------------------------------------
    def _store_upload(self, channel_id: int, sf: StoredFile, filename: Optional[str],
                      description: Optional[str]) -> AttachmentRecord:
        aid = snowflake()
        filename = (filename or sf.filename or "file").replace(" ", "_")
        ctype = sniff_content_type(filename, sf.data)
        if ctype is None and sf.content_type not in (None, "application/octet-stream"):
            ctype = sf.content_type
        key = f"{channel_id}/{aid}/{filename}"
        self._files[key] = (sf.data, ctype)
        url = f"{self.base_url}/attachments/{channel_id}/{aid}/{urllib.parse.quote(filename)}"
        width, height = image_size(sf.data) if (ctype or "").startswith("image/") else (None, None)
        return AttachmentRecord(id=aid, filename=filename, data=sf.data, content_type=ctype, url=url,
                                proxy_url=url + "?proxy=1", description=description, width=width, height=height)

    def _resolve_attachments(self, channel_id: int, payload: Dict[str, Any], files: List[StoredFile],
                             existing: List[AttachmentRecord], *, editing: bool) -> List[AttachmentRecord]:
        by_index: Dict[int, StoredFile] = {}
        for pos, sf in enumerate(files):
            m = re.fullmatch(r"files?\[(\d+)\]", sf.field)
            by_index[int(m.group(1)) if m else pos] = sf
        existing_by_id = {a.id: a for a in existing}
        result: List[AttachmentRecord] = []
        used: set = set()
        spec = payload.get("attachments")
        if spec is not None:
            for a in spec:
                try:
                    aid = int(a.get("id"))
                except (TypeError, ValueError):
                    continue
                if aid in existing_by_id:
                    result.append(existing_by_id[aid])
                elif aid in by_index and aid not in used:
                    used.add(aid)
                    result.append(self._store_upload(channel_id, by_index[aid], a.get("filename"),
                                                     a.get("description")))
            for idx in sorted(by_index):
                if idx not in used:
                    result.append(self._store_upload(channel_id, by_index[idx], None, None))
        else:
            result = list(existing) if editing else []
            for idx in sorted(by_index):
                result.append(self._store_upload(channel_id, by_index[idx], None, None))
        return result

    def _message_attachment(self, ref: Any) -> AttachmentRecord:
        if isinstance(ref, AttachmentRecord):
            src = ref
        elif isinstance(ref, str) and ref in self._attachments_by_name:
            src = self._attachments_by_name[ref]
        elif isinstance(ref, dict):
            src = next((a for a in self._attachments_by_name.values() if str(a.id) == str(ref.get("id"))), None)
            if src is None:
                raise FakeDiscordError(f"attachment {ref.get('filename')!r} was not made with add_attachment()")
        else:
            raise FakeDiscordError(f"attachments take add_attachment() dicts or names, got {ref!r}")
        # a message's attachment: its own id, not ephemeral, same bytes and URL
        return AttachmentRecord(id=snowflake(), filename=src.filename, data=src.data, content_type=src.content_type,
                                url=src.url, proxy_url=src.proxy_url, description=src.description,
                                ephemeral=False, width=src.width, height=src.height)

    def _complete_embed(self, embed: Dict[str, Any]) -> Dict[str, Any]:
        """Fill what Discord adds to an embed's media (proxy_url, width, height, content_type)
        when its URL is served by the fake; ``type`` defaults to "rich"."""
        out = dict(embed)
        out.setdefault("type", "rich")
        for key in ("image", "thumbnail", "video"):
            media = out.get(key)
            if not isinstance(media, dict) or not media.get("url"):
                continue
            media = dict(media)
            url = str(media["url"])
            prefix = f"{self.base_url}/attachments/"
            file_key = urllib.parse.unquote(url[len(prefix):].split("?", 1)[0]) if url.startswith(prefix) else None
            entry = self._files.get(file_key) if file_key is not None else None
            if entry is not None:
                data, ctype = entry
                width, height = image_size(data)
                media.setdefault("proxy_url", url.split("?", 1)[0] + "?proxy=1")
                if width is not None:
                    media.setdefault("width", width)
                    media.setdefault("height", height)
                if ctype:
                    media.setdefault("content_type", ctype)
            else:
                media.setdefault("proxy_url", url)
            media.setdefault("flags", 0)
            out[key] = media
        return out

    # -- the CDN ---------------------------------------------------------------
    async def _get_attachment(self, request: web.Request) -> web.Response:
        key = urllib.parse.unquote(request.match_info["key"])
        entry = self._files.get(key)
        if entry is None:
            return web.Response(status=404, text="Not Found")
        data, ctype = entry
        self._record("attachment_download", {"key": key, "size": len(data)})
        return web.Response(body=data, content_type=ctype or "application/octet-stream")
