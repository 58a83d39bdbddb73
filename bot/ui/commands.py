"""The slash commands and the Cancel button: thin Discord glue around the scheduler.

``/stylize`` acknowledges at once (an ephemeral "thinking" reply, so every refusal can be
private), checks the server's rules (:mod:`bot.settings`) and the line's limits, downloads
both images straight away (attachment links expire) and checks them with bounded cost
(:mod:`bot.uploads`), then queues a :class:`~bot.scheduler.Job`. A public status message
with a Cancel button then follows the job; :class:`~bot.delivery.Messenger` keeps it current.

``/stylebot status`` shows the line and the caller's server's part of it; ``/stylebot cancel``
stops a job by id. A job may be cancelled by its requester, or by a member with Manage
Messages in the job's own channel of the job's own server: nothing reaches across servers.
``/stylebot-settings`` lets a server's admins (Manage Server) set its rules.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable, TypeVar

import discord
from discord import app_commands

from nst_core.errors import ParamsError
from nst_core.params import StylizeParams

from bot.render import words
from bot.ui.admin import SettingsGroup
from bot.config import Config
from bot.ui.errors import answer_error
from bot.core.job import Job, JobState, Ledger, job_params, new_job_id
from bot.service.scheduler import (
    Hold, LineFull, NotAccepting, Refused, Scheduler, ServerLimitReached, UserLimitReached, WorkersUnavailable,
)
from bot.service.server_settings import (
    ChannelNotAllowed, PresetNotAllowed, QuotaReached, ServerSettings,
)
from bot.store.job_store import PicturesGone, ServerSpoolFull, SpoolFull, StoreError
from bot.intake.uploads import Admission, ChecksBusy, UploadChecker, UploadProblem, check_attachment
from bot.intake.library import StyleLibrary
from bot.render.views import cancel_view

if TYPE_CHECKING:
    from bot.delivery.messenger import Messenger
    from bot.health import Metrics
    from bot.store.job_store import JobStore

__all__ = ["StyleCommands", "StyleLibrary", "StorageUnavailable", "NotInServer", "PicturesExpired", "JobRequest",
           "Pictures",
           "refusal_reason", "may_cancel", "servers_only"]

log = logging.getLogger(__name__)

CommandT = TypeVar("CommandT", app_commands.Command, app_commands.Group, app_commands.ContextMenu)


class StorageUnavailable(Refused):
    """The job could not be recorded (the spool is full, or the disk cannot be written)."""


class PicturesExpired(UploadProblem):
    """A remix of a result whose pictures are no longer kept."""

    metric_label = "expired"  # refusal_reason


class NotInServer(Refused):
    """A request from outside a server (a DM, a user install): the bot works in servers only."""

    def __init__(self) -> None:
        super().__init__("The style bot works in servers only: please use it in a server that has added it.")


_REFUSAL_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (UserLimitReached, "user_limit"), (ServerLimitReached, "server_limit"), (LineFull, "line_full"),
    (NotAccepting, "not_accepting"), (WorkersUnavailable, "workers_down"), (StorageUnavailable, "storage"),
    (ChannelNotAllowed, "channel"), (PresetNotAllowed, "preset"), (QuotaReached, "quota"), (ChecksBusy, "busy"),
    (NotInServer, "not_in_server"),
)


def refusal_reason(exc: Exception) -> str:
    """The ``reason`` label a refusal is counted under in the metrics."""
    own = getattr(exc, "metric_label", None)  # refusals defined elsewhere name their own label
    if own:
        return own
    return next((label for kind, label in _REFUSAL_REASONS if isinstance(exc, kind)), "invalid_upload")


def servers_only(command: CommandT) -> CommandT:
    """Installable to servers and usable in them only: in a DM or through a member's own
    install no server's rules or quota would apply."""
    command.allowed_contexts = app_commands.AppCommandContext(guild=True, dm_channel=False, private_channel=False)
    command.allowed_installs = app_commands.AppInstallationType(guild=True, user=False)
    return command


