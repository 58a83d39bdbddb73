"""Playing with results: the buttons under a result and the two message commands.

* The buttons (:mod:`bot.views`, actions in :mod:`bot.remix`): anyone who can see a result
  may press a remix button; the new job is theirs (their limits, quota and place in line), is
  made from the result's kept pictures, names its parent, and its status message replies to
  the result. 🔍 shows "before | after" privately; 🗑️ deletes the result (its requester, or a
  moderator with Manage Messages in that channel) and its kept drawings.
* "Stylize this image" (Apps menu of a message): a private menu of styles, then a job with
  that message's picture as the content. "Use as my style": the picture becomes the
  member's style in this server for :data:`SAVED_STYLE_S`; ``/stylize`` without a style uses it.

Pictures taken from a message are fetched only from Discord's own media hosts
(:func:`bot.uploads.discord_media_url`), with the same byte limit and checks as uploads.
"""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from nst_core.errors import ImageError

from bot.render import drawings

from bot.render import words
from bot.ui.commands import JobRequest, Pictures, PicturesExpired, may_cancel, servers_only
from bot.service.scheduler import Refused
from bot.ui.errors import answer_error
from bot.core.job import Job, JobState
from bot.core.remix import MIN_STRENGTH, REMIXES, TOWARDS_ORIGINAL, DoublePress, RemixRefused, next_preset, remix
from bot.store.job_store import PicturesGone, ServerSpoolFull, SpoolFull, StoreError
from bot.intake.uploads import ACCEPTED_TYPES, IMAGE_SUFFIXES, Admission, UploadProblem, check_attachment, discord_media_url
from bot.render.views import SAVED_STYLE_VALUE, StylePicker, result_view

if TYPE_CHECKING:
    from bot.ui.commands import StyleCommands

__all__ = ["Play", "PicturesExpired", "MessagePicture", "message_picture", "SAVED_STYLE_S"]

log = logging.getLogger(__name__)

SAVED_STYLE_S = 24 * 3600.0
_COMPARE_FILENAME = "before-after"
_MAX_DRAWINGS_ASKED = 8  # before | after presses being drawn or waiting, over all servers


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


