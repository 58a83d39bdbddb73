"""The slash commands and the Cancel button: thin Discord glue around the scheduler.

``/stylize`` acknowledges at once (an ephemeral "thinking" reply, so every refusal can be
private), downloads both images straight away (attachment links expire), validates them
off the event loop and queues a :class:`~bot.scheduler.Job`. A public status message with
a Cancel button then follows the job; :class:`~bot.delivery.Messenger` keeps it current.

``/stylebot status`` shows the line; ``/stylebot cancel`` stops a job by id (its requester,
or anyone with Manage Messages).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from nst_core.errors import ImageError, ParamsError
from nst_core.images import decode_image, image_info
from nst_core.params import StylizeParams

from . import render
from .config import Config
from .scheduler import Job, LineFull, NotAccepting, Refused, Scheduler, UserLimitReached, new_job_id
from .store import SpoolFull, StoreError

if TYPE_CHECKING:
    from .delivery import Messenger
    from .health import Metrics
    from .store import JobStore

__all__ = ["StyleCommands", "CancelButton", "StyleLibrary", "UploadProblem", "StorageUnavailable",
           "check_attachment", "check_image", "refusal_reason", "ACCEPTED_TYPES"]

log = logging.getLogger(__name__)

ACCEPTED_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp")
_ACCEPTED_TEXT = "PNG, JPEG, WebP, GIF or BMP"
_LIBRARY_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
_DOWNLOAD_TIMEOUT_S = 60.0
MAX_STRENGTH = 5.0


class UploadProblem(Exception):
    """Something the requester has to fix; ``str()`` says what, politely and exactly."""


class StorageUnavailable(Refused):
    """The job could not be recorded (the spool is full, or the disk cannot be written)."""


def refusal_reason(exc: Exception) -> str:
    """The ``reason`` label a refusal is counted under in the metrics."""
    if isinstance(exc, UserLimitReached):
        return "user_limit"
    if isinstance(exc, LineFull):
        return "line_full"
    if isinstance(exc, NotAccepting):
        return "not_accepting"
    if isinstance(exc, StorageUnavailable):
        return "storage"
    return "invalid_upload"


# --------------------------------------------------------------------------- validation


def _mb(n: int) -> str:
    return render.format_bytes(n)


def check_attachment(label: str, filename: str, content_type: str | None, size: int, width: int | None,
                     height: int | None, *, max_bytes: int, max_pixels: int, max_aspect: float = 10.0) -> None:
    """Refuse what Discord's metadata already shows is wrong, before downloading anything."""
    name = f"`{filename}`"
    base_type = (content_type or "").split(";")[0].strip().lower()
    if base_type and base_type not in ACCEPTED_TYPES:
        raise UploadProblem(f"The {label} {name} is a {base_type} file. Please attach a {_ACCEPTED_TEXT} image.")
    if size > max_bytes:
        raise UploadProblem(f"The {label} {name} is {_mb(size)}; the limit is {_mb(max_bytes)}. "
                            "Please attach a smaller image (resize it or save it as JPEG).")
    if width and height:
        _check_shape(label, name, width, height, max_pixels, max_aspect)


def _check_shape(label: str, name: str, width: int, height: int, max_pixels: int, max_aspect: float) -> None:
    # The shape first: "resize it to 6324×6" would be no help for a 20000×20 strip.
    if max(width, height) > max_aspect * min(width, height):
        raise UploadProblem(
            f"The {label} {name} is {width}×{height} pixels, too long and thin to stylise (the sides may differ "
            f"by a factor of {max_aspect:g} at most). Please crop it closer to a square and try again.")
    if width * height > max_pixels:
        raise UploadProblem(_too_many_pixels(label, name, width, height, max_pixels))


def _too_many_pixels(label: str, name: str, width: int, height: int, max_pixels: int) -> str:
    scale = (max_pixels / (width * height)) ** 0.5
    return (f"The {label} {name} is {width}×{height} pixels ({_megapixels(width * height)} megapixels); "
            f"the limit is {_megapixels(max_pixels)} megapixels. Please resize it to at most about "
            f"{int(width * scale)}×{int(height * scale)} and try again.")


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f}" if pixels >= 100_000 else f"{pixels / 1e6:.2g}"


def check_image(label: str, filename: str, data: bytes, *, max_bytes: int, max_pixels: int,
                max_aspect: float = 10.0) -> None:
    """Refuse bytes that are too big or not a decodable image (decodes: run it in a thread)."""
    name = f"`{filename}`"
    if len(data) > max_bytes:
        raise UploadProblem(f"The {label} {name} is {_mb(len(data))}; the limit is {_mb(max_bytes)}. "
                            "Please attach a smaller image.")
    try:
        _, width, height = image_info(data)
    except ImageError as exc:
        raise UploadProblem(f"The {label} {name} cannot be used: {exc}") from None
    _check_shape(label, name, width, height, max_pixels, max_aspect)
    try:
        decode_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        raise UploadProblem(f"The {label} {name} cannot be used: {exc}") from None


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


def _can_cancel(interaction: discord.Interaction, job: Job) -> bool:
    if interaction.user.id == job.user_id:
        return True
    permissions = interaction.permissions
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
    preset: str
    strength: float
    preserve_colors: bool
    seed: int | None