def may_cancel(interaction: discord.Interaction, job: Job) -> bool:
    """The requester, or a member with Manage Messages in the job's own channel of its own server."""
    if interaction.user.id == job.user_id:
        return True
    if job.guild_id is None or interaction.guild_id != job.guild_id:
        return False
    if interaction.channel_id == job.channel_id:
        permissions = interaction.permissions  # Discord computed them for this channel, overwrites included
    else:
        guild = interaction.guild
        channel = guild.get_channel_or_thread(job.channel_id) if guild is not None else None
        member = interaction.user
        if channel is None or not isinstance(member, discord.Member):
            return False  # cannot tell: refuse rather than guess
        permissions = channel.permissions_for(member)
    return bool(permissions and permissions.manage_messages)


# --------------------------------------------------------------------------- commands


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


@dataclass
class Pictures:
    """A job's pictures, downloaded and checked."""

    content: bytes
    style: bytes
    style_label: str
    style2: bytes = b""
    style2_label: str | None = None


Gather = Callable[[Admission], Awaitable[Pictures]]


def _channel_ids(interaction: discord.Interaction) -> tuple[int, ...]:
    """Where a command runs, for the channel rule: a thread counts as its parent channel too."""
    ids = [interaction.channel_id or 0]
    parent = getattr(interaction.channel, "parent_id", None)
    if parent:
        ids.append(parent)
    return tuple(ids)


class StylebotGroup(app_commands.Group, name="stylebot", description="Style bot status and moderation",
                    guild_only=True):
    """``/stylebot status`` and ``/stylebot cancel``."""

    def __init__(self, style_commands: "StyleCommands") -> None:
        super().__init__()
        self.style_commands = style_commands

    @app_commands.command(name="status", description="Show the waiting line, running jobs, workers and recent job times")
    async def status(self, interaction: discord.Interaction) -> None:
        scheduler = self.style_commands.scheduler
        text = words.line_status_text(scheduler.status(), scheduler.guild_status(interaction.guild_id))
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="styles", description="Show the style library: numbered, labelled thumbnails")
    async def styles(self, interaction: discord.Interaction) -> None:
        library = self.style_commands.library
        entries = library.entries()
        try:  # it posts publicly, so only where the server lets the bot post
            self.style_commands.settings.check_channel(interaction.guild_id, _channel_ids(interaction))
        except ChannelNotAllowed as exc:
            await interaction.response.send_message(str(exc), ephemeral=True)
            return
        if not entries:
            await interaction.response.send_message("The style library is empty: attach a style picture to "
                                                    "/stylize.", ephemeral=True)
            return
        await interaction.response.defer(thinking=True)  # drawing the sheet takes a moment
        sheet = await library.contact_sheet()
        lines = [f"{i}. `{e.name}` {e.label}" for i, e in enumerate(entries, 1)]
        text = "**Style library** (use a name with /stylize `library_style`):\n" + "\n".join(lines)
        if len(text) > 1900:
            text = text[:1890].rsplit("\n", 1)[0] + "\n…"
        await interaction.followup.send(text, file=discord.File(io.BytesIO(sheet), "styles.png"))

    @app_commands.command(name="cancel", description="Cancel a job by id: your own, or any job in a channel you moderate")
    @app_commands.describe(job_id="The job id shown in the job's status message")
    async def cancel(self, interaction: discord.Interaction, job_id: str) -> None:
        await self.style_commands.cancel_job(interaction, job_id.strip().strip("`").lower())

    @cancel.autocomplete("job_id")
    async def job_id_autocomplete(self, interaction: discord.Interaction,
                                  current: str) -> list[app_commands.Choice[str]]:
        # Only jobs of the caller's own server that the caller may cancel: ids of other
        # servers' jobs are never shown.
        prefix = current.strip().lower()
        jobs = [j for j in self.style_commands.scheduler.jobs()
                if j.guild_id == interaction.guild_id and j.job_id.startswith(prefix) and may_cancel(interaction, j)]
        return [app_commands.Choice(name=f"{j.job_id} ({j.state.value}, {j.preset})", value=j.job_id)
                for j in jobs[:25]]

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await answer_error(interaction, error)


