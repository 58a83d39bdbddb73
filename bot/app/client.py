"""The bot process: the Discord client and command tree, startup, command sync and shutdown.

Startup: open the job store and recover what it holds (:mod:`bot.recovery`: jobs back in
line, undelivered results delivered), log in, sync commands (development guilds every time,
globally only when the definitions changed or ``--sync`` asks), connect to the gateway, and
start the worker pool in the background (jobs wait in line until it is warm). The health
server (:mod:`bot.health`) starts first when ``[health] port`` is set. No privileged intents
are used.

Shutdown (SIGTERM or SIGINT): stop taking jobs, let running jobs finish (``[shutdown]
running_jobs = "finish"``, within ``timeout_s``) or stop them (``"cancel"``), deliver what is
pending, then exit with status 0. Jobs still waiting, and running jobs that were stopped, are
paused, not failed: their requesters are told, the job store keeps them, and the next start
runs them (:mod:`bot.recovery`), stopped ones first.

This process never imports TensorFlow: the workers do, in their own processes.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
import os
import signal
import sys
import warnings
from typing import Any, Awaitable, Callable

import discord
import yarl
from discord import app_commands

from nst_core.pool.base import WorkerPool, WorkerStartError
from nst_core.pool.local import LocalPool

from bot.ui.commands import StyleCommands
from bot.config import Config
from bot.delivery.messenger import Messenger
from bot.ui.errors import answer_error
from bot.health import HealthServer, Metrics
from bot.intake.library import StyleLibrary
from bot.core.job import Ledger, job_params
from bot.app.recovery import recover
from bot.service.scheduler import Scheduler
from bot.service.server_settings import ServerSettings
from bot.store.job_store import JobStore, StoreError
from bot.intake.uploads import UploadChecker
from bot.ui.buttons import Play
from bot.render.views import CancelButton, ResultButton

__all__ = ["StyleBot", "run", "make_pool", "point_discord_at", "setup_logging", "commands_digest", "sync_commands",
           "SYNC_STATE_FILE"]

log = logging.getLogger("bot")

SYNC_STATE_FILE = "command_sync.json"
_SHUTDOWN_REFUSAL = "The bot is shutting down and is not taking new jobs. Please try again in a few minutes."


# --------------------------------------------------------------------------- wiring helpers


def point_discord_at(api_base: str, gateway_url: str) -> None:
    """Send discord.py's REST calls and gateway connection elsewhere (an API proxy, a test fake)."""
    if api_base:
        discord.http.Route.BASE = api_base.rstrip("/")
    if gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


def make_pool(config: Config) -> WorkerPool:
    engine, pool = config.engine, config.pool
    warm = job_params(engine, engine.default_preset)
    # progress events a bit more often than status edits, so each edit is fresh
    progress_interval_s = min(1.0, max(0.2, config.progress.edit_interval_s / 2))
    if pool.backend == "ray":  # Ray itself is imported only when the pool starts
        from nst_core.pool.ray_pool import RayPool

        return RayPool(address=pool.ray_address, devices="cpu" if pool.devices.strip().lower() == "cpu" else "auto",
                       cpu_actors=pool.ray_actors, warm_params=warm.to_dict(), timeout_s=pool.job_timeout_s,
                       retries=pool.retries, progress_interval_s=progress_interval_s,
                       max_start_backoff_s=pool.start_retry_max_s,
                       no_capacity_timeout_s=None)  # jobs in the pool wait for a worker, as in the local pool
    devices: Any = pool.devices.strip().lower()
    if devices not in ("auto", "cpu"):
        devices = [d.strip() for d in devices.split(",") if d.strip()]
    return LocalPool(devices=devices, cpu_workers=pool.workers, warm_params=warm.to_dict(),
                     timeout_s=pool.job_timeout_s, retries=pool.retries, progress_interval_s=progress_interval_s,
                     max_start_backoff_s=pool.start_retry_max_s)


_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class _Formatter(logging.Formatter):
    """JSON lines (or plain text) with the record's extra fields; secrets replaced."""

    def __init__(self, style: str, secrets: list[str]) -> None:
        super().__init__()
        self.json = style == "json"
        self.secrets = [s for s in secrets if s]

    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}
        when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        if self.json:
            data: dict[str, Any] = {"ts": when.isoformat(timespec="milliseconds"), "level": record.levelname,
                                    "logger": record.name, "msg": record.getMessage(), **extra}
            if record.exc_info:
                data["exc"] = self.formatException(record.exc_info)
            text = json.dumps(data, default=str, ensure_ascii=False)
        else:
            fields = " ".join(f"{k}={v!r}" for k, v in extra.items())
            text = f"{when:%Y-%m-%d %H:%M:%S} {record.levelname} {record.name}: {record.getMessage()} {fields}".rstrip()
            if record.exc_info:
                text += "\n" + self.formatException(record.exc_info)
        for secret in self.secrets:  # defence in depth: nothing should log it, nothing can
            text = text.replace(secret, "[redacted]")
        return text


