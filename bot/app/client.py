"""The Discord client: it makes and joins the bot's parts, starts them, follows the workers
and shuts down in order.

Startup: open the job store and recover what it holds (:mod:`bot.app.recovery`: jobs back
in line, undelivered results delivered), log in, sync commands (:mod:`bot.app.sync`),
connect to the gateway, and start the worker pool in the background (jobs wait in line
until it is warm). No privileged intents are used.

The gateway is sharded (``AutoShardedClient``): as many shards as Discord recommends, or
``[discord] shard_count`` with this process's ``shard_ids``. IDENTIFYs are spaced by
Discord's ``max_concurrency`` (:class:`~bot.core.shards.IdentifyGate`), and each shard's
state is followed for ``/healthz``, ``/metrics`` and ``/stylebot status``. Caches are kept
small for a bot in many servers: guilds, their channels and roles (the GUILDS intent: what a
permission check needs), no members, no chunking at start-up, no message cache. Every REST
call takes a slot in the call budget (:mod:`bot.delivery.discord_calls`).

Shutdown (SIGTERM or SIGINT): stop taking jobs, let running jobs finish (``[shutdown]
running_jobs = "finish"``, within ``timeout_s``) or stop them (``"cancel"``), deliver what is
pending, then close. Jobs still waiting, and running jobs that were stopped, are paused, not
failed: their requesters are told, the job store keeps them, and the next start runs them
(:mod:`bot.app.recovery`), stopped ones first.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
from typing import Any, Awaitable, Callable

import discord
from discord import app_commands

from nst_core.pool.base import WorkerPool, WorkerStartError

from bot.app.recovery import recover
from bot.app.sync import sync_commands
from bot.config import Config
from bot.core.events import Fanout
from bot.core.shards import DOWN_TOO_LONG_S, IdentifyGate, ShardStatus, ShardWatch
from bot.delivery.discord_calls import CallTracer
from bot.delivery.messenger import Messenger
from bot.health import HealthServer, Metrics
from bot.intake.library import StyleLibrary
from bot.intake.uploads import UploadChecker
from bot.render.event_card import EventButton, VoteButton
from bot.render.views import ButtonClient, CancelButton, ResultButton
from bot.service.call_budget import CallBudget, Priority, calls_as
from bot.service.events import EventBook
from bot.service.ledger import Ledger
from bot.service.scheduler import Scheduler
from bot.service.server_settings import ServerSettings
from bot.store.job_store import JobStore
from bot.ui.buttons import ResultButtons, ResultViews
from bot.ui.commands import StyleCommands
from bot.ui.errors import answer_error
from bot.ui.events import style_events
from bot.ui.gather import PictureGatherer
from bot.ui.job_start import JobStarter
from bot.ui.message_commands import MessageCommands

__all__ = ["StyleBot"]

log = logging.getLogger("bot")


class StyleBot(ButtonClient):
    """The Discord client, owning the scheduler, the messenger and the worker pool."""

    def __init__(self, config: Config, *, pool: WorkerPool, store: JobStore, checker: UploadChecker,
                 new_pool: Callable[[], WorkerPool] | None = None, force_sync: bool = False) -> None:
        """``pool``, ``store`` and ``checker`` are made (and closed) by the caller, see :func:`run`;
        ``new_pool`` makes a replacement for a pool that gave up at start (None: none is made)."""
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False  # no voice here: no warning
        intents = discord.Intents.none()
        intents.guilds = True  # channel and permission data; nothing privileged
        gateway = config.discord
        self.metrics = Metrics(live=self._live_metrics, shards=self.shard_statuses)
        self.call_budget = CallBudget(gateway.calls_per_second)
        tracer = CallTracer(self.call_budget, api_base=lambda: discord.http.Route.BASE, metrics=self.metrics)
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none(),
                         http_trace=tracer.trace_config(),
                         shard_count=gateway.shard_count or None, shard_ids=list(gateway.shard_ids) or None,
                         member_cache_flags=discord.MemberCacheFlags.none(), chunk_guilds_at_startup=False,
                         max_messages=None)
        self._serve_interactions_as_their_server()
        self.shard_watch = ShardWatch()
        self.identify_gate = IdentifyGate()  # max_concurrency 1 until Discord says more (setup_hook)
        self.config = config
        self.force_sync = force_sync
        self.tree = app_commands.CommandTree(self)
        self.tree.on_error = self._on_command_error  # type: ignore[method-assign]
        self.pool, self.store, self.checker, self._new_pool = pool, store, checker, new_pool
        storage, limits = config.storage, config.limits
        # The one place the parts are made and joined, each before whatever uses it.
        self.ledger = Ledger(self.store)
        self.scheduler = Scheduler(self.pool, self.ledger, per_user_waiting=limits.per_user_waiting,
                                   queue_max=limits.queue_max, per_guild_waiting=limits.per_guild_waiting,
                                   max_pixels=limits.max_pixels, job_timeout_s=config.pool.job_timeout_s)
        self.settings = ServerSettings(limits, self.store)
        self.events = EventBook(self.store)
        self.messenger = Messenger(self, self.ledger, edit_interval_s=config.progress.edit_interval_s,
                                   interaction_ttl_s=config.discord.interaction_ttl_s,
                                   interaction_margin_s=config.discord.interaction_margin_s,
                                   metrics=self.metrics, delivery=config.delivery, budget=self.call_budget,
                                   retention_s=storage.retention_hours * 3600.0,
                                   result_view=ResultViews(store=self.store, settings=self.settings,
                                                           max_strength=limits.max_strength,
                                                           entry_of=self.events.event_of))
        self.ledger.watcher = Fanout(self.messenger, self.events)  # an event's entries keep their picture
        library = StyleLibrary(config.styles.path, builtin=config.styles.builtin)
        gatherer = PictureGatherer(limits, config.engine.picture_side, library, self.store)
        starter = JobStarter(config.engine, scheduler=self.scheduler, ledger=self.ledger, settings=self.settings,
                             checker=self.checker, messenger=self.messenger, store=self.store, metrics=self.metrics)
        events = style_events(self, config, store=self.store, book=self.events, starter=starter, gatherer=gatherer,
                              settings=self.settings, checker=self.checker, scheduler=self.scheduler)
        self.event_host, self._event_closer = events.host, events.closer  # the event buttons' handlers
        StyleCommands(config, scheduler=self.scheduler, starter=starter, gatherer=gatherer,
                      settings=self.settings, shards=self.shard_statuses, events=events.starter).register(self.tree)
        MessageCommands(starter, gatherer, checker=self.checker, store=self.store,
                        api_base=config.discord.api_base).register(self.tree)
        events.host.register(self.tree)
        self.buttons = ResultButtons(starter, store=self.store, settings=self.settings, ledger=self.ledger,
                                     scheduler=self.scheduler, max_strength=limits.max_strength,
                                     on_delete=events.host.entry_deleted)
        self.health = (HealthServer(config.health.host, config.health.port, self.metrics, self.health_checks)
                       if config.health.port else None)
        self.shutdown_requested = asyncio.Event()
        self._tasks: list[asyncio.Task] = []  # the background loops, see _supervise
        self._shut_down = False
        self._pool_started = False  # start() is called once a pool, even if its supervisor restarts the loop

    def _serve_interactions_as_their_server(self) -> None:
        """Each interaction's handlers run in tasks made while its event is parsed; they copy
        the context, so their Discord calls count as their server's urgent calls in the budget."""
        parsers = self._connection.parsers
        parse = parsers["INTERACTION_CREATE"]

        def parse_interaction(data: Any) -> None:
            with calls_as(Priority.URGENT, int(data.get("guild_id") or 0)):
                parse(data)
        parsers["INTERACTION_CREATE"] = parse_interaction

    async def setup_hook(self) -> None:
        self.add_dynamic_items(CancelButton, ResultButton, EventButton, VoteButton)
        await self._learn_gateway()
        # Before the gateway connects: jobs from before a restart go back in line ahead of new ones.
        await self.settings.load()
        await self.events.load()
        await recover(self.store, self.ledger, self.scheduler, self.messenger)
        self._supervise("events", self._event_closer.run)  # its first pass closes what fell due while down
        self._supervise("store-purge", self._purge)
        self._supervise("workers", self._run_workers)
        await sync_commands(self, self.tree, self.config, force=self.force_sync)

    async def _learn_gateway(self) -> None:
        """Ask Discord for the recommended shard count and the identify concurrency."""
        try:
            recommended, _, limits = await self.http.get_bot_gateway()
        except (discord.HTTPException, discord.GatewayNotFound, OSError) as exc:
            log.warning("gateway information unavailable; identifying one shard at a time",
                        extra={"error": str(exc)})
            return
        if self.shard_count is None:
            self.shard_count = recommended
        self.identify_gate = IdentifyGate(int(limits.get("max_concurrency", 1)))
        self.shard_watch.expect(self.shard_ids or range(self.shard_count))
        log.info("gateway", extra={"shard_count": self.shard_count, "recommended": recommended,
                                   "shard_ids": list(self.shard_ids or range(self.shard_count)),
                                   "max_concurrency": self.identify_gate.max_concurrency,
                                   "session_starts_left": limits.get("remaining")})

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        waited = await self.identify_gate.wait_turn(shard_id or 0)
        log.info("identifying", extra={"shard_id": shard_id, "waited_s": round(waited, 2)})

    async def on_shard_connect(self, shard_id: int) -> None:
        self.shard_watch.connected(shard_id)

    async def on_shard_resumed(self, shard_id: int) -> None:
        self.shard_watch.connected(shard_id)

    async def on_shard_disconnect(self, shard_id: int) -> None:
        self.shard_watch.disconnected(shard_id)
        log.warning("gateway shard disconnected", extra={"shard_id": shard_id})

    def shard_statuses(self) -> list[ShardStatus]:
        """This process's shards now: connected, latency, servers."""
        guilds = collections.Counter(guild.shard_id for guild in self.guilds)
        statuses = []
        for shard_id in self.shard_watch.shard_ids:
            down_for = self.shard_watch.down_for(shard_id)
            info = self.get_shard(shard_id)
            latency = info.latency if info is not None and down_for is None else math.nan
            statuses.append(ShardStatus(shard_id, connected=down_for is None,
                                        latency_ms=round(latency * 1000, 1) if math.isfinite(latency) else None,
                                        guilds=guilds[shard_id], down_for_s=down_for))
        return statuses

    def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a background loop for the bot's lifetime: a failure is logged and the loop
        started again (after a pause that grows), never left to die unread in its task."""
        async def supervised() -> None:
            failures = 0
            while not self._shut_down:
                try:
                    await loop()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    failures += 1
                    log.exception("background task failed; restarting it", extra={"task": name,
                                                                                  "failures": failures})
                    await asyncio.sleep(min(60.0, 2.0 ** failures))
        self._tasks.append(asyncio.create_task(supervised(), name=name))

    async def _purge(self) -> None:
        """Delete the records of long-ended jobs now and then."""
        while True:
            removed = await self.store.purge()
            if removed:
                log.info("old job records removed", extra={"count": removed})
            await asyncio.sleep(3600.0)

    def _live_metrics(self) -> dict[str, float]:
        stats = self.pool.stats()
        return {"queue_length": len(self.scheduler.line), "jobs_running": len(self.scheduler.running()),
                "workers_alive": stats.workers_alive, "worker_restarts": stats.restarts,
                "spool_bytes": self.store.spool_bytes, "discord_calls_waiting": self.call_budget.waiting}

    async def health_checks(self) -> dict[str, dict[str, Any]]:
        """What ``/healthz`` reports: gateway connected, workers alive, job store writable."""
        shards = self.shard_statuses()
        gateway: dict[str, Any] = {
            # a shard reconnecting is not an outage; one down for a minute is (or none known after one)
            "ok": (not any(shard.down_too_long for shard in shards) if shards
                   else self.shard_watch.age_s() <= DOWN_TOO_LONG_S),
            "shards": [{"id": shard.shard_id, "connected": shard.connected, "latency_ms": shard.latency_ms,
                        "guilds": shard.guilds, "down_for_s": None if shard.down_for_s is None
                        else round(shard.down_for_s, 1)} for shard in shards]}
        workers: dict[str, Any] = {"ok": self.scheduler.pool_ready and self.pool.workers_alive > 0,
                                   "alive": self.pool.workers_alive, "capacity": self.pool.capacity,
                                   "starting": not self.scheduler.pool_ready and self.scheduler.accepting
                                   and not self.scheduler.workers_down}
        if not workers["ok"]:
            workers["reason"] = self.pool.unavailable_reason or "workers are starting"
        store: dict[str, Any] = {"ok": True}
        try:
            await asyncio.wait_for(self.store.ping(), 5.0)
        except Exception as exc:
            store = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"gateway": gateway, "workers": workers, "store": store}

    async def close(self) -> None:
        # AutoShardedClient.close() posts to its shards' queue, which exists only once the
        # client has logged in; a bot shut down before that closes as a plain client.
        if getattr(self, "_AutoShardedClient__queue", None) is None:
            await discord.Client.close(self)
        else:
            await super().close()

    async def on_ready(self) -> None:
        log.info("connected", extra={"user": str(self.user), "guilds": len(self.guilds),
                                     "shards": self.shard_watch.shard_ids})

    async def _run_workers(self) -> None:
        """Start the pool, then follow it: while no worker can start, ``/stylize`` refuses at
        once and waiting jobs are told; once one is up, jobs run again. A pool that gave up
        at start (its cluster could not be reached) is replaced, after a pause that grows."""
        pause = 2.0
        while not self._shut_down:
            if not self._pool_started:
                self._pool_started = True
                await self._start_pool()
            if self.pool.closed and self._new_pool is not None and not self._shut_down:
                self._follow_workers()  # workers down, said at once
                log.warning("the worker pool gave up; trying a new one later", extra={"retry_in_s": pause})
                await asyncio.sleep(pause)
                pause = min(self.config.pool.start_retry_max_s, pause * 2)
                if not self._shut_down:
                    self.pool = self.scheduler.pool = self._new_pool()
                    self._pool_started = False
                continue
            self._follow_workers()
            await asyncio.sleep(1.0)

    async def _start_pool(self) -> None:
        log.info("starting workers", extra={"devices": self.config.pool.devices, "workers": self.config.pool.workers})
        try:
            await self.pool.start()
            log.info("workers ready", extra={"capacity": self.pool.capacity})
        except WorkerStartError as exc:
            log.error("no worker could start; jobs wait until one does", extra={"error": str(exc)})
        except Exception:  # a bug, not a start failure: still follow the pool, never stop here
            log.exception("starting the workers failed")

    def _follow_workers(self) -> None:
        if not self.scheduler.accepting:
            return
        if self.pool.workers_alive > 0:
            if not self.scheduler.pool_ready:
                self.scheduler.set_pool_ready()
        elif self.pool.start_failing:
            if not self.scheduler.workers_down:
                log.error("no worker is running and none can start", extra={"reason": self.pool.unavailable_reason})
            self.scheduler.set_workers_down(True)
        # A slow safety net besides: dispatch if a slot freed up without a job ending (a worker replaced).
        self.scheduler.pump()

    async def _on_command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await answer_error(interaction, error)  # commands without a handler of their own

    def request_shutdown(self, why: str = "signal") -> None:
        if not self.shutdown_requested.is_set():
            log.info("shutdown requested", extra={"why": why})
            self.shutdown_requested.set()

    async def graceful_shutdown(self) -> None:
        """Stop taking jobs, tell waiting users, finish or stop running jobs, then close."""
        if self._shut_down:
            return
        self._shut_down = True
        cfg = self.config.shutdown
        paused = self.scheduler.stop_accepting()
        running = self.scheduler.running()
        log.info("shutting down", extra={"paused_waiting": len(paused), "running": len(running),
                                         "running_jobs": cfg.running_jobs})
        for task in self._tasks:  # the pool's start (if still running), the purge, the worker follower
            task.cancel()
        if running and cfg.running_jobs == "finish":
            if not await self.scheduler.wait_running(cfg.timeout_s):
                log.warning("running jobs did not finish in time; stopping them", extra={"timeout_s": cfg.timeout_s})
        await self.pool.shutdown(drain=False)  # whatever still runs is paused: it runs again after the restart
        await self.scheduler.wait_running(10.0)
        await self.messenger.drain(timeout=30.0)  # what is still unsent is in the store for the next start
        if self.health is not None:
            await self.health.stop()
        await self.close()
        log.info("stopped")
