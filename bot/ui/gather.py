"""Gathering a job's pictures: from attachments, a message, the style library or a member's
saved style, each downloaded within the byte limit and decoded once into the PNG the bot
keeps (:class:`~bot.intake.uploads.Admission`).

Pictures taken from a message are fetched only from Discord's own media hosts
(:func:`bot.intake.uploads.discord_media_url`), with the same byte limit and checks as uploads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord

from bot.core.refusals import UploadProblem
from bot.intake.library import StyleLibrary
from bot.intake.uploads import ACCEPTED_TYPES, IMAGE_SUFFIXES, Admission, check_attachment, discord_media_url
from bot.store.errors import StoreError

if TYPE_CHECKING:
    from bot.config import LimitsConfig
    from bot.store.job_store import JobStore

__all__ = ["JobInputs", "MessagePicture", "message_picture", "PictureGatherer"]

log = logging.getLogger(__name__)


@dataclass
class JobInputs:
    """A job's pictures, downloaded and checked: PNGs the bot wrote, and the styles' labels."""

    content: bytes
    style: bytes
    style_label: str
    style2: bytes = b""
    style2_label: str | None = None


@dataclass(frozen=True)
class MessagePicture:
    """The picture a message command takes from a message: where it is and what it is called."""

    url: str
    filename: str
    content_type: str | None = None
    size: int | None = None
    width: int | None = None
    height: int | None = None


def message_picture(message: discord.Message, api_base: str = "") -> MessagePicture | None:
    """The first usable picture of ``message``: an image attachment, else an embed's image or
    thumbnail through Discord's proxy. None when it has none on Discord's media hosts."""
    for attachment in message.attachments:
        kind = (attachment.content_type or "").split(";")[0].strip().lower()
        if (kind in ACCEPTED_TYPES or attachment.filename.lower().endswith(IMAGE_SUFFIXES)) and \
                discord_media_url(attachment.url, api_base):
            return MessagePicture(attachment.url, attachment.filename, attachment.content_type, attachment.size,
                                  attachment.width, attachment.height)
    for embed in message.embeds:
        for media in (embed.image, embed.thumbnail):
            url = media.proxy_url or media.url  # the proxy's copy: the original URL may point anywhere
            if url and discord_media_url(url, api_base):
                name = url.split("?")[0].rstrip("/").rsplit("/", 1)[-1] or "image"
                return MessagePicture(url, name, None, None, media.width, media.height)
    return None


class PictureGatherer:
    """Downloads and prepares the pictures of a request, within the operator's upload limits."""

    def __init__(self, limits: "LimitsConfig", picture_side: int, library: StyleLibrary,
                 store: "JobStore | None") -> None:
        self.limits = limits
        self.picture_side = picture_side  # the side a picture is kept at (the largest preset's)
        self.library = library
        self.store = store

    def upload_checks(self) -> dict[str, float]:
        limits = self.limits
        return dict(max_bytes=limits.max_upload_bytes, max_pixels=limits.max_pixels,
                    max_aspect=limits.max_aspect_ratio)

    def prepare_checks(self) -> dict[str, float]:
        """:meth:`upload_checks` and the side a picture is kept at."""
        return {**self.upload_checks(), "side": self.picture_side}

    def check_attachment(self, label: str, attachment: discord.Attachment) -> None:
        """Refuse what the attachment's metadata already shows is wrong, before any download."""
        check_attachment(label, attachment.filename, attachment.content_type, attachment.size, attachment.width,
                         attachment.height, **self.upload_checks())

    async def attachment(self, admission: Admission, attachment: discord.Attachment, label: str) -> bytes:
        """An attached picture, as the bot keeps it."""
        data = await admission.download(attachment.url, label, attachment.filename, self.limits.max_upload_bytes)
        return await admission.prepare(label, attachment.filename, data, **self.prepare_checks())

    async def from_message(self, admission: Admission, picture: MessagePicture, label: str) -> bytes:
        """A picture found in a message, checked like an upload."""
        checks = self.upload_checks()
        check_attachment(label, picture.filename, picture.content_type, picture.size or 0, picture.width,
                         picture.height, **checks)
        data = await admission.download(picture.url, label, picture.filename, int(checks["max_bytes"]))
        return await admission.prepare(label, picture.filename, data, **self.prepare_checks())

    async def style(self, admission: Admission, attachment: discord.Attachment | None, library_name: str | None,
                    label: str, saved: tuple[str, bytes] | None) -> tuple[bytes, str]:
        """One style as the bot keeps it (PNG) and its label: the attachment first, then the
        library, then ``saved`` (kept as PNG when it was saved); ``b""`` for none."""
        if attachment is not None:
            data = await admission.download(attachment.url, label, attachment.filename, self.limits.max_upload_bytes)
            return await self._prepare_style(admission, label, attachment.filename, data), attachment.filename
        if library_name:
            entry = self.library.get(library_name)
            title = entry.title if entry is not None else library_name
            data = await self.library.read(library_name)
            return await self._prepare_style(admission, label, title, data), title
        if saved is not None:
            return saved[1], saved[0]
        return b"", ""

    async def _prepare_style(self, admission: Admission, label: str, name: str, data: bytes) -> bytes:
        """The library's files, checked at their own size, may be over the upload limit."""
        checks = self.prepare_checks()
        return await admission.prepare(label, name, data, **{**checks, "max_bytes": max(checks["max_bytes"],
                                                                                        len(data))})

    async def saved_style(self, guild_id: int | None, user_id: int) -> tuple[str, bytes] | None:
        """The member's saved style in this server (label, PNG), if any."""
        if self.store is None or guild_id is None:
            return None
        try:
            return await self.store.saved_style(guild_id, user_id)
        except StoreError:
            log.exception("saved style unreadable")
            return None

    def no_style(self) -> UploadProblem:
        hint = " or pick one from the library with the `library_style` option" if self.library.names() else ""
        return UploadProblem(f"Please attach a style image with the `style` option{hint}. (Or save one: on any "
                             "message with a picture, Apps → \"Use as my style\".)")
