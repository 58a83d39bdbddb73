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

__all__ = ["JobEvents"]


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
