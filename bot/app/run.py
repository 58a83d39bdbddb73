"""Running the bot process: logging, the job store, the upload checker and the worker pool
made (and closed) around the client, the health server (:mod:`bot.health`, first when
``[health] port`` is set), signals, and the exit status.

This process never imports TensorFlow: the workers do, in their own processes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import discord
import yarl

from nst_core.pool.base import WorkerPool
from nst_core.pool.local import LocalPool

from bot.app.client import StyleBot
from bot.app.logs import setup_logging
from bot.config import Config
from bot.intake.uploads import UploadChecker
from bot.service.ledger import job_params
from bot.store.job_store import JobStore
from bot.store.errors import StoreError

__all__ = ["run", "make_pool", "point_discord_at"]

log = logging.getLogger("bot")


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
            pass  # the client's own ending no longer matters: the bot has shut down, its status is decided
    return status
