"""The slash commands: ``/stylize``, ``/stylebot`` (status, styles, cancel; ``event start`` from
:mod:`bot.ui.event_start`) and, from :mod:`bot.ui.admin`, ``/stylebot-settings``.

``/stylize`` acknowledges at once (an ephemeral "thinking" reply, so every refusal can be
private) and hands the request to :class:`~bot.ui.job_start.JobStarter`, with the way to
gather its pictures: the content and one or two styles, attached, from the library, or the
member's saved style. ``/stylebot status`` shows the line and the caller's server's part of
it; ``/stylebot cancel`` stops a job by id (:func:`bot.ui.cancel.cancel_job`).
"""

from __future__ import annotations

import asyncio
import io
from typing import Callable

import discord
from discord import app_commands

from bot.config import Config
from bot.core.refusals import ChannelNotAllowed, UploadProblem
from bot.core.shards import ShardStatus, shard_of
from bot.intake.uploads import Admission
from bot.render import words
from bot.service.scheduler import Scheduler
from bot.service.server_settings import ServerSettings
from bot.ui.access import channel_ids, may_cancel, servers_only
from bot.ui.admin import SettingsGroup
from bot.ui.cancel import cancel_job
from bot.ui.errors import answer_error
from bot.ui.event_start import EventStarter
from bot.ui.gather import JobInputs, PictureGatherer
from bot.ui.job_start import JobRequest, JobStarter

__all__ = ["StyleCommands"]


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
        shards = self.style_commands.shards()
        if shards:
            count = interaction.client.shard_count or 1
            text += "\n" + words.gateway_text(shards, count, shard_of(interaction.guild_id or 0, count))
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="styles", description="Show the style library: numbered, labelled thumbnails")
    async def styles(self, interaction: discord.Interaction) -> None:
        library = self.style_commands.gatherer.library
        entries = library.entries()
        try:  # it posts publicly, so only where the server lets the bot post
            self.style_commands.settings.check_channel(interaction.guild_id, channel_ids(interaction))
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
        await cancel_job(self.style_commands.scheduler, interaction, job_id.strip().strip("`").lower())

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
    """``/stylize`` and the command groups; registers them on a command tree."""

    def __init__(self, config: Config, *, scheduler: Scheduler, starter: JobStarter, gatherer: PictureGatherer,
                 settings: ServerSettings, shards: Callable[[], list[ShardStatus]] = list,
                 events: EventStarter | None = None) -> None:
        self.config = config
        self.shards = shards  # this process's gateway shards, for /stylebot status
        self.events = events  # gives /stylebot its "event" group
        self.scheduler = scheduler
        self.starter = starter
        self.gatherer = gatherer
        self.settings = settings

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
            await self.starter.start(interaction, request, lambda admission: self._gather(
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
            return [app_commands.Choice(name=entry.label, value=entry.name) for entry in self.gatherer.library.search(current)]

        stylize.autocomplete("library_style")(library_choices)
        stylize.autocomplete("library_style2")(library_choices)

        @stylize.error
        async def stylize_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
            await answer_error(interaction, error)

        tree.add_command(servers_only(stylize))
        group = StylebotGroup(self)
        if self.events is not None:
            group.add_command(self.events.group())
        tree.add_command(servers_only(group))
        tree.add_command(servers_only(SettingsGroup(self.settings, self.config.limits,
                                                    lambda: self.scheduler.per_guild_waiting)))

    async def _gather(self, interaction: discord.Interaction, admission: Admission, request: JobRequest,
                      content: discord.Attachment, style: tuple[discord.Attachment | None, str | None],
                      style2: tuple[discord.Attachment | None, str | None]) -> JobInputs:
        """Download and check ``/stylize``'s pictures: the content, the style (attached, from the
        library, or the member's saved style) and an optional second style."""
        gatherer = self.gatherer
        if request.blend is not None and not any(style2):
            raise UploadProblem("`blend` mixes in a second style: give one with `style2` or `library_style2`.")
        for label, attachment in (("content image", content), ("style image", style[0]),
                                  ("second style image", style2[0])):
            if attachment is not None:
                gatherer.check_attachment(label, attachment)
        saved = None
        if not any(style):
            saved = await gatherer.saved_style(interaction.guild_id, interaction.user.id)
            if saved is None:
                raise gatherer.no_style()
            request.notes.append(f"🎨 Using your saved style `{words.clip(saved[0], 80)}`.")
        try:  # a task group: when one download or check fails, the others stop too
            async with asyncio.TaskGroup() as group:
                content_task = group.create_task(gatherer.attachment(admission, content, "content image"))
                style_task = group.create_task(gatherer.style(admission, *style, "style image", saved))
                style2_task = group.create_task(gatherer.style(admission, *style2, "second style image", None))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        (style_png, style_label), (style2_png, style2_label) = style_task.result(), style2_task.result()
        return JobInputs(content_task.result(), style_png, style_label, style2_png, style2_label or None)
