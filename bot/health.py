"""Health and metrics: ``/healthz`` and ``/metrics`` (Prometheus) on a small aiohttp server.

Off by default; ``[health] port`` turns it on. ``/healthz`` answers 200 with a JSON body when
no gateway shard of this process has been down for more than a minute (a reconnect is not an
outage), at least one worker is alive and the job store can be written, 503 (same body,
saying which check failed, and each shard's state) otherwise. ``/metrics`` is the Prometheus text
format from :class:`Metrics`, which keeps its own registry (several bots in one test process
do not share counters).

Metrics (all prefixed ``stylebot_``):

* ``queue_length`` (waiting jobs), ``jobs_running``, ``workers_alive``, ``spool_bytes``: gauges
  read when scraped;
* ``worker_restarts_total``: replacement workers the pool started (crash, timeout, stuck cancel);
* ``jobs_accepted_total``; ``requests_refused_total{reason}`` (user_limit, server_limit,
  line_full, not_accepting, workers_down, storage, channel, preset, quota, busy, invalid_upload,
  expired: a result button pressed after its pictures went; event: a style event's rule);
* ``jobs_total{outcome}``: ended jobs by outcome (finished, cancelled, or the failure kind:
  invalid_input, timeout, worker_died, out_of_memory, shutdown, error);
* ``job_duration_seconds``: histogram of finished jobs, from start on a worker to the result;
* ``deliveries_total{path}``: messages that reached a requester, by path (interaction,
  channel, dm); ``delivery_failures_total``: results or notices no path could deliver;
* ``discord_calls_total{kind}``: REST calls sent to Discord: ``urgent`` and ``background``
  (status edits) took a slot in the call budget; ``interaction`` (answers through an
  interaction's webhook) and ``callback`` (deferrals) are outside Discord's global limit;
  ``discord_rate_limited_total{route,scope}``: 429 answers; ``discord_calls_waiting``: calls
  waiting for a slot in the budget (:mod:`bot.service.call_budget`);
* ``shard_connected{shard}``, ``shard_latency_seconds{shard}``, ``shard_guilds{shard}``: each
  of this process's gateway shards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from nst_core.pool.base import FAILURE_KINDS

from bot.core.job import ROUTES
from bot.core.refusals import REASONS
from bot.core.shards import ShardStatus

__all__ = ["Metrics", "HealthServer", "HealthCheck", "OUTCOMES", "PATHS", "REFUSALS", "DISCORD_CALL_KINDS"]

log = logging.getLogger(__name__)

OUTCOMES = ("finished", *FAILURE_KINDS)
PATHS = ROUTES
REFUSALS = REASONS  # every refusal class's label, shown at 0 from the start
DISCORD_CALL_KINDS = ("urgent", "background", "interaction", "callback")
_DURATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)


class _Live:
    """Collector for values read at scrape time from the scheduler, the pool and the store."""

    def __init__(self, read: Callable[[], dict[str, float]], shards: Callable[[], list[ShardStatus]] | None) -> None:
        self._read = read
        self._shards = shards

    def describe(self) -> list:
        return []  # nothing to read before the bot is fully built; names cannot clash anyway

    def collect(self) -> Any:
        try:
            values = self._read()
        except Exception:  # a scrape must never take the bot down
            log.exception("metrics: reading live values failed")
            return
        for name, help_text in (("queue_length", "Jobs waiting in line"),
                                ("jobs_running", "Jobs running on a worker"),
                                ("workers_alive", "Worker processes ready or busy"),
                                ("spool_bytes", "Bytes of job files in the spool"),
                                ("discord_calls_waiting", "Discord calls waiting for a slot in the call budget")):
            if name in values:
                yield GaugeMetricFamily(f"stylebot_{name}", help_text, value=values[name])
        if "worker_restarts" in values:
            yield CounterMetricFamily("stylebot_worker_restarts", "Replacement worker processes started",
                                      value=values["worker_restarts"])
        if self._shards is not None:
            yield from _shard_families(self._shards())


def _shard_families(shards: list[ShardStatus]) -> Any:
    connected = GaugeMetricFamily("stylebot_shard_connected", "1 while the gateway shard is connected",
                                  labels=["shard"])
    latency = GaugeMetricFamily("stylebot_shard_latency_seconds", "The shard's last heartbeat round trip",
                                labels=["shard"])
    guilds = GaugeMetricFamily("stylebot_shard_guilds", "Servers on the shard", labels=["shard"])
    for shard in shards:
        label = [str(shard.shard_id)]
        connected.add_metric(label, 1.0 if shard.connected else 0.0)
        if shard.latency_ms is not None:
            latency.add_metric(label, shard.latency_ms / 1000.0)
        guilds.add_metric(label, shard.guilds)
    yield from (connected, latency, guilds)


class Metrics:
    """The bot's Prometheus metrics; ``live`` returns the scrape-time values (see the module)."""

    def __init__(self, live: Callable[[], dict[str, float]] | None = None,
                 shards: Callable[[], list[ShardStatus]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.accepted = Counter("stylebot_jobs_accepted", "Jobs accepted into the line", registry=self.registry)
        self.refused = Counter("stylebot_requests_refused", "/stylize requests refused, by reason", ["reason"],
                               registry=self.registry)
        self.jobs = Counter("stylebot_jobs", "Jobs that ended, by outcome", ["outcome"], registry=self.registry)
        self.duration = Histogram("stylebot_job_duration_seconds", "Time from start on a worker to the result",
                                  buckets=_DURATION_BUCKETS, registry=self.registry)
        self.deliveries = Counter("stylebot_deliveries", "Messages delivered to requesters, by path", ["path"],
                                  registry=self.registry)
        self.delivery_failures = Counter("stylebot_delivery_failures",
                                         "Results or notices that no path could deliver", registry=self.registry)
        self.discord_calls = Counter("stylebot_discord_calls", "REST calls sent to Discord, by kind", ["kind"],
                                     registry=self.registry)
        self.rate_limited = Counter("stylebot_discord_rate_limited", "429 answers from Discord, by route and scope",
                                    ["route", "scope"], registry=self.registry)
        for kind in DISCORD_CALL_KINDS:
            self.discord_calls.labels(kind)
        for outcome in OUTCOMES:  # every series exists from the start, at 0
            self.jobs.labels(outcome)
        for path in PATHS:
            self.deliveries.labels(path)
        for reason in REFUSALS:
            self.refused.labels(reason)
        if live is not None:
            self.registry.register(_Live(live, shards))

    def job_ended(self, outcome: str, seconds: float | None = None) -> None:
        self.jobs.labels(outcome if outcome in OUTCOMES else "error").inc()
        if outcome == "finished" and seconds is not None:
            self.duration.observe(max(0.0, seconds))

    def delivered(self, path: str) -> None:
        self.deliveries.labels(path).inc()

    def discord_call(self, kind: str) -> None:
        self.discord_calls.labels(kind).inc()

    def discord_rate_limited(self, route: str, scope: str) -> None:
        self.rate_limited.labels(route, scope).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


# --------------------------------------------------------------------------- the server


HealthCheck = Callable[[], Awaitable[dict[str, Any]]]


class HealthServer:
    """``/healthz`` and ``/metrics`` on ``host:port``.

    ``check`` returns a dict of named checks, each ``{"ok": bool, ...details}``; the answer
    is 200 only when all are ok.
    """

    def __init__(self, host: str, port: int, metrics: Metrics, check: HealthCheck) -> None:
        self.host, self.port = host, port
        self.metrics = metrics
        self.check = check
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []  # the real port when 0 was asked for
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.port
        log.info("health server listening", extra={"host": self.host, "port": self.bound_port})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        try:
            checks = await asyncio.wait_for(self.check(), 10.0)
        except Exception as exc:  # the check itself broke: unhealthy, and say why
            checks = {"check": {"ok": False, "error": f"{type(exc).__name__}: {exc}"}}
        ok = all(c.get("ok") for c in checks.values())
        body = {"ok": ok, "checks": checks, "ms": round((time.monotonic() - started) * 1000, 1)}
        return web.Response(text=json.dumps(body), status=200 if ok else 503, content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self.metrics.render()  # on the loop: the live values are read from loop-owned objects
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
