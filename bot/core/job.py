"""A job's record and its one lifecycle.

One vocabulary covers a job's whole life, work and messages alike, and is what the job store
keeps::

    waiting ─▶ running ─▶ done ─▶ delivering ─▶ delivered
       │  ◀──────┘ (restart)          └───────▶ undeliverable   (every route refused for good)
       ├─────────┴──▶ failed ─▶ notifying ─▶ notified
       │                              └───────▶ unnotified
       └─────────┴──▶ cancelled

(``failed`` and ``notifying`` owe the requester a notice; ``done`` and ``delivering`` a
result; ``delivering``/``notifying`` record the route being tried, so a restart can look
for a message that may have got through.)

Only :class:`bot.service.ledger.Ledger` moves a job along this table; a move the table does
not allow raises :class:`IllegalTransition`: a bug, which the tests catch, not a silent
overwrite. No Discord, no I/O.
"""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass, field

from nst_core.params import StylizeParams
from nst_core.pool.base import JobSpec

__all__ = ["Job", "JobState", "TRANSITIONS", "OPEN_STATES", "ENDED_STATES", "IllegalTransition", "new_job_id",
           "ROUTES"]


class JobState(str, enum.Enum):
    WAITING = "waiting"  # in line
    RUNNING = "running"  # on a worker
    DONE = "done"  # the result is saved; it has not been sent yet
    DELIVERING = "delivering"  # the result is being sent (``route``); it may have got through
    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"  # every route refused for good
    FAILED = "failed"  # it will not finish; its notice has not been sent yet
    NOTIFYING = "notifying"  # the notice is being sent (``route``)
    NOTIFIED = "notified"
    UNNOTIFIED = "unnotified"  # no route could tell the requester
    CANCELLED = "cancelled"

    @property
    def in_line(self) -> bool:
        """Waiting or running: the scheduler's part of the life."""
        return self in (JobState.WAITING, JobState.RUNNING)

    @property
    def ended(self) -> bool:
        """Nothing is left to do for it."""
        return self in ENDED_STATES


_S = JobState
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    _S.WAITING: frozenset({_S.RUNNING, _S.FAILED, _S.CANCELLED}),
    # running -> running: started again on a worker after a crash; -> waiting: put back in line at a restart
    _S.RUNNING: frozenset({_S.RUNNING, _S.WAITING, _S.DONE, _S.FAILED, _S.CANCELLED}),
    _S.DONE: frozenset({_S.DELIVERING, _S.DELIVERED, _S.FAILED}),  # delivered: found already posted
    _S.DELIVERING: frozenset({_S.DELIVERING, _S.DELIVERED, _S.UNDELIVERABLE, _S.FAILED}),
    _S.FAILED: frozenset({_S.NOTIFYING, _S.NOTIFIED, _S.UNNOTIFIED}),
    _S.NOTIFYING: frozenset({_S.NOTIFYING, _S.NOTIFIED, _S.UNNOTIFIED}),
    _S.DELIVERED: frozenset(), _S.UNDELIVERABLE: frozenset(), _S.NOTIFIED: frozenset(),
    _S.UNNOTIFIED: frozenset(), _S.CANCELLED: frozenset(),
}
ENDED_STATES = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
OPEN_STATES = tuple(s for s in JobState if s not in ENDED_STATES)


# The ways a result or notice reaches its requester, in the order they are tried: the reply to
# the interaction (while its token lasts), a message in the job's channel, a direct message.
ROUTES = ("interaction", "channel", "dm")


class IllegalTransition(RuntimeError):
    """A move the lifecycle does not allow: a bug in whoever reported it."""


def new_job_id() -> str:
    """Short enough to type in ``/stylebot cancel``, random enough not to guess."""
    return secrets.token_hex(5)


@dataclass(eq=False)
class Job:
    """One /stylize request. ``state`` and the fields after it are written by the :class:`Ledger` only.

    ``token_created_at`` is when Discord created the interaction (epoch seconds): its token,
    needed to edit the reply, expires a fixed time after that.
    """

    job_id: str
    user_id: int
    channel_id: int
    guild_id: int | None
    application_id: int
    interaction_token: str
    token_created_at: float
    upload_limit: int  # bytes a reply to the interaction may carry (interaction.filesize_limit)
    params: StylizeParams
    content: bytes
    style: bytes
    style_label: str  # the style's file name or library name, for messages
    style2: bytes = b""  # a second style, blended in (``params.style_blend``); empty: one style
    style2_label: str | None = None
    parent_id: str | None = None  # the job whose result's button made this one (a remix)
    remix: str | None = None  # which button: again, more, less, colours, sharper
    compare: bool = False  # the result also shows a "before | after" picture
    created_at: float = field(default_factory=time.time)
    state: JobState = JobState.WAITING
    status_message_id: int | None = None
    started_at: float | None = None  # start of the current attempt
    finished_at: float | None = None
    worker: str | None = None
    progress: tuple[int, int] | None = None  # (step, total) of the latest progress event
    cancelled_by: int | None = None
    failure: str | None = None
    failure_kind: str | None = None
    route: str | None = None  # delivering/notifying: the route being tried; delivered/notified: the one used
    message_id: int | None = None  # the message that delivered the result (or the notice)
    seq: int | None = None  # acceptance order, set by the store
    position: int | None = None  # last announced place in line
    attempts: int = 0  # starts on a worker (a retry after a crash, or a restart, adds one)
    restarts: int = 0  # times a restart of the bot put it back in line
    kept_until: float | None = None  # delivered: its pictures stay for remixes until then

    @property
    def preset(self) -> str:
        return self.params.preset

    @property
    def blend(self) -> float:
        """The second style's share (0 with one style)."""
        weights = self.params.style_blend
        if not self.style2_label or not weights or len(weights) != 2:
            return 0.0
        return weights[1] / sum(weights)

    def spec(self, *, max_pixels: int, timeout_s: float | None = None) -> JobSpec:
        styles = (self.style, self.style2) if self.style2 else (self.style,)
        return JobSpec(content=self.content, style=styles, params=self.params.to_dict(), job_id=self.job_id,
                       max_pixels=max_pixels, timeout_s=timeout_s)
