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
import logging
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Literal

import discord
from discord import app_commands

from nst_core.errors import ParamsError
from nst_core.params import StylizeParams

from . import render
from .config import Config
from .scheduler import (
    Job, LineFull, NotAccepting, Refused, Scheduler, ServerLimitReached, UserLimitReached, WorkersUnavailable,
    new_job_id,
)
from .settings import (
    MAX_CHANNELS, ChannelNotAllowed, PresetNotAllowed, QuotaReached, ServerSettings, SettingRefused,
)
from .store import SpoolFull, StoreError
from .uploads import Admission, ChecksBusy, UploadChecker, UploadProblem, check_attachment

if TYPE_CHECKING:
    from .delivery import Messenger
    from .health import Metrics
    from .store import JobStore

__all__ = ["StyleCommands", "CancelButton", "StyleLibrary", "StorageUnavailable", "refusal_reason", "may_cancel"]

log = logging.getLogger(__name__)

_LIBRARY_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
MAX_STRENGTH = 5.0


class StorageUnavailable(Refused):
    """The job could not be recorded (the spool is full, or the disk cannot be written)."""


_REFUSAL_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (UserLimitReached, "user_limit"), (ServerLimitReached, "server_limit"), (LineFull, "line_full"),
    (NotAccepting, "not_accepting"), (WorkersUnavailable, "workers_down"), (StorageUnavailable, "storage"),
    (ChannelNotAllowed, "channel"), (PresetNotAllowed, "preset"), (QuotaReached, "quota"), (ChecksBusy, "busy"),
)


def refusal_reason(exc: Exception) -> str:
    """The ``reason`` label a refusal is counted under in the metrics."""
    return next((label for kind, label in _REFUSAL_REASONS if isinstance(exc, kind)), "invalid_upload")


# --------------------------------------------------------------------------- style library


class StyleLibrary:
    """The operator's folder of style images, offered by name (the file name without suffix).

    User text is only ever matched against this listing, never joined onto a path.
    """

    def __init__(self, path: str | Path | None, refresh_s: float = 30.0) -> None:
        self.path = Path(path).expanduser() if path else None
        self._refresh_s = refresh_s
        self._files: dict[str, Path] = {}
        self._read_at = -float("inf")

    def _listing(self) -> dict[str, Path]:
        if self.path is None:
            return {}
        if time.monotonic() - self._read_at > self._refresh_s:  # a small folder; re-read now and then
            try:
                files = sorted(p for p in self.path.iterdir()
                               if p.is_file() and p.suffix.lower() in _LIBRARY_SUFFIXES)
            except OSError:
                files = []
            self._files = {p.stem: p for p in files}
            self._read_at = time.monotonic()
        return self._files

    def names(self) -> list[str]:
        return list(self._listing())

    def search(self, text: str, limit: int = 25) -> list[str]:
        text = text.strip().lower()
        names = self.names()
        starts = [n for n in names if n.lower().startswith(text)]
        contains = [n for n in names if text in n.lower() and n not in starts]
        return (starts + contains)[:limit]

    async def read(self, name: str) -> bytes:
        path = self._listing().get(name)
        if path is None:
            raise UploadProblem(f"There is no style called `{name}` in the library. "
                                "Pick one from the list that appears as you type.")
        try:
            return await asyncio.to_thread(path.read_bytes)
        except OSError:
            log.exception("library style unreadable", extra={"style": name})
            raise UploadProblem(f"The library style `{name}` cannot be read right now. "
                                "Please pick another one.") from None


# --------------------------------------------------------------------------- Cancel button


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


class CancelButton(discord.ui.DynamicItem[discord.ui.Button], template=r"nstbot:cancel:(?P<job_id>[0-9a-f]{4,32})"):
    """Cancel for one job; the job id lives in the custom id, so it works after a restart."""

    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Cancel", style=discord.ButtonStyle.danger,
                                           custom_id=f"nstbot:cancel:{job_id}", emoji="🛑"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> "CancelButton":
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        commands: StyleCommands | None = getattr(interaction.client, "style_commands", None)
        if commands is None:
            await interaction.response.send_message("The bot is starting up; please try again in a moment.",
                                                    ephemeral=True)
            return
        await commands.cancel_job(interaction, self.job_id)


def cancel_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


# --------------------------------------------------------------------------- commands


@dataclass
class _Request:
    preset: str | None  # None: the bot's default (within the server's ceiling)
    strength: float
    preserve_colors: bool
    seed: int | None


def _channel_ids(interaction: discord.Interaction) -> tuple[int, ...]:
    """Where a command runs, for the channel rule: a thread counts as its parent channel too."""
    ids = [interaction.channel_id or 0]
    parent = getattr(interaction.channel, "parent_id", None)
    if parent:
        ids.append(parent)
    return tuple(ids)