def setup_logging(level: str, style: str, secrets: list[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(style, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # discord.py is chatty at DEBUG (every gateway frame); keep it at INFO unless asked.
    logging.getLogger("discord").setLevel(level if level != "DEBUG" else "INFO")
    warnings.showwarning = _warning_logger()


def _warning_logger() -> Callable[..., None]:
    """Library warnings go to the log (so its format and redaction apply), once per place in
    the code that warns: a crafted file can make a library warn thousands of times, each
    time with another text."""
    seen: set[tuple[type, str, int]] = set()
    logger = logging.getLogger("py.warnings")

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if (category, filename, lineno) in seen:
            return
        seen.add((category, filename, lineno))
        logger.warning("%s: %s", category.__name__, str(message)[:500], extra={"source": f"{filename}:{lineno}"})
    return show


def commands_digest(tree: app_commands.CommandTree) -> str:
    """A hash of the global command definitions as Discord would receive them."""
    payload = [cmd.to_dict(tree) for cmd in sorted(tree.get_commands(), key=lambda c: c.name)]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


async def sync_commands(client: discord.Client, tree: app_commands.CommandTree, config: Config, *,
                        force: bool = False) -> bool:
    """Sync to the development guilds, and globally only when needed; True if it synced globally.

    Discord limits how many commands an application may create per day, so the global
    definitions are only sent again when their hash differs from the one recorded after
    the last successful sync (kept in a small file beside the storage path).
    """
    digest = commands_digest(tree)  # before copying to guilds: the global set only
    for guild_id in config.discord.dev_guild_ids:
        guild = discord.Object(guild_id)
        tree.copy_global_to(guild=guild)
        try:
            await tree.sync(guild=guild)
            log.info("commands synced to development guild", extra={"guild_id": guild_id})
        except discord.HTTPException as exc:
            log.warning("command sync to a development guild failed",
                        extra={"guild_id": guild_id, "status": exc.status, "code": exc.code})
    state_path = config.storage.state_dir / SYNC_STATE_FILE
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        state = {}
    key = str(client.application_id)
    if not force and state.get(key) == digest:
        log.info("global commands unchanged; not syncing", extra={"digest": digest[:12]})
        return False
    try:
        await tree.sync()
    except discord.HTTPException as exc:
        log.error("global command sync failed", extra={"status": exc.status, "code": exc.code})
        return False
    state[key] = digest
    try:
        state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, state_path)
    except OSError as exc:
        log.warning("could not record the command hash", extra={"path": str(state_path), "error": str(exc)})
    log.info("commands synced globally", extra={"digest": digest[:12], "forced": force})
    return True


# --------------------------------------------------------------------------- the client


class StyleBot(discord.Client):
    """The Discord client, owning the scheduler, the messenger and the worker pool."""

    def __init__(self, config: Config, *, pool: WorkerPool, store: JobStore, checker: UploadChecker,
                 new_pool: Callable[[], WorkerPool] | None = None, force_sync: bool = False) -> None:
        """``pool``, ``store`` and ``checker`` are made (and closed) by the caller, see :func:`run`;
        ``new_pool`` makes a replacement for a pool that gave up at start (None: none is made)."""
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False  # no voice here: no warning
        intents = discord.Intents.none()
        intents.guilds = True  # channel and permission data; nothing privileged
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none())
        self.config = config
        self.force_sync = force_sync
        self.tree = app_commands.CommandTree(self)
        self.tree.on_error = self._on_command_error  # type: ignore[method-assign]
        self.pool, self.store, self.checker, self._new_pool = pool, store, checker, new_pool
        storage = config.storage
        self.metrics = Metrics(live=self._live_metrics)
        self.ledger = Ledger(self.store)
        self.messenger = Messenger(self, self.ledger, edit_interval_s=config.progress.edit_interval_s,
                                   interaction_ttl_s=config.discord.interaction_ttl_s,
                                   interaction_margin_s=config.discord.interaction_margin_s,
                                   metrics=self.metrics, delivery=config.delivery,
                                   retention_s=storage.retention_hours * 3600.0,
                                   result_view=lambda job: self.play.result_view(job))
        limits = config.limits
        self.scheduler = Scheduler(self.pool, self.ledger, per_user_waiting=limits.per_user_waiting,
                                   queue_max=limits.queue_max, per_guild_waiting=limits.per_guild_waiting,
                                   max_pixels=limits.max_pixels, job_timeout_s=config.pool.job_timeout_s)
        self.settings = ServerSettings(limits, self.store)
        self.style_commands = StyleCommands(config, self.scheduler, self.messenger, StyleLibrary(config.styles.path, builtin=config.styles.builtin),
                                            ledger=self.ledger, store=self.store, metrics=self.metrics,
                                            settings=self.settings,
                                            checker=self.checker)
        self.style_commands.register(self.tree)
        self.play = Play(self.style_commands)  # the buttons under results and the message commands
        self.play.register(self.tree)
        self.health = (HealthServer(config.health.host, config.health.port, self.metrics, self.health_checks)
                       if config.health.port else None)
        self.shutdown_requested = asyncio.Event()
        self._tasks: list[asyncio.Task] = []  # the background loops, see _supervise
        self._shut_down = False
        self._pool_started = False  # start() is called once a pool, even if its supervisor restarts the loop

    async def setup_hook(self) -> None:
        self.add_dynamic_items(CancelButton, ResultButton)
        # Before the gateway connects: jobs from before a restart go back in line ahead of new ones.
        await self.settings.load()
        await recover(self.store, self.ledger, self.scheduler, self.messenger)
        self._supervise("store-purge", self._purge)
        self._supervise("workers", self._run_workers)
        await sync_commands(self, self.tree, self.config, force=self.force_sync)

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
                "spool_bytes": self.store.spool_bytes}

    async def health_checks(self) -> dict[str, dict[str, Any]]:
        """What ``/healthz`` reports: gateway connected, workers alive, job store writable."""
        ws = self.ws
        gateway = {"ok": bool(self.is_ready() and not self.is_closed() and ws is not None and ws.open)}
        if gateway["ok"]:
            gateway["latency_ms"] = round(self.latency * 1000, 1)
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

    async def on_ready(self) -> None:
        log.info("connected", extra={"user": str(self.user), "guilds": len(self.guilds)})

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
        paused = self.scheduler.stop_accepting(_SHUTDOWN_REFUSAL)
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


