"""Cancelling a job, from its Cancel button or ``/stylebot cancel``: by its requester, or by a
member with Manage Messages in the job's own channel of its own server. Another server's job
answers exactly like an unknown one."""

from __future__ import annotations

import logging

import discord

from bot.core.job import JobState
from bot.service.scheduler import Scheduler
from bot.ui.access import may_cancel

__all__ = ["cancel_job"]

log = logging.getLogger(__name__)


async def cancel_job(scheduler: Scheduler, interaction: discord.Interaction, job_id: str) -> None:
    """Cancel ``job_id`` for whoever pressed Cancel or ran ``/stylebot cancel``, if they may."""
    job = scheduler.get(job_id)
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
    cancelled = await scheduler.cancel(job_id, interaction.user.id)
    if cancelled:
        note = f"Job `{job_id}` was cancelled."
    elif job.failure is None and job.state is not JobState.CANCELLED:
        note = f"Job `{job_id}` had already finished, so it was not cancelled: its result is on its way."
    else:
        note = f"Job `{job_id}` had already ended."
    try:
        await interaction.edit_original_response(content=note)
    except discord.HTTPException:
        pass  # only the private note is lost; the job's status message shows the outcome