class StyleCommands:
    """Registers ``/stylize`` and ``/stylebot`` on a command tree and answers them."""

    def __init__(self, config: Config, scheduler: Scheduler, messenger: "Messenger", library: StyleLibrary, *,
                 store: "JobStore | None" = None, metrics: "Metrics | None" = None) -> None:
        self.config = config
        self.scheduler = scheduler
        self.messenger = messenger
        self.library = library
        self.store = store
        self.metrics = metrics

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
            request = _Request(preset.value if preset else self.config.engine.default_preset, float(strength),
                               bool(preserve_colors), seed)
            await self.stylize(interaction, content, style, library_style, request)

        @stylize.autocomplete("library_style")
        async def library_style_autocomplete(interaction: discord.Interaction,
                                             current: str) -> list[app_commands.Choice[str]]:
            return [app_commands.Choice(name=n, value=n) for n in self.library.search(current)]

        group = app_commands.Group(name="stylebot", description="Style bot status and moderation", guild_only=True)

        @group.command(name="status", description="Show the waiting line, running jobs, workers and recent job times")
        async def status(interaction: discord.Interaction) -> None:
            await interaction.response.send_message(render.line_status_text(self.scheduler.status()),
                                                    ephemeral=True)

        @group.command(name="cancel", description="Cancel a job by id: your own, or any job with Manage Messages")
        @app_commands.describe(job_id="The job id shown in the job's status message")
        async def cancel(interaction: discord.Interaction, job_id: str) -> None:
            await self.cancel_job(interaction, job_id.strip().strip("`").lower())

        @cancel.autocomplete("job_id")
        async def job_id_autocomplete(interaction: discord.Interaction,
                                      current: str) -> list[app_commands.Choice[str]]:
            moderator = bool(interaction.permissions and interaction.permissions.manage_messages)
            jobs = [j for j in self.scheduler.jobs()
                    if (moderator or j.user_id == interaction.user.id) and j.job_id.startswith(current.lower())]
            return [app_commands.Choice(name=f"{j.job_id} ({j.status.value}, {j.preset})", value=j.job_id)
                    for j in jobs[:25]]

        tree.add_command(stylize)
        tree.add_command(group)

    # -- /stylize

    async def stylize(self, interaction: discord.Interaction, content: discord.Attachment,
                      style: discord.Attachment | None, library_style: str | None, request: _Request) -> None:
        # Acknowledge first: Discord drops interactions not answered within 3 seconds.
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            job = await self._make_job(interaction, content, style, library_style, request)
            await self._accept(job)
        except (UploadProblem, Refused) as exc:
            log.info("stylize refused", extra={"user_id": interaction.user.id, "reason": str(exc),
                                               "why": refusal_reason(exc)})
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

    async def _accept(self, job: Job) -> None:
        """Record ``job`` (with its pictures) in the store, then put it in line; raises Refused."""
        if self.store is not None:
            try:
                await self.store.accept(job)
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

    async def _make_job(self, interaction: discord.Interaction, content: discord.Attachment,
                        style: discord.Attachment | None, library_style: str | None, request: _Request) -> Job:
        if not self.scheduler.accepting:
            self.scheduler.check(interaction.user.id)  # raises NotAccepting with its own wording
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
        self.scheduler.check(interaction.user.id)  # refuse before downloading anything

        async def download(attachment: discord.Attachment, label: str) -> bytes:
            try:
                return await asyncio.wait_for(attachment.read(), _DOWNLOAD_TIMEOUT_S)
            except (discord.HTTPException, asyncio.TimeoutError, OSError) as exc:
                log.warning("download failed", extra={"label": label, "error": repr(exc)})
                raise UploadProblem(f"The {label} `{attachment.filename}` could not be downloaded from Discord. "
                                    "Please try again.") from None

        if style is not None:
            content_bytes, style_bytes = await asyncio.gather(download(content, "content image"),
                                                              download(style, "style image"))
            style_label = style.filename
        else:
            assert library_style is not None
            content_bytes = await download(content, "content image")
            style_bytes = await self.library.read(library_style)
            style_label = library_style
        await asyncio.to_thread(check_image, "content image", content.filename, content_bytes, **checks)
        if style is None:  # the operator's own files: no upload size limit, still a readable image
            checks["max_bytes"] = max(limits.max_upload_bytes, len(style_bytes))
        await asyncio.to_thread(check_image, "style image", style_label, style_bytes, **checks)
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
        if job is None:
            await interaction.response.send_message(
                f"Job `{job_id}` is not waiting or running any more, so there is nothing to cancel.", ephemeral=True)
            return
        if not _can_cancel(interaction, job):
            await interaction.response.send_message(
                "Only the requester (or a moderator with Manage Messages) can cancel this job.", ephemeral=True)
            return
        # Answer first: stopping a running job can take a moment, the interaction cannot wait.
        await interaction.response.send_message(f"Cancelling job `{job_id}`…", ephemeral=True)
        log.info("cancel requested", extra={"job_id": job_id, "by": interaction.user.id})
        cancelled = await self.scheduler.cancel(job_id, interaction.user.id)
        note = f"Job `{job_id}` was cancelled." if cancelled else f"Job `{job_id}` had already ended."
        try:
            await interaction.edit_original_response(content=note)
        except discord.HTTPException:
            pass

