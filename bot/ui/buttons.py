"""The buttons: Cancel under a status message, and under a result the remixes, before | after
and Delete.

Anyone who can see a result may press a remix button (actions in :mod:`bot.core.remix`); the
new job is theirs (their limits, quota and place in line), is made from the result's kept
pictures, names its parent, and its status message replies to the result. Only the member
who supplied the original (or a moderator of the channel) may take a picture back towards
it (Less style, Colours) or see it (🔍 before | after); 🗑️ deletes the result (its
requester, or a moderator with Manage Messages in that channel), its kept pictures, and the
remixes still in line.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Awaitable, Callable

import discord

from nst_core.errors import ImageError

from bot.core.job import Job, JobState
from bot.core.refusals import UploadProblem
from bot.core.remix import MIN_STRENGTH, REMIXES, TOWARDS_ORIGINAL, DoublePress, RemixRefused, next_preset, remix
from bot.intake.uploads import Admission
from bot.render import drawings
from bot.render.event_card import entry_view
from bot.render.views import result_view
from bot.service.ledger import Ledger
from bot.service.scheduler import Scheduler
from bot.service.server_settings import ServerSettings
from bot.store.job_store import JobStore
from bot.store.errors import PicturesGone, StoreError
from bot.ui.access import may_cancel
from bot.ui.cancel import cancel_job
from bot.ui.errors import answer_error
from bot.ui.gather import JobInputs
from bot.ui.job_start import JobRequest, JobStarter

__all__ = ["ResultViews", "ResultButtons"]

log = logging.getLogger(__name__)

_MAX_DRAWINGS_ASKED = 8  # before | after presses being drawn or waiting, over all servers


class ResultViews:
    """Which buttons a result gets, by what can work for it here."""

    def __init__(self, *, store: JobStore, settings: ServerSettings, max_strength: float,
                 entry_of: Callable[[str], str | None] = lambda job_id: None) -> None:
        self.store = store
        self.settings = settings
        self.max_strength = max_strength
        self.entry_of = entry_of  # the style event a job is an entry of, if any

    def __call__(self, job: Job) -> discord.ui.View:
        """The buttons for ``job``'s result: an event's entry gets Vote and Delete; otherwise no
        remixes when pictures are not kept, no Sharper when there is no sharper preset this
        server allows, no More or Less style at their ends, no Compare when it is attached."""
        if self.entry_of(job.job_id) is not None:
            return entry_view(job.job_id)
        hide: list[str] = []
        if self.store.reuse_s <= 0:
            hide += [*REMIXES, "compare"]
        allowed = self.settings.rules(job.guild_id).allowed_presets()
        if next_preset(job.preset, allowed) is None:
            hide.append("sharper")
        if job.compare:
            hide.append("compare")
        strength = job.params.strength
        if strength >= self.max_strength:
            hide.append("more")
        if strength <= MIN_STRENGTH:
            hide.append("less")
        return result_view(job.job_id, hide=hide)


class ResultButtons:
    """What the buttons under a result and the Cancel button under a status message do."""

    def __init__(self, starter: JobStarter, *, store: JobStore, settings: ServerSettings, ledger: Ledger,
                 scheduler: Scheduler, max_strength: float,
                 on_delete: Callable[[Job], Awaitable[None]] | None = None) -> None:
        self.starter = starter
        self.on_delete = on_delete  # a deleted result leaves the style event it was an entry of
        self.store = store
        self.settings = settings
        self.ledger = ledger
        self.scheduler = scheduler
        self.max_strength = max_strength
        self.presses = DoublePress()
        self._drawing = asyncio.Semaphore(2)  # before | after pictures drawn at once
        self._drawings_asked = 0  # drawing or waiting to: beyond _MAX_DRAWINGS_ASKED, a press is told to retry

    # -- the buttons under a result

    async def cancel(self, interaction: discord.Interaction, job_id: str) -> None:
        await cancel_job(self.scheduler, interaction, job_id)

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
        parent = await self.store.get(job_id)
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

    async def _kept_pictures(self, job: Job, *, result: bool = False) -> tuple[bytes, ...]:
        """``job``'s kept pictures; :class:`UploadProblem` (answered privately) once they are gone."""
        try:
            return await self.store.kept_pictures(job.job_id, result=result)
        except PicturesGone:
            raise self.starter.pictures_expired() from None
        except StoreError:
            log.exception("kept pictures unreadable", extra={"job_id": job.job_id})
            raise UploadProblem("The bot cannot read this result's pictures right now. Please try again later.") \
                from None

    async def _origin(self, job: Job) -> Job:
        """The first job of ``job``'s lineage: the one whose requester supplied the original picture
        (when a record on the way was purged, the oldest one still known)."""
        lineage = await self.store.lineage(job.job_id)
        return lineage[-1] if lineage else job

    async def _remix(self, interaction: discord.Interaction, action: str, parent: Job) -> Job | None:
        try:
            settings = remix(action, parent.params, max_strength=self.max_strength,
                             allowed_presets=self.settings.rules(interaction.guild_id).allowed_presets())
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

        async def gather(admission: Admission) -> JobInputs:
            # Read only now, after the rules, quota and line said yes; checked when the parent was accepted.
            content, style, style2 = await self._kept_pictures(parent)
            return JobInputs(content, style, parent.style_label, style2, parent.style2_label)

        return await self.starter.start(interaction, request, gather, reply_to=parent.message_id)

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
            content, _style, _style2, result = await self._kept_pictures(parent, result=True)
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
                                        file=discord.File(io.BytesIO(data), f"{drawings.BEFORE_AFTER_BASENAME}.{ext}"))

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
        await self.ledger.forget_pictures(parent)
        for child_id in await self.store.descendants(job_id):
            if await self.scheduler.cancel(child_id, interaction.user.id):
                continue
            child = await self.store.get(child_id)
            if child is None:
                continue
            if child.state in (JobState.DONE, JobState.DELIVERING):
                await self.ledger.strip(child)
            elif child.kept_until is not None:
                await self.ledger.forget_pictures(child)
        if self.on_delete is not None:
            await self.on_delete(parent)
        log.info("result deleted", extra={"job_id": job_id, "by": interaction.user.id})
        await interaction.followup.send(f"Deleted the result of job `{job_id}`.", ephemeral=True)
