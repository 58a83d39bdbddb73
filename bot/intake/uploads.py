"""Taking pictures from strangers: metadata checks, size-limited downloads, one bounded decode.

Every upload is hostile until proven otherwise, and one stranger must not be able to slow
the bot down for everyone else. So:

* :func:`check_attachment` refuses what Discord's metadata already shows is wrong, before
  anything is downloaded;
* :meth:`Admission.download` streams an attachment and stops at the byte limit (a lying
  ``size`` costs at most the limit);
* :meth:`Admission.prepare` decodes the picture once, on the checker's own threads
  (:class:`bot.service.checkpool.CheckPool`: fair between servers by the CPU time their checks used,
  each server within its share), and returns the PNG the bot keeps instead: the worker,
  before | after and the remixes read that, never the stranger's file again. Decoding
  itself is bounded by :mod:`nst_core.images` (pixel limit read from the header, the decode
  cost of a JPEG's scans, lean mode conversion).
* A member's requests are checked one at a time, in the order they were sent (each waits
  its turn rather than being refused; how many a member may have waiting is the line's
  ``per_user_waiting``, counted by the scheduler). Requests being checked take places:
  ``waiting_max`` in all, and a server past a quarter of them cannot take the last quarter.
  A request's checks give up ``check_timeout_s`` after its turn came; a check that outlives
  that keeps its place until it really ends, so stuck work turns new requests away instead
  of piling up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, AsyncIterator
from urllib.parse import urlsplit

import aiohttp

from nst_core.errors import ImageError
from nst_core.images import decode_to_png, image_info

from bot.render import words
from bot.service.checkpool import CheckPool, Ticket
from bot.core.refusals import ChecksBusy, NotAccepting, UploadProblem

if TYPE_CHECKING:
    from bot.config import LimitsConfig

__all__ = ["UploadChecker", "Admission", "check_attachment", "prepare_image",
           "ACCEPTED_TYPES", "IMAGE_SUFFIXES", "discord_media_url"]

log = logging.getLogger(__name__)

ACCEPTED_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")  # file names of those types
_ACCEPTED_TEXT = "PNG, JPEG, WebP, GIF or BMP"
_CHUNK = 64 * 1024


_DISCORD_MEDIA_HOSTS = ("cdn.discordapp.com", "media.discordapp.net")
_DISCORD_PROXY_SUFFIX = ".discordapp.net"  # images-ext-1.discordapp.net and the like


def discord_media_url(url: str, api_base: str = "") -> bool:
    """Whether ``url`` is on Discord's own media hosts (https), or on the host of a configured
    ``api_base`` (a stand-in Discord, as in the tests)."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if api_base:
            base = urlsplit(api_base)
            if (parts.scheme, host, parts.port) == (base.scheme, (base.hostname or "").lower(), base.port):
                return True
    except ValueError:
        return False
    return parts.scheme == "https" and (host in _DISCORD_MEDIA_HOSTS or host.endswith(_DISCORD_PROXY_SUFFIX))



def _mb(n: int) -> str:
    return words.format_bytes(n)


def check_attachment(label: str, filename: str, content_type: str | None, size: int, width: int | None,
                     height: int | None, *, max_bytes: int, max_pixels: int, max_aspect: float = 10.0) -> None:
    """Refuse what Discord's metadata already shows is wrong, before downloading anything."""
    name = f"`{filename}`"
    base_type = (content_type or "").split(";")[0].strip().lower()
    if base_type and base_type not in ACCEPTED_TYPES:
        raise UploadProblem(f"The {label} {name} is a {base_type} file. Please attach a {_ACCEPTED_TEXT} image.")
    if size > max_bytes:
        raise UploadProblem(_too_big(label, name, size, max_bytes))
    if width and height:
        _check_shape(label, name, width, height, max_pixels, max_aspect)


def _too_big(label: str, name: str, size: int | None, max_bytes: int) -> str:
    what = f"is {_mb(size)}" if size is not None else "is larger than that"
    return (f"The {label} {name} {what}; the limit is {_mb(max_bytes)}. "
            "Please attach a smaller image (resize it or save it as JPEG).")


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


