"""Health and metrics: ``/healthz`` and ``/metrics`` (Prometheus) on a small aiohttp server.

Off by default; ``[health] port`` turns it on. ``/healthz`` answers 200 with a JSON body when
the gateway is connected, at least one worker is alive and the job store can be written,
503 (same body, saying which check failed) otherwise. ``/metrics`` is the Prometheus text
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
  channel, dm); ``delivery_failures_total``: results or notices no path could deliver.
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

__all__ = ["Metrics", "HealthServer", "HealthCheck", "OUTCOMES", "PATHS", "REFUSALS"]

log = logging.getLogger(__name__)

OUTCOMES = ("finished", *FAILURE_KINDS)
PATHS = ROUTES
REFUSALS = REASONS  # every refusal class's label, shown at 0 from the start
_DURATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)


class _Live:
    """Collector for values read at scrape time from the scheduler, the pool and the store."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

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
                                ("spool_bytes", "Bytes of job files in the spool")):
            if name in values:
                yield GaugeMetricFamily(f"stylebot_{name}", help_text, value=values[name])
        if "worker_restarts" in values:
            yield CounterMetricFamily("stylebot_worker_restarts", "Replacement worker processes started",
                                      value=values["worker_restarts"])


class Metrics:
    """The bot's Prometheus metrics; ``live`` returns the scrape-time values (see the module)."""

    def __init__(self, live: Callable[[], dict[str, float]] | None = None) -> None:
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
        for outcome in OUTCOMES:  # every series exists from the start, at 0
            self.jobs.labels(outcome)
        for path in PATHS:
            self.deliveries.labels(path)
        for reason in REFUSALS:
            self.refused.labels(reason)
        if live is not None:
            self.registry.register(_Live(live))

    def job_ended(self, outcome: str, seconds: float | None = None) -> None:
        self.jobs.labels(outcome if outcome in OUTCOMES else "error").inc()
        if outcome == "finished" and seconds is not None:
            self.duration.observe(max(0.0, seconds))

    def delivered(self, path: str) -> None:
        self.deliveries.labels(path).inc()

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
