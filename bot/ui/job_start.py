"""The one way a job starts, whether from ``/stylize``, a button under a result or a message
command: the server's rules, the member's quota, a place held in line while the pictures
are gathered and checked, the job recorded, then put in line and its status message posted.
Every refusal is answered privately and counted under its reason."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable

import discord

from nst_core.errors import ParamsError
from nst_core.params import StylizeParams

from bot.core.job import Job, new_job_id
from bot.core.refusals import NotInServer, PicturesExpired, Refused, StorageUnavailable, UploadProblem
from bot.intake.uploads import Admission, UploadChecker
from bot.render.views import cancel_view
from bot.service.ledger import Ledger, job_params
from bot.service.scheduler import Hold, Scheduler
from bot.service.server_settings import ServerSettings
from bot.store.errors import PicturesGone, ServerSpoolFull, SpoolFull, StoreError
from bot.ui.access import channel_ids
from bot.ui.gather import JobInputs

if TYPE_CHECKING:
    from bot.config import EngineConfig
    from bot.delivery.messenger import Messenger
    from bot.health import Metrics
    from bot.store.job_store import JobStore

__all__ = ["JobRequest", "Gather", "JobStarter"]

log = logging.getLogger(__name__)


@dataclass
class JobRequest:
    """What a member asked for, from ``/stylize``, a button or a message command."""

    preset: str | None  # None: the bot's default (within the server's ceiling)
    strength: float = 1.0
    preserve_colors: bool = False
    seed: int | None = None  # None: random
    blend: float | None = None  # the second style's share; None: one style
    compare: bool = False  # add a "before | after" picture to the result
    parent: Job | None = None  # a remix: the job whose result's button was pressed
    remix: str | None = None
    notes: list[str] = field(default_factory=list)  # lines for the "accepted" reply
    # Post the status message and the result in this channel, never through the interaction
    # (a style event's entries go to its thread); None: where the command was used.
    channel_id: int | None = None
    # Called once the job is recorded, before it is put in line (a style event records its entry
    # then, before the job can finish); a StoreError there refuses the job.
    on_accepted: Callable[[Job], Awaitable[None]] | None = None


# Gathers a request's pictures once its turn to be checked came.
Gather = Callable[[Admission], Awaitable[JobInputs]]


class JobStarter:
    """Starts jobs: checks, gathering, recording, the line and the status message."""

    def __init__(self, engine: "EngineConfig", *, scheduler: Scheduler, ledger: Ledger, settings: ServerSettings,
                 checker: UploadChecker, messenger: "Messenger", store: "JobStore", metrics: "Metrics") -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.ledger = ledger
        self.settings = settings
        self.checker = checker
        self.messenger = messenger
        self.store = store
        self.metrics = metrics

    async def start(self, interaction: discord.Interaction, request: JobRequest, gather: Gather, *,
                    reply_to: int | None = None) -> Job | None:
        """Check the rules, gather the pictures, record the job and put it in line, then post
        its status message (as a reply to ``reply_to`` when given). The interaction has been
        deferred (ephemeral); every refusal is answered privately. Returns the job, or None."""
        try:
            if interaction.guild_id is None:  # the commands are for servers only: no rules or quota elsewhere
                raise NotInServer()
            request.preset = self._check_rules(interaction, request.preset)
            await self.settings.check_quota(interaction.guild_id, interaction.user.id)
            # The request keeps its place in line while it waits its turn to be checked.
            with self.scheduler.hold(interaction.user.id, interaction.guild_id) as hold:
                async with self.checker.admit(interaction.user.id, interaction.guild_id) as admission:
                    inputs = await gather(admission)
                job = self._new_job(interaction, request, inputs)
                await self._accept(job, hold, request.on_accepted)
        except Refused as exc:
            log.info("stylize refused", extra={"user_id": interaction.user.id, "guild_id": interaction.guild_id,
                                               "reason": str(exc), "why": exc.reason, "remix": request.remix})
            self.metrics.refused.labels(exc.reason).inc()
            await interaction.followup.send(str(exc), ephemeral=True)
            return None
        # From here on the job is in line: a failed message must not lose it, only its status display.
        text = self.messenger.current_text(job)
        where = f"in <#{job.channel_id}>" if request.channel_id is not None else "below"
        accepted = [f"✅ Job `{job.job_id}` accepted. Its progress is shown {where}, and you will be mentioned "
                    "when the result is ready.", *request.notes]
        try:
            await interaction.edit_original_response(content="\n".join(accepted))
        except discord.HTTPException:
            pass  # only the private acknowledgement is lost
        message_id = await self._post_status(interaction, job, text, reply_to,
                                             in_channel=request.channel_id is not None)
        self.messenger.attach(job, message_id, text if message_id is not None else None)
        return job

    def pictures_expired(self) -> PicturesExpired:
        """The refusal for a remix of a result whose pictures are no longer kept."""
        return PicturesExpired(self.store.reuse_s)

    async def _post_status(self, interaction: discord.Interaction, job: Job, text: str,
                           reply_to: int | None, *, in_channel: bool = False) -> int | None:
        """The job's public status message: a reply to the result it came from, a message in the
        job's own channel (``in_channel``), else a followup."""
        if in_channel:
            try:
                channel = interaction.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
                return (await channel.send(text, view=cancel_view(job.job_id))).id
            except discord.HTTPException as exc:  # the job still runs; its result tries the channel, then a DM
                log.warning("status message could not be created", extra={"job_id": job.job_id, "status": exc.status})
                return None
        if reply_to is not None:
            channel = interaction.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
            try:
                reference = discord.MessageReference(message_id=reply_to, channel_id=job.channel_id,
                                                     guild_id=job.guild_id, fail_if_not_exists=False)
                message = await channel.send(text, view=cancel_view(job.job_id), reference=reference,
                                             mention_author=False)
                return message.id
            except discord.HTTPException as exc:  # e.g. no Send Messages there: the followup still works
                log.info("status reply not possible; using a followup", extra={"job_id": job.job_id,
                                                                              "status": exc.status})
        try:
            message = await interaction.followup.send(text, view=cancel_view(job.job_id), wait=True)
            return message.id
        except discord.HTTPException as exc:
            log.warning("status message could not be created", extra={"job_id": job.job_id, "status": exc.status})
            return None

    def _check_rules(self, interaction: discord.Interaction, preset: str | None) -> str:
        """Refuse what the server's rules or the line forbid (cheap, before any download); returns
        the preset to use (the default is lowered to the server's ceiling rather than refused)."""
        guild_id = interaction.guild_id
        self.settings.check_channel(guild_id, channel_ids(interaction))
        if preset is None:
            allowed = self.settings.rules(guild_id).allowed_presets()
            default = self.engine.default_preset
            preset = default if default in allowed else allowed[-1]
        self.settings.check_preset(guild_id, preset)
        return preset

    async def _accept(self, job: Job, hold: Hold, on_accepted: Callable[[Job], Awaitable[None]] | None = None) -> None:
        """Record ``job`` (with its pictures), then put it in line in the place ``hold`` kept; raises Refused."""
        try:
            await self.ledger.accept(job, daily_limit=self.settings.daily_limit(job.guild_id),
                                     parent_kept=job.parent_id is not None)
        except PicturesGone:  # a remix whose parent was deleted (or expired) while it was being made
            raise self.pictures_expired() from None
        except ServerSpoolFull as exc:
            log.warning("server's spool share full; refusing a job", extra={
                "job_id": job.job_id, "guild_id": exc.guild_id, "used": exc.used, "share": exc.share})
            raise StorageUnavailable("This server's share of the bot's storage is full of jobs still waiting. "
                                     "Please try again once some of them have finished.") from None
        except SpoolFull:
            log.warning("spool full; refusing a job", extra={"job_id": job.job_id})
            raise StorageUnavailable("The bot's storage for waiting jobs is full right now. "
                                     "Please try again in a little while.") from None
        except StoreError:
            log.exception("a job could not be recorded; refusing it", extra={"job_id": job.job_id})
            raise StorageUnavailable("The bot cannot record new jobs right now (the operator can see why in "
                                     "its logs). Please try again later.") from None
        if on_accepted is not None:
            try:
                await on_accepted(job)
            except StoreError:
                log.exception("a job's companion record could not be written; refusing it",
                              extra={"job_id": job.job_id})
                await self.ledger.discard(job)
                raise StorageUnavailable("The bot cannot record new jobs right now (the operator can see why in "
                                         "its logs). Please try again later.") from None
        try:
            self.scheduler.submit(job, hold)  # the line may have closed while the pictures were written
        except Refused:
            await self.ledger.discard(job)
            raise
        self.metrics.accepted.inc()

    def _new_job(self, interaction: discord.Interaction, request: JobRequest, inputs: JobInputs) -> Job:
        blend = None
        if inputs.style2:
            blend = 0.5 if request.blend is None else request.blend
        parent = request.parent
        own_channel = request.channel_id is not None  # then the interaction's token is never used for it
        return Job(
            job_id=self._fresh_id(), user_id=interaction.user.id,
            channel_id=request.channel_id if own_channel else interaction.channel_id or 0,  # type: ignore[arg-type]
            guild_id=interaction.guild_id, application_id=interaction.application_id,
            interaction_token="" if own_channel else interaction.token,
            token_created_at=interaction.created_at.timestamp(),
            upload_limit=interaction.filesize_limit, params=self._params(request, blend), content=inputs.content,
            style=inputs.style, style_label=inputs.style_label, style2=inputs.style2,
            style2_label=inputs.style2_label if inputs.style2 else None,
            parent_id=parent.job_id if parent is not None else None, remix=request.remix, compare=request.compare,
        )

    def _params(self, request: JobRequest, blend: float | None) -> StylizeParams:
        assert request.preset is not None
        seed = request.seed if request.seed is not None else random.randrange(2**31)
        try:
            return job_params(self.engine, request.preset, strength=request.strength,
                              preserve_colors=request.preserve_colors, seed=seed, blend=blend)
        except ParamsError as exc:
            raise UploadProblem(str(exc)) from None

    def _fresh_id(self) -> str:
        while True:
            job_id = new_job_id()
            if self.scheduler.get(job_id) is None:
                return job_id