def prepare_image(label: str, filename: str, data: bytes, *, max_bytes: int, max_pixels: int,
                  max_aspect: float = 10.0, side: int) -> bytes:
    """Refuse bytes that are too big or not a decodable image; else the picture as the bot
    keeps it (:func:`nst_core.images.decode_to_png`, longer side at most ``side``). Decodes:
    run it off the loop."""
    name = f"`{filename}`"
    if len(data) > max_bytes:
        raise UploadProblem(_too_big(label, name, len(data), max_bytes))
    try:
        _, width, height = image_info(data)
    except ImageError as exc:
        raise UploadProblem(f"The {label} {name} cannot be used: {exc}") from None
    _check_shape(label, name, width, height, max_pixels, max_aspect)
    try:
        return decode_to_png(data, max_pixels=max_pixels, longer_side=side)
    except ImageError as exc:
        raise UploadProblem(f"The {label} {name} cannot be used: {exc}") from None


# --------------------------------------------------------------------------- the bounded checker


class UploadChecker:
    """Downloads and decodes uploads with bounded cost; one per bot, closed at shutdown."""

    def __init__(self, *, workers: int, waiting_max: int, timeout_s: float, download_timeout_s: float = 60.0,
                 server_share_s: float = 60.0, share_window_s: float = 300.0, per_member: int = 2) -> None:
        self.waiting_max = waiting_max
        self.per_member = per_member  # a member's requests being checked or waiting their turn
        self.timeout_s = timeout_s
        self.download_timeout_s = download_timeout_s
        self.pool = CheckPool(workers, share_s=server_share_s, window_s=share_window_s)
        self._session: aiohttp.ClientSession | None = None
        self._admitted = 0  # requests between admit() and the end of their last check
        self._servers: dict[int | None, int] = {}  # the same, per server
        self._turns: dict[int, asyncio.Lock] = {}  # per member: their requests take turns, in order
        self._queued: dict[int, int] = {}  # per member: requests holding or waiting for that turn

    @classmethod
    def from_limits(cls, limits: "LimitsConfig") -> "UploadChecker":
        return cls(workers=limits.checks_at_once, waiting_max=limits.checks_waiting, timeout_s=limits.check_timeout_s,
                   server_share_s=limits.check_share_s, share_window_s=limits.check_window_s,
                   per_member=limits.per_user_waiting)

    @property
    def admitted(self) -> int:
        return self._admitted

    async def __aenter__(self) -> "UploadChecker":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.pool.close()

    @property
    def reserve(self) -> int:
        """Places a server holding this many already cannot take: they stay for other servers."""
        return max(1, self.waiting_max // 4)

    @contextlib.asynccontextmanager
    async def admit(self, user_id: int, guild_id: int | None = None) -> AsyncIterator["Admission"]:
        """Hold one of the checker's places for a request's downloads and checks, once the
        member's earlier requests are through (they go in the order sent). Raises
        :class:`ChecksBusy` when their server holds its share of the places, or when
        ``waiting_max`` requests are being checked."""
        queued = self._queued.get(user_id, 0)
        if queued >= self.per_member:  # what the line's per_user_waiting allows (jobs are also held there)
            raise ChecksBusy.member(queued)
        free = self.waiting_max - self._admitted
        if free <= 0 or (self._servers.get(guild_id, 0) >= self.reserve and free <= self.reserve):
            raise ChecksBusy.everyone()
        self._count(guild_id, +1)
        admission: Admission | None = None
        try:
            async with self._turn(user_id):
                admission = Admission(self, user_id, guild_id, time.monotonic() + self.timeout_s)
                try:
                    yield admission
                finally:
                    admission.closed = True
        finally:
            if admission is None:
                self._count(guild_id, -1)  # never got its turn (cancelled while waiting)
            else:
                admission.release_when_idle()

    @contextlib.asynccontextmanager
    async def _turn(self, user_id: int) -> AsyncIterator[None]:
        lock = self._turns.setdefault(user_id, asyncio.Lock())  # asyncio.Lock wakes waiters in order
        self._queued[user_id] = self._queued.get(user_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._queued[user_id] -= 1
            if not self._queued[user_id]:
                del self._queued[user_id], self._turns[user_id]

    def _count(self, guild_id: int | None, step: int) -> None:
        self._admitted += step
        left = self._servers.get(guild_id, 0) + step
        if left > 0:
            self._servers[guild_id] = left
        else:
            self._servers.pop(guild_id, None)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.download_timeout_s))
        return self._session