async def run(config: Config, token: str, *, force_sync: bool = False, config_warnings: list[str] | None = None) -> int:
    """Run the bot until SIGTERM/SIGINT; returns the process exit status."""
    setup_logging(config.logging.level, config.logging.format, [token])
    for warning in config_warnings or ():
        log.warning("configuration: %s", warning)
    point_discord_at(config.discord.api_base, config.discord.gateway_url)
    storage, limits = config.storage, config.limits
    store = JobStore(storage.path, storage.spool_dir, spool_max_bytes=int(storage.spool_max_mb * 2**20),
                     retention_s=storage.retention_hours * 3600.0, reuse_s=storage.reuse_hours * 3600.0,
                     server_share=storage.server_share)
    checker = UploadChecker.from_limits(limits)
    try:
        async with store, checker:  # closed after the bot, whatever happens to it
            bot = StyleBot(config, pool=make_pool(config), store=store, checker=checker,
                           new_pool=lambda: make_pool(config), force_sync=force_sync)
            return await _serve(bot, token)
    except StoreError as exc:
        log.error("the job store cannot be used", extra={"error": str(exc)})
        return 2


async def _serve(bot: StyleBot, token: str) -> int:
    config = bot.config
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, bot.request_shutdown, sig.name)
    status = 0
    if bot.health is not None:
        try:
            await bot.health.start()
        except OSError as exc:
            log.error("the health server cannot listen", extra={"host": config.health.host,
                                                                 "port": config.health.port, "error": str(exc)})
            return 2
    async with bot:
        runner = asyncio.create_task(bot.start(token, reconnect=True), name="discord-client")
        stop = asyncio.create_task(bot.shutdown_requested.wait(), name="shutdown-wait")
        await asyncio.wait({runner, stop}, return_when=asyncio.FIRST_COMPLETED)
        if runner.done() and runner.exception() is not None:
            exc = runner.exception()
            if isinstance(exc, discord.LoginFailure):
                log.error("Discord refused the token; check DISCORD_TOKEN")
            else:
                log.error("the Discord client stopped", exc_info=exc)
            status = 1
        await bot.graceful_shutdown()
        stop.cancel()
        try:
            await asyncio.wait_for(runner, 10.0)
        except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
            pass
    return status
