"""What happens to a job in line, as one typed stream of events.

The scheduler reports each event to the ledger, which records it and passes it on to the
messenger: all three speak :class:`JobEvents`, and each report is a plain method call, so a
misspelt event is a type error, not a runtime surprise. Called on the event loop; no
implementation may block. Each event does nothing by default, so a class that derives from
:class:`JobEvents` handles only the events it needs.
"""

from __future__ import annotations

from typing import Protocol

from nst_core.pool.base import Failed, Finished, Progress, Retrying

from bot.core.job import Job

__all__ = ["JobEvents", "Fanout"]


class JobEvents(Protocol):
    def job_waiting(self, job: Job, position: int, eta_s: float | None, note: str | None) -> None:
        """In line at ``position`` (1: next), starting in about ``eta_s`` seconds."""
        return None

    def job_started(self, job: Job, worker: str | None) -> None:
        """On a worker (again, after a crash of the previous one)."""
        return None

    def job_progress(self, job: Job, event: Progress) -> None:
        return None

    def cancel_requested(self, job: Job, by_user: int) -> None:
        """``by_user`` asked to cancel it; it ends with ``job_failed`` (kind ``cancelled``) if in time."""
        return None

    def job_retrying(self, job: Job, event: Retrying) -> None:
        return None

    def job_finished(self, job: Job, event: Finished) -> None:
        return None

    def job_failed(self, job: Job, event: Failed) -> None:
        return None

    def job_paused(self, job: Job, was_running: bool) -> None:
        """Out of line for a restart of the bot; the next start runs it again."""
        return None


class Fanout(JobEvents):
    """Passes each event on to several listeners, in order (the messenger first, then those
    that only watch, such as style events keeping an entry's picture)."""

    def __init__(self, *listeners: JobEvents) -> None:
        self.listeners = listeners

    def job_waiting(self, job: Job, position: int, eta_s: float | None, note: str | None) -> None:
        for listener in self.listeners:
            listener.job_waiting(job, position, eta_s, note)

    def job_started(self, job: Job, worker: str | None) -> None:
        for listener in self.listeners:
            listener.job_started(job, worker)

    def job_progress(self, job: Job, event: Progress) -> None:
        for listener in self.listeners:
            listener.job_progress(job, event)

    def cancel_requested(self, job: Job, by_user: int) -> None:
        for listener in self.listeners:
            listener.cancel_requested(job, by_user)

    def job_retrying(self, job: Job, event: Retrying) -> None:
        for listener in self.listeners:
            listener.job_retrying(job, event)

    def job_finished(self, job: Job, event: Finished) -> None:
        for listener in self.listeners:
            listener.job_finished(job, event)

    def job_failed(self, job: Job, event: Failed) -> None:
        for listener in self.listeners:
            listener.job_failed(job, event)

    def job_paused(self, job: Job, was_running: bool) -> None:
        for listener in self.listeners:
            listener.job_paused(job, was_running)