class Admission:
    """One admitted request: its deadline and its checks still running on the pool."""

    def __init__(self, checker: UploadChecker, user_id: int, guild_id: int | None, deadline: float) -> None:
        self.checker = checker
        self.user_id = user_id
        self.guild_id = guild_id
        self.deadline = deadline
        self.closed = False
        self._running: set[Ticket[Any]] = set()
        self._released = False

    def _left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def release_when_idle(self) -> None:
        """Give the place back once the request is done and no check of it still runs."""
        if self.closed and not self._running and not self._released:
            self._released = True
            self.checker._count(self.guild_id, -1)

    async def download(self, url: str, label: str, filename: str, max_bytes: int) -> bytes:
        """The attachment's bytes, read as a stream and refused past ``max_bytes``."""
        name = f"`{filename}`"
        data = bytearray()

        async def fetch() -> None:
            # No redirects: the host was checked, where a redirect points was not.
            async with self.checker._http().get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)
                async for chunk in response.content.iter_chunked(_CHUNK):
                    data.extend(chunk)
                    if len(data) > max_bytes:
                        raise UploadProblem(_too_big(label, name, None, max_bytes))

        try:
            await asyncio.wait_for(fetch(), min(self.checker.download_timeout_s, self._left()))
        except UploadProblem:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            # The type and status only: the attachment's signed URL must not reach the logs.
            log.warning("download failed", extra={"label": label, "error": type(exc).__name__,
                                                  "status": getattr(exc, "status", None)})
            raise UploadProblem(f"The {label} {name} could not be downloaded from Discord. "
                                "Please try again.") from None
        return bytes(data)

    async def prepare(self, label: str, filename: str, data: bytes, **limits: float) -> bytes:
        """:func:`prepare_image` on the checker's threads, in this server's share of them and
        within the request's time: the picture the bot keeps, as PNG."""
        pool = self.checker.pool
        wait = pool.back_under_share_in(self.guild_id)
        if wait > self._left():  # its server used its share: say so now rather than hold a place meanwhile
            raise ChecksBusy.server_share_used(wait)
        try:
            ticket = pool.submit(self.guild_id, lambda: prepare_image(label, filename, data, **limits))  # type: ignore[arg-type]
        except RuntimeError:  # the pool was shut down: the bot is stopping
            raise NotAccepting() from None
        self._running.add(ticket)

        def done(_: asyncio.Future) -> None:
            self._running.discard(ticket)
            self.release_when_idle()
            if ticket.started:  # what each check costs, per server: the share is counted in this
                log.info("upload checked", extra={"label": label, "guild_id": self.guild_id,
                                                  "cpu_s": round(ticket.cpu_s, 4)})
        ticket.result.add_done_callback(done)
        try:
            return await asyncio.wait_for(asyncio.shield(ticket.result), self._left())
        except asyncio.TimeoutError:
            started = ticket.started
            log.warning("an upload check ran out of time", extra={"label": label, "user_id": self.user_id,
                                                                  "guild_id": self.guild_id, "started": started})
            if not started:  # it waited behind other checks: not the picture's fault
                pool.withdraw(ticket)
                if pool.over_share(self.guild_id):
                    raise ChecksBusy.server_share_used(pool.back_under_share_in(self.guild_id)) from None
                raise ChecksBusy.everyone() from None
            raise UploadProblem(f"Checking the {label} `{filename}` took too long. Please send a smaller or "
                                "simpler picture (a normal JPEG or PNG).") from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if ticket.result.cancelled() and not (current is not None and current.cancelling()):
                raise NotAccepting() from None  # the checker closed under it: the bot is stopping
            pool.withdraw(ticket)
            raise