class Play:
    """The result buttons' callbacks and the message commands, over :class:`StyleCommands`'s
    one way of starting a job."""

    def __init__(self, commands: "StyleCommands") -> None:
        self.commands = commands
        self.presses = DoublePress()
        self._drawing = asyncio.Semaphore(2)  # before | after pictures drawn at once
        self._drawings_asked = 0  # drawing or waiting to: beyond _MAX_DRAWINGS_ASKED, a press is told to retry

    @property
    def reuse_s(self) -> float:
        store = self.commands.store
        return store.reuse_s if store is not None else 0.0

    def register(self, tree: app_commands.CommandTree) -> None:
        for name, callback in (("Stylize this image", self.stylize_this), ("Use as my style", self.use_as_style)):
            menu = app_commands.ContextMenu(name=name, callback=callback)
            menu.guild_only = True
            menu.error(self._error)
            tree.add_command(servers_only(menu))

    async def _error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await answer_error(interaction, error)

    # -- the buttons under a result

    def result_view(self, job: Job) -> discord.ui.View:
        """The buttons for ``job``'s result: no remixes when pictures are not kept, no Sharper
        when there is no sharper preset this server allows, no More or Less style at their
        ends, no Compare when it is attached."""
        hide: list[str] = []
        if self.reuse_s <= 0:
            hide += [*REMIXES, "compare"]
        allowed = self.commands.settings.rules(job.guild_id).allowed_presets()
        if next_preset(job.preset, allowed) is None:
            hide.append("sharper")
        if job.compare:
            hide.append("compare")
        strength = job.params.strength
        if strength >= self.commands.config.limits.max_strength:
            hide.append("more")
        if strength <= MIN_STRENGTH:
            hide.append("less")
        return result_view(job.job_id, hide=hide)

    async def press(self, interaction: discord.Interaction, action: str, job_id: str) -> None:
        key = (interaction.user.id, job_id, action)
        if action != "delete":
            first, made = self.presses.first(*key)
            if not first:  # a double click: one job (or one picture), not two
                text = (f"You just pressed that: job `{made}` is in line." if made and action in REMIXES
                        else "You just pressed that; it is on its way.")
                await interaction.response.send_message(text, ephemeral=True)
                return
        made_id: str | None = None
        try:
            await interaction.response.defer(ephemeral=True, thinking=True)
            parent = await self._parent(interaction, job_id)
            if parent is None:
                return
            if action == "delete":
                await self._delete(interaction, parent)
            elif action == "compare":
                await self._compare(interaction, parent)
                made_id = parent.job_id  # a repeat within the window is a double click too
            else:
                new_job = await self._remix(interaction, action, parent)
                made_id = new_job.job_id if new_job is not None else None
        except Exception as exc:  # never leave the member looking at "thinking…"
            await answer_error(interaction, exc)
        finally:
            if action != "delete":
                self.presses.made(*key, made_id)

    async def _parent(self, interaction: discord.Interaction, job_id: str) -> Job | None:
        """The job whose result carries the pressed button; answers privately and returns None
        when the button cannot be used here. No files are read yet."""
        store = self.commands.store
        parent = await store.get(job_id) if store is not None else None
        # Only the result's own message, in its own server: ids of other jobs say nothing here.
        if (parent is not None and parent.guild_id is not None and parent.guild_id == interaction.guild_id
                and interaction.message is not None and interaction.message.id == parent.message_id):
            return parent
        if parent is None and interaction.message is not None and interaction.message.author == interaction.client.user:
            text = ("This result is older than the bot keeps records (its pictures have expired), so its buttons no "
                    "longer work. Run /stylize again.")
        else:
            text = "This button does not belong to a result the bot knows here."
        await interaction.followup.send(text, ephemeral=True)
        return None

    async def _pictures(self, job: Job, *, result: bool = False) -> tuple[bytes, ...]:
        """``job``'s kept pictures; :class:`UploadProblem` (answered privately) once they are gone."""
        try:
            if self.commands.store is None:
                raise PicturesGone(job.job_id)
            return await self.commands.store.kept_pictures(job.job_id, result=result)
        except PicturesGone:
            raise self.commands.pictures_expired() from None
        except StoreError:
            log.exception("kept pictures unreadable", extra={"job_id": job.job_id})
            raise UploadProblem("The bot cannot read this result's pictures right now. Please try again later.") \
                from None

    async def _origin(self, job: Job) -> Job:
        """The first job of ``job``'s lineage: the one whose requester supplied the original picture
        (when a record on the way was purged, the oldest one still known)."""
        store = self.commands.store
        lineage = await store.lineage(job.job_id) if store is not None else [job]
        return lineage[-1] if lineage else job

    async def _remix(self, interaction: discord.Interaction, action: str, parent: Job) -> Job | None:
        commands = self.commands
        try:
            settings = remix(action, parent.params, max_strength=commands.config.limits.max_strength,
                             allowed_presets=commands.settings.rules(interaction.guild_id).allowed_presets())
        except RemixRefused as exc:
            await interaction.followup.send(str(exc), ephemeral=True)
            return None
        if action in TOWARDS_ORIGINAL:
            # Less style and Colours take a picture back towards the photo it was made from: the
            # owner's (or a moderator's) choice. Anyone else's remix is at least as stylised as posted.
            origin = await self._origin(parent)  # (a lineage with a purged record: nobody is its owner)
            owner = origin.parent_id is None and may_cancel(interaction, origin)
            if not owner and (action == "colours" or settings.strength < origin.params.strength):
                await interaction.followup.send(
                    "That would take the picture back towards the original photo, so only the member who supplied "
                    "it (or a moderator of this channel) can do it. Try 🎲 Again or ➕ More style.", ephemeral=True)
                return None
        # Before | after shows the original: only for its owner's own remixes, never inherited by others.
        request = JobRequest(settings.preset, settings.strength, settings.preserve_colors, settings.seed,
                             blend=parent.blend if parent.style2_label else None,
                             compare=parent.compare and interaction.user.id == parent.user_id,
                             parent=parent, remix=action)

        async def gather(admission: Admission) -> Pictures:
            # Read only now, after the rules, quota and line said yes; checked when the parent was accepted.
            content, style, style2 = await self._pictures(parent)
            return Pictures(content, style, parent.style_label, style2, parent.style2_label)

        return await commands.start_job(interaction, request, gather, reply_to=parent.message_id)

    async def _compare(self, interaction: discord.Interaction, parent: Job) -> None:
        # The content picture was the requester's alone (their /stylize was private): before |
        # after shows it only to whoever supplied it first, or to a moderator of the channel.
        origin = await self._origin(parent)
        if origin.parent_id is not None or not may_cancel(interaction, origin):
            await interaction.followup.send("Before | after shows the original picture, so only the member who "
                                            "supplied it (or a moderator of this channel) can see it.",
                                            ephemeral=True)
            return
        if self._drawings_asked >= _MAX_DRAWINGS_ASKED:
            await interaction.followup.send("The bot is drawing a lot of before | after pictures right now. Please "
                                            "try again in a minute.", ephemeral=True)
            return
        self._drawings_asked += 1
        try:
            content, _style, _style2, result = await self._pictures(parent, result=True)
            async with self._drawing:  # a few at once (of the bot's own PNGs), whoever presses
                data, ext = await asyncio.to_thread(drawings.before_after_png, content, result,
                                                    interaction.filesize_limit)
        except UploadProblem as exc:
            await interaction.followup.send(str(exc), ephemeral=True)
            return
        except (ImageError, ValueError, OSError):
            log.exception("before | after failed", extra={"job_id": parent.job_id})
            await interaction.followup.send("The before | after picture could not be made.", ephemeral=True)
            return
        finally:
            self._drawings_asked -= 1
        await interaction.followup.send(f"Job `{parent.job_id}`, before | after:", ephemeral=True,
                                        file=discord.File(io.BytesIO(data), f"{_COMPARE_FILENAME}.{ext}"))

    async def _delete(self, interaction: discord.Interaction, parent: Job) -> None:
        job_id = parent.job_id
        if not may_cancel(interaction, parent):  # the requester, or a moderator of that channel
            await interaction.followup.send("Only the member who asked for this picture (or a moderator with Manage "
                                            "Messages in this channel) can delete it.", ephemeral=True)
            return
        try:
            if interaction.message is not None:
                await interaction.message.delete()
        except discord.NotFound:
            pass  # deleted already
        except discord.HTTPException as exc:
            log.warning("result not deleted", extra={"job_id": job_id, "status": exc.status})
            await interaction.followup.send("The bot could not delete that message (it may lack the permission "
                                            "here).", ephemeral=True)
            return
        # Deleted means nothing made from it keeps the original either: remixes still in line are
        # cancelled, results on their way are sent without before | after or kept pictures, and
        # kept pictures go.
        commands = self.commands
        await commands.ledger.forget_pictures(parent)
        for child_id in await commands.store.descendants(job_id):
            if await commands.scheduler.cancel(child_id, interaction.user.id):
                continue
            child = await commands.store.get(child_id)
            if child is None:
                continue
            if child.state in (JobState.DONE, JobState.DELIVERING):
                await commands.ledger.strip(child)
            elif child.kept_until is not None:
                await commands.ledger.forget_pictures(child)
        log.info("result deleted", extra={"job_id": job_id, "by": interaction.user.id})
        await interaction.followup.send(f"Deleted the result of job `{job_id}`.", ephemeral=True)

    # -- message commands

    def _picture(self, message: discord.Message) -> MessagePicture | None:
        return message_picture(message, self.commands.config.discord.api_base)

    async def stylize_this(self, interaction: discord.Interaction, message: discord.Message) -> None:
        picture = self._picture(message)
        if picture is None:
            await _no_picture(interaction)
            return
        options = [(entry.name, entry.label, "") for entry in self.commands.library.entries()][:24]
        store = self.commands.store
        saved = await store.saved_style_label(interaction.guild_id, interaction.user.id) \
            if store is not None and interaction.guild_id is not None else None
        if saved is not None:
            options.insert(0, (SAVED_STYLE_VALUE, "My saved style", words.clip(saved, 100)))
        if not options:
            await interaction.response.send_message(
                "There are no styles to pick from: the bot's library is empty and you have no saved style. Save "
                "one with Apps → \"Use as my style\" on a message with a picture.", ephemeral=True)
            return

        async def picked(choice: discord.Interaction, value: str) -> None:
            try:  # the menu goes at once: one pick, one job
                await choice.response.edit_message(content=f"Starting `{words.clip(picture.filename, 60)}`…", view=None)
                await self.commands.start_job(choice, JobRequest(None), lambda admission: self._gather_message(
                    choice, admission, picture, value))
            except Exception as exc:
                await answer_error(choice, exc)

        picker = StylePicker(options, picked)
        await interaction.response.send_message(f"Pick a style for `{words.clip(picture.filename, 60)}`:", view=picker,
                                                ephemeral=True)
        picker.opened_by = interaction

    async def _gather_message(self, interaction: discord.Interaction, admission: Admission, picture: MessagePicture,
                              style_value: str) -> Pictures:
        commands = self.commands
        content = await self._fetch(admission, picture, "content image")
        saved = None
        if style_value == SAVED_STYLE_VALUE:
            saved = await commands.saved_style(interaction)
            if saved is None:
                raise UploadProblem("Your saved style has expired. Save one again with Apps → \"Use as my style\".")
        style, label = await commands.style_picture(admission, None, None if saved else style_value, "style image",
                                                    saved)
        return Pictures(content, style, label)

    async def _fetch(self, admission: Admission, picture: MessagePicture, label: str) -> bytes:
        checks = self.commands.upload_checks()
        check_attachment(label, picture.filename, picture.content_type, picture.size or 0, picture.width,
                         picture.height, **checks)
        data = await admission.download(picture.url, label, picture.filename, int(checks["max_bytes"]))
        return await admission.prepare(label, picture.filename, data, **self.commands.prepare_checks())

    async def use_as_style(self, interaction: discord.Interaction, message: discord.Message) -> None:
        picture = self._picture(message)
        if picture is None:
            await _no_picture(interaction)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        store = self.commands.store
        try:
            async with self.commands.checker.admit(interaction.user.id, interaction.guild_id) as admission:
                data = await self._fetch(admission, picture, "style image")
            if store is None or interaction.guild_id is None:
                raise StoreError("no store")
            await store.save_style(interaction.guild_id, interaction.user.id, picture.filename, data, SAVED_STYLE_S)
        except (UploadProblem, Refused) as exc:
            await interaction.followup.send(str(exc), ephemeral=True)
            return
        except ServerSpoolFull as exc:
            text = ("That picture is too large to keep as a style in this server. Please use a smaller one."
                    if exc.needed > exc.share else
                    "This server's share of the bot's storage is full right now, so the style was not saved. "
                    "Please try again later.")
            await interaction.followup.send(text, ephemeral=True)
            return
        except SpoolFull:
            await interaction.followup.send("The bot's storage is full right now, so the style was not saved. "
                                            "Please try again later.", ephemeral=True)
            return
        except StoreError:
            log.exception("saved style not written")
            await interaction.followup.send("The bot cannot save styles right now. Please try again later.",
                                            ephemeral=True)
            return
        log.info("style saved", extra={"user_id": interaction.user.id, "guild_id": interaction.guild_id})
        await interaction.followup.send(
            f"🎨 Saved `{words.clip(picture.filename, 60)}` as your style here for {SAVED_STYLE_S / 3600:g} hours. "
            "/stylize without a style (and without library_style) uses it, and \"Stylize this image\" offers it.",
            ephemeral=True)


async def _no_picture(interaction: discord.Interaction) -> None:
    await interaction.response.send_message(
        "That message has no picture the bot can use (an attached PNG, JPEG, WebP, GIF or BMP, or an embedded "
        "image on Discord).", ephemeral=True)