class StyleCommands:
    """``/stylize`` and cancelling; registers it and the command groups on a command tree."""

    def __init__(self, config: Config, scheduler: Scheduler, messenger: "Messenger", library: StyleLibrary, *,
                 ledger: Ledger | None = None, store: "JobStore | None" = None, metrics: "Metrics | None" = None,
                 settings: ServerSettings | None = None, checker: UploadChecker | None = None) -> None:
        self.config = config
        self.scheduler = scheduler
        self.messenger = messenger
        self.library = library
        self.ledger = ledger if ledger is not None else Ledger(store)
        self.store = store
        self.metrics = metrics
        self.settings = settings if settings is not None else ServerSettings(config.limits, store)
        limits = config.limits
        self.checker = checker if checker is not None else UploadChecker.from_limits(limits)

    def register(self, tree: app_commands.CommandTree) -> None:
        presets = self.config.engine.presets
        max_size = self.config.engine.max_size
        max_strength = self.config.limits.max_strength
        preset_choices = [
            app_commands.Choice(name=f"{name} — {min(p.size, max_size)} px, {p.steps} steps", value=name)
            for name, p in presets.items()
        ]

        async def stylize_callback(
            interaction: discord.Interaction,
            content: discord.Attachment,
            style: discord.Attachment | None = None,
            library_style: str | None = None,
            preset: app_commands.Choice[str] | None = None,
            strength: float = 1.0,
            preserve_colors: bool = False,
            seed: app_commands.Range[int, 0, 2**31 - 1] | None = None,
            style2: discord.Attachment | None = None,
            library_style2: str | None = None,
            blend: app_commands.Range[float, 0.0, 1.0] | None = None,
            compare: bool = False,
        ) -> None:
            request = JobRequest(preset.value if preset else None, float(strength), bool(preserve_colors), seed,
                                 blend=blend, compare=bool(compare))
            await interaction.response.defer(ephemeral=True, thinking=True)  # within Discord's 3 seconds
            await self.start_job(interaction, request, lambda admission: self._gather_upload(
                interaction, admission, request, content, (style, library_style), (style2, library_style2)))

        # The operator's limit, so Discord itself keeps the option within it (set before the
        # command reads its parameters; a string annotation could only name a module global).
        stylize_callback.__annotations__["strength"] = app_commands.Range[float, 0.0, max_strength]
        stylize = app_commands.command(name="stylize", description="Repaint a picture in the style of another picture")(
            app_commands.guild_only()(app_commands.choices(preset=preset_choices)(app_commands.describe(
                content="The picture to repaint (PNG, JPEG, WebP, GIF or BMP)",
                style="The style picture; leave empty to use library_style (or your saved style) instead",
                library_style="A painting from the bot's library, used when no style picture is attached",
                preset=f"Speed and quality (default: {self.config.engine.default_preset})",
                strength=f"How strongly to apply the style, 0 to {max_strength:g} (default 1)",
                preserve_colors="Keep the content picture's colours and take only texture from the style",
                seed="A number that makes the result repeatable (default: random)",
                style2="A second style picture, blended with the first",
                library_style2="A second style from the library, blended with the first",
                blend="The second style's share, 0 to 1 (default 0.5)",
                compare="Also show the picture before and after, side by side",
            )(stylize_callback))))

        async def library_choices(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            return [app_commands.Choice(name=entry.label, value=entry.name) for entry in self.library.search(current)]

        stylize.autocomplete("library_style")(library_choices)
        stylize.autocomplete("library_style2")(library_choices)

        @stylize.error
        async def stylize_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
            await answer_error(interaction, error)

        tree.add_command(servers_only(stylize))
        tree.add_command(servers_only(StylebotGroup(self)))
        tree.add_command(servers_only(SettingsGroup(self.settings, self.config.limits,
                                                    lambda: self.scheduler.per_guild_waiting)))

    # -- starting a job (/stylize, the buttons under a result, the message commands)

    async def start_job(self, interaction: discord.Interaction, request: JobRequest, gather: Gather, *,
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
                    pictures = await gather(admission)
                job = self._new_job(interaction, request, pictures)
                await self._accept(job, hold)
        except (UploadProblem, Refused) as exc:
            log.info("stylize refused", extra={"user_id": interaction.user.id, "guild_id": interaction.guild_id,
                                           "reason": str(exc), "why": refusal_reason(exc), "remix": request.remix})
            if self.metrics is not None:
                self.metrics.refused.labels(refusal_reason(exc)).inc()
            await interaction.followup.send(str(exc), ephemeral=True)
            return None
        # From here on the job is in line: a failed message must not lose it, only its status display.
        text = self.messenger.current_text(job)
        accepted = [f"✅ Job `{job.job_id}` accepted. Its progress is shown below, and you will be mentioned "
                    "when the result is ready.", *request.notes]
        try:
            await interaction.edit_original_response(content="\n".join(accepted))
        except discord.HTTPException:
            pass  # only the private acknowledgement is lost
        message_id = await self._post_status(interaction, job, text, reply_to)
        self.messenger.attach(job, message_id, text if message_id is not None else None)
        return job

    async def _post_status(self, interaction: discord.Interaction, job: Job, text: str,
                           reply_to: int | None) -> int | None:
        """The job's public status message: a reply to the result it came from, else a followup."""
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
        self.settings.check_channel(guild_id, _channel_ids(interaction))
        if preset is None:
            allowed = self.settings.rules(guild_id).allowed_presets()
            default = self.config.engine.default_preset
            preset = default if default in allowed else allowed[-1]
        self.settings.check_preset(guild_id, preset)
        return preset

    async def _accept(self, job: Job, hold: Hold) -> None:
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
        try:
            self.scheduler.submit(job, hold)  # the line may have closed while the pictures were written
        except Refused:
            await self.ledger.discard(job)
            raise
        if self.metrics is not None:
            self.metrics.accepted.inc()

    def pictures_expired(self) -> PicturesExpired:
        """The refusal for a remix of a result whose pictures are no longer kept."""
        hours = (self.store.reuse_s if self.store is not None else 0.0) / 3600
        return PicturesExpired(
            f"The pictures of this result have expired (they are kept for {hours:g} hours after delivery, or until "
            "the result is deleted), so this button no longer works. Run /stylize again with them.")

    def _new_job(self, interaction: discord.Interaction, request: JobRequest, pictures: Pictures) -> Job:
        blend = None
        if pictures.style2:
            blend = 0.5 if request.blend is None else request.blend
        parent = request.parent
        return Job(
            job_id=self._fresh_id(), user_id=interaction.user.id, channel_id=interaction.channel_id or 0,
            guild_id=interaction.guild_id, application_id=interaction.application_id,
            interaction_token=interaction.token, token_created_at=interaction.created_at.timestamp(),
            upload_limit=interaction.filesize_limit, params=self._params(request, blend), content=pictures.content,
            style=pictures.style, style_label=pictures.style_label, style2=pictures.style2,
            style2_label=pictures.style2_label if pictures.style2 else None,
            parent_id=parent.job_id if parent is not None else None, remix=request.remix, compare=request.compare,
        )

    # -- the pictures of a /stylize

    def upload_checks(self) -> dict[str, float]:
        limits = self.config.limits
        return dict(max_bytes=limits.max_upload_bytes, max_pixels=limits.max_pixels,
                    max_aspect=limits.max_aspect_ratio)

    def prepare_checks(self) -> dict[str, float]:
        """:meth:`upload_checks` and the side a picture is kept at."""
        return {**self.upload_checks(), "side": self.config.engine.picture_side}

    async def _gather_upload(self, interaction: discord.Interaction, admission: Admission, request: JobRequest,
                             content: discord.Attachment, style: tuple[discord.Attachment | None, str | None],
                             style2: tuple[discord.Attachment | None, str | None]) -> Pictures:
        """Download and check ``/stylize``'s pictures: the content, the style (attached, from the
        library, or the member's saved style) and an optional second style."""
        checks = self.upload_checks()
        if request.blend is not None and not any(style2):
            raise UploadProblem("`blend` mixes in a second style: give one with `style2` or `library_style2`.")
        for label, attachment in (("content image", content), ("style image", style[0]),
                                  ("second style image", style2[0])):
            if attachment is not None:
                check_attachment(label, attachment.filename, attachment.content_type, attachment.size,
                                 attachment.width, attachment.height, **checks)
        saved = None
        if not any(style):
            saved = await self.saved_style(interaction)
            if saved is None:
                hint = " or pick one from the library with the `library_style` option" if self.library.names() else ""
                raise UploadProblem(f"Please attach a style image with the `style` option{hint}. (Or save one: "
                                    "on any message with a picture, Apps → \"Use as my style\".)")
            request.notes.append(f"🎨 Using your saved style `{words.clip(saved[0], 80)}`.")
        try:  # a task group: when one download or check fails, the others stop too
            async with asyncio.TaskGroup() as group:
                content_task = group.create_task(self._content_picture(admission, content))
                style_task = group.create_task(self.style_picture(admission, *style, "style image", saved))
                style2_task = group.create_task(self.style_picture(admission, *style2, "second style image", None))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        (style_png, style_label), (style2_png, style2_label) = style_task.result(), style2_task.result()
        return Pictures(content_task.result(), style_png, style_label, style2_png, style2_label or None)

    async def _content_picture(self, admission: Admission, attachment: discord.Attachment) -> bytes:
        data = await self._download(admission, attachment, "content image")
        return await admission.prepare("content image", attachment.filename, data, **self.prepare_checks())

    async def prepare_style(self, admission: Admission, label: str, name: str, data: bytes) -> bytes:
        """A style picture as the bot keeps it; the library's files, checked at their own size,
        may be over the upload limit."""
        checks = self.prepare_checks()
        return await admission.prepare(label, name, data, **{**checks, "max_bytes": max(checks["max_bytes"],
                                                                                        len(data))})

    def _download(self, admission: Admission, attachment: discord.Attachment, label: str) -> Awaitable[bytes]:
        return admission.download(attachment.url, label, attachment.filename, self.config.limits.max_upload_bytes)

    async def style_picture(self, admission: Admission, attachment: discord.Attachment | None,
                            library_name: str | None, label: str, saved: tuple[str, bytes] | None) -> tuple[bytes, str]:
        """One style as the bot keeps it (PNG) and its label: the attachment first, then the
        library, then ``saved`` (kept as PNG when it was saved); ``b""`` for none."""
        if attachment is not None:
            data = await self._download(admission, attachment, label)
            return await self.prepare_style(admission, label, attachment.filename, data), attachment.filename
        if library_name:
            entry = self.library.get(library_name)
            title = entry.title if entry is not None else library_name
            data = await self.library.read(library_name)
            return await self.prepare_style(admission, label, title, data), title
        if saved is not None:
            return saved[1], saved[0]
        return b"", ""

    async def saved_style(self, interaction: discord.Interaction) -> tuple[str, bytes] | None:
        if self.store is None or interaction.guild_id is None:
            return None
        try:
            return await self.store.saved_style(interaction.guild_id, interaction.user.id)
        except StoreError:
            log.exception("saved style unreadable")
            return None

    def _params(self, request: JobRequest, blend: float | None) -> StylizeParams:
        assert request.preset is not None
        seed = request.seed if request.seed is not None else random.randrange(2**31)
        try:
            return job_params(self.config.engine, request.preset, strength=request.strength,
                              preserve_colors=request.preserve_colors, seed=seed, blend=blend)
        except ParamsError as exc:
            raise UploadProblem(str(exc)) from None

    def _fresh_id(self) -> str:
        while True:
            job_id = new_job_id()
            if self.scheduler.get(job_id) is None:
                return job_id

    # -- cancelling (button and /stylebot cancel)

    async def cancel_job(self, interaction: discord.Interaction, job_id: str) -> None:
        job = self.scheduler.get(job_id)
        # Another server's job answers exactly like an unknown one: its id says nothing there.
        if job is None or (job.guild_id != interaction.guild_id and job.user_id != interaction.user.id):
            await interaction.response.send_message(
                f"Job `{job_id}` is not waiting or running any more, so there is nothing to cancel.", ephemeral=True)
            return
        if not may_cancel(interaction, job):
            await interaction.response.send_message(
                "Only the requester (or a moderator with Manage Messages in the job's channel) can cancel this job.",
                ephemeral=True)
            return
        # Answer first: stopping a running job can take a moment, the interaction cannot wait.
        await interaction.response.send_message(f"Cancelling job `{job_id}`…", ephemeral=True)
        log.info("cancel requested", extra={"job_id": job_id, "by": interaction.user.id})
        cancelled = await self.scheduler.cancel(job_id, interaction.user.id)
        if cancelled:
            note = f"Job `{job_id}` was cancelled."
        elif job.failure is None and job.state is not JobState.CANCELLED:
            note = f"Job `{job_id}` had already finished, so it was not cancelled: its result is on its way."
        else:
            note = f"Job `{job_id}` had already ended."
        try:
            await interaction.edit_original_response(content=note)
        except discord.HTTPException:
            pass