class StyleCommands:
    """Registers ``/stylize``, ``/stylebot`` and ``/stylebot-settings`` on a command tree and answers them."""

    def __init__(self, config: Config, scheduler: Scheduler, messenger: "Messenger", library: StyleLibrary, *,
                 store: "JobStore | None" = None, metrics: "Metrics | None" = None,
                 settings: ServerSettings | None = None, checker: UploadChecker | None = None) -> None:
        self.config = config
        self.scheduler = scheduler
        self.messenger = messenger
        self.library = library
        self.store = store
        self.metrics = metrics
        self.settings = settings if settings is not None else ServerSettings(config.limits, store)
        limits = config.limits
        self.checker = checker if checker is not None else UploadChecker(
            workers=limits.checks_at_once, waiting_max=limits.checks_waiting, timeout_s=limits.check_timeout_s)

    def register(self, tree: app_commands.CommandTree) -> None:
        presets = self.config.engine.presets
        max_size = self.config.engine.max_size
        preset_choices = [
            app_commands.Choice(name=f"{name} — {min(p.size, max_size)} px, {p.steps} steps", value=name)
            for name, p in presets.items()
        ]

        @app_commands.command(name="stylize", description="Repaint a picture in the style of another picture")
        @app_commands.describe(
            content="The picture to repaint (PNG, JPEG, WebP, GIF or BMP)",
            style="The style picture; leave empty to use library_style instead",
            library_style="A style from the bot's library, used when no style picture is attached",
            preset=f"Speed and quality (default: {self.config.engine.default_preset})",
            strength=f"How strongly to apply the style, 0 to {MAX_STRENGTH:g} (default 1)",
            preserve_colors="Keep the content picture's colours and take only texture from the style",
            seed="A number that makes the result repeatable (default: random)",
        )
        @app_commands.choices(preset=preset_choices)
        @app_commands.guild_only()
        async def stylize(
            interaction: discord.Interaction,
            content: discord.Attachment,
            style: discord.Attachment | None = None,
            library_style: str | None = None,
            preset: app_commands.Choice[str] | None = None,
            strength: app_commands.Range[float, 0.0, MAX_STRENGTH] = 1.0,
            preserve_colors: bool = False,
            seed: app_commands.Range[int, 0, 2**31 - 1] | None = None,
        ) -> None:
            request = _Request(preset.value if preset else None, float(strength), bool(preserve_colors), seed)
            await self.stylize(interaction, content, style, library_style, request)

        @stylize.autocomplete("library_style")
        async def library_style_autocomplete(interaction: discord.Interaction,
                                             current: str) -> list[app_commands.Choice[str]]:
            return [app_commands.Choice(name=n, value=n) for n in self.library.search(current)]

        group = app_commands.Group(name="stylebot", description="Style bot status and moderation", guild_only=True)

        @group.command(name="status", description="Show the waiting line, running jobs, workers and recent job times")
        async def status(interaction: discord.Interaction) -> None:
            text = render.line_status_text(self.scheduler.status(), self.scheduler.guild_status(interaction.guild_id))
            await interaction.response.send_message(text, ephemeral=True)

        @group.command(name="cancel", description="Cancel a job by id: your own, or any job in a channel you moderate")
        @app_commands.describe(job_id="The job id shown in the job's status message")
        async def cancel(interaction: discord.Interaction, job_id: str) -> None:
            await self.cancel_job(interaction, job_id.strip().strip("`").lower())

        @cancel.autocomplete("job_id")
        async def job_id_autocomplete(interaction: discord.Interaction,
                                      current: str) -> list[app_commands.Choice[str]]:
            # Only jobs of the caller's own server that the caller may cancel: ids of other
            # servers' jobs are never shown.
            prefix = current.strip().lower()
            jobs = [j for j in self.scheduler.jobs()
                    if j.guild_id == interaction.guild_id and j.job_id.startswith(prefix) and may_cancel(interaction, j)]
            return [app_commands.Choice(name=f"{j.job_id} ({j.status.value}, {j.preset})", value=j.job_id)
                    for j in jobs[:25]]

        tree.add_command(stylize)
        tree.add_command(group)
        tree.add_command(self._settings_group(preset_choices))

    def _settings_group(self, preset_choices: list[app_commands.Choice[str]]) -> app_commands.Group:
        """``/stylebot-settings``: shown to members with Manage Server by default, checked again when run."""
        group = app_commands.Group(name="stylebot-settings", description="This server's rules for /stylize",
                                   guild_only=True, default_permissions=discord.Permissions(manage_guild=True))

        @group.command(name="show", description="Show this server's rules for /stylize")
        async def show(interaction: discord.Interaction) -> None:
            if await self._admin_only(interaction):
                await interaction.response.send_message(self._settings_text(interaction.guild_id or 0),
                                                        ephemeral=True)

        @group.command(name="channels", description="Choose the channels where /stylize may be used")
        @app_commands.describe(action="allow: add the channel; remove: take it off; everywhere: no channel rule",
                               channel="The channel to allow or remove")
        async def channels(interaction: discord.Interaction, action: Literal["allow", "remove", "everywhere"],
                           channel: discord.TextChannel | discord.Thread | None = None) -> None:
            if not await self._admin_only(interaction):
                return
            current = self.settings.get(interaction.guild_id or 0).channels
            if action == "everywhere":
                chosen: tuple[int, ...] = ()
            elif channel is None:
                await interaction.response.send_message(f"Please name the channel to {action}.", ephemeral=True)
                return
            elif action == "allow":
                chosen = current if channel.id in current else (*current, channel.id)
            else:
                chosen = tuple(c for c in current if c != channel.id)
            await self._change(interaction, channels=chosen)

        @group.command(name="max-preset", description="The largest preset members may use in this server")
        @app_commands.describe(preset="fast, balanced or best (within the bot operator's limit)")
        @app_commands.choices(preset=preset_choices)
        async def max_preset(interaction: discord.Interaction, preset: app_commands.Choice[str]) -> None:
            if await self._admin_only(interaction):
                await self._change(interaction, max_preset=preset.value)

        @group.command(name="daily-quota", description="Jobs one member may start in 24 hours here (0: no limit)")
        @app_commands.describe(jobs="Jobs per member per 24 hours; 0 for no limit (within the operator's limit)")
        async def daily_quota(interaction: discord.Interaction, jobs: app_commands.Range[int, 0, 10_000]) -> None:
            if await self._admin_only(interaction):
                await self._change(interaction, daily_jobs=int(jobs))

        return group

    async def _admin_only(self, interaction: discord.Interaction) -> bool:
        # The command's default permissions only hide it; a server can show it to anyone.
        permissions = interaction.permissions
        if interaction.guild_id is not None and permissions is not None and permissions.manage_guild:
            return True
        await interaction.response.send_message("Only members with the Manage Server permission can change this "
                                                "server's rules for the bot.", ephemeral=True)
        return False

    async def _change(self, interaction: discord.Interaction, **changes: object) -> None:
        guild_id = interaction.guild_id or 0
        try:
            await self.settings.update(guild_id, interaction.user.id, **changes)
        except SettingRefused as exc:
            await interaction.response.send_message(str(exc), ephemeral=True)
            return
        except StoreError:
            log.exception("server settings could not be saved", extra={"guild_id": guild_id})
            await interaction.response.send_message("The settings could not be saved right now. Please try again "
                                                    "later.", ephemeral=True)
            return
        await interaction.response.send_message("Saved.\n" + self._settings_text(guild_id), ephemeral=True)

    def _settings_text(self, guild_id: int) -> str:
        rules = self.settings.rules(guild_id)
        limits = self.config.limits
        where = ", ".join(f"<#{c}>" for c in rules.channels) if rules.channels else "every channel"
        quota = f"{rules.daily_jobs} per member per 24 hours" if rules.daily_jobs else "no limit"
        ceiling = (f"at most {limits.daily_jobs_per_member}" if limits.daily_jobs_per_member else "no limit")
        return "\n".join([
            f"**/stylize may be used in:** {where} (at most {MAX_CHANNELS} channels)",
            f"**Largest preset:** {rules.max_preset} (the bot's operator allows up to {limits.max_preset})",
            f"**Jobs per member:** {quota} (the bot's operator allows {ceiling})",
            f"**Jobs waiting from this server:** at most {self.scheduler.per_guild_waiting}",
        ])

    # -- /stylize

    async def stylize(self, interaction: discord.Interaction, content: discord.Attachment,
                      style: discord.Attachment | None, library_style: str | None, request: _Request) -> None:
        # Acknowledge first: Discord drops interactions not answered within 3 seconds.
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            request.preset = self._check_rules(interaction, request.preset)
            await self.settings.check_quota(interaction.guild_id, interaction.user.id)
            async with self.checker.admit(interaction.user.id) as admission:
                job = await self._make_job(interaction, admission, content, style, library_style, request)
            await self._accept(job)
        except (UploadProblem, Refused) as exc:
            log.info("stylize refused", extra={"user_id": interaction.user.id, "guild_id": interaction.guild_id,
                                               "reason": str(exc), "why": refusal_reason(exc)})
            if self.metrics is not None:
                self.metrics.refused.labels(refusal_reason(exc)).inc()
            await interaction.followup.send(str(exc), ephemeral=True)
            return
        # From here on the job is in line: a failed message must not lose it, only its status display.
        text = self.messenger.current_text(job)
        try:
            await interaction.edit_original_response(
                content=f"✅ Job `{job.job_id}` accepted. Its progress is shown below, and you will be mentioned "
                        "when the result is ready.")
            message = await interaction.followup.send(text, view=cancel_view(job.job_id), wait=True)
        except discord.HTTPException as exc:
            log.warning("status message could not be created", extra={"job_id": job.job_id, "status": exc.status})
            self.messenger.attach(job, None, None)
            return
        self.messenger.attach(job, message.id, text)

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
        self.scheduler.check(interaction.user.id, guild_id)
        return preset

    async def _accept(self, job: Job) -> None:
        """Record ``job`` (with its pictures) in the store, then put it in line; raises Refused."""
        if self.store is not None:
            try:
                await self.store.accept(job, daily_limit=self.settings.daily_limit(job.guild_id))
            except SpoolFull:
                log.warning("spool full; refusing a job", extra={"spool_bytes": self.store.spool_bytes})
                raise StorageUnavailable("The bot's storage for waiting jobs is full right now. "
                                         "Please try again in a little while.") from None
            except StoreError:
                log.exception("a job could not be recorded; refusing it", extra={"job_id": job.job_id})
                raise StorageUnavailable("The bot cannot record new jobs right now (the operator can see why in "
                                         "its logs). Please try again later.") from None
        try:
            self.scheduler.submit(job)  # the line may have filled while the pictures were written
        except Refused:
            if self.store is not None:
                await self.store.discard(job.job_id)
            raise
        if self.metrics is not None:
            self.metrics.accepted.inc()

    async def _make_job(self, interaction: discord.Interaction, admission: Admission, content: discord.Attachment,
                        style: discord.Attachment | None, library_style: str | None, request: _Request) -> Job:
        limits = self.config.limits
        checks = dict(max_bytes=limits.max_upload_bytes, max_pixels=limits.max_pixels,
                      max_aspect=limits.max_aspect_ratio)
        if style is None and not library_style:
            hint = (" or pick one from the library with the `library_style` option" if self.library.names() else "")
            raise UploadProblem(f"Please attach a style image with the `style` option{hint}.")
        check_attachment("content image", content.filename, content.content_type, content.size, content.width,
                         content.height, **checks)
        if style is not None:
            check_attachment("style image", style.filename, style.content_type, style.size, style.width,
                             style.height, **checks)

        def download(attachment: discord.Attachment, label: str) -> Awaitable[bytes]:
            return admission.download(attachment.url, label, attachment.filename, limits.max_upload_bytes)

        if style is not None:
            content_bytes, style_bytes = await asyncio.gather(download(content, "content image"),
                                                              download(style, "style image"))
            style_label = style.filename
        else:
            assert library_style is not None
            content_bytes = await download(content, "content image")
            style_bytes = await self.library.read(library_style)
            style_label = library_style
        await admission.check("content image", content.filename, content_bytes, **checks)
        if style is None:  # the operator's own files: no upload size limit, still a readable image
            checks["max_bytes"] = max(limits.max_upload_bytes, len(style_bytes))
        await admission.check("style image", style_label, style_bytes, **checks)
        assert request.preset is not None
        params = self._params(request)
        return Job(
            job_id=self._fresh_id(), user_id=interaction.user.id, channel_id=interaction.channel_id or 0,
            guild_id=interaction.guild_id, application_id=interaction.application_id,
            interaction_token=interaction.token, token_created_at=interaction.created_at.timestamp(),
            upload_limit=interaction.filesize_limit, params=params.to_dict(), content=content_bytes,
            style=style_bytes, style_label=style_label, preset=request.preset,
        )

    def _params(self, request: _Request) -> StylizeParams:
        engine = self.config.engine
        assert request.preset is not None
        preset = engine.presets[request.preset]
        seed = request.seed if request.seed is not None else random.randrange(2**31)
        try:
            return StylizeParams(
                preset=request.preset, size=min(preset.size, engine.max_size), iterations=preset.steps,
                scales=preset.scales, strength=request.strength, preserve_colors=request.preserve_colors, seed=seed,
                backbone=engine.backbone, weights=engine.weights, precision=engine.precision,
            )
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
        elif job.status.value == "finished":
            note = f"Job `{job_id}` had already finished, so it was not cancelled: its result is on its way."
        else:
            note = f"Job `{job_id}` had already ended."
        try:
            await interaction.edit_original_response(content=note)
        except discord.HTTPException:
            pass
