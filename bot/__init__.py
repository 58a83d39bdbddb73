"""The Discord bot that serves :mod:`nst_core` style transfer. No TensorFlow in this process.

Modules, in the order a request travels through them:

* ``config``: the TOML settings, ``NSTBOT_*`` environment overrides, validation.
* ``app``: the client and command tree, startup (command sync, worker pool), shutdown.
* ``commands``: ``/stylize``, ``/stylebot status|cancel``, ``/stylebot-settings`` and the Cancel button.
* ``settings``: each server's rules (channels, largest preset, daily quota) within the operator's ceilings.
* ``uploads``: attachments from strangers: metadata checks, size-limited downloads, bounded decoding.
* ``scheduler``: the fair waiting line (servers in turn, then members) and the job record; feeds the pool.
* ``store``: every accepted job in SQLite, its pictures in a spool folder; server settings, quotas.
* ``delivery``: status-message updates and getting results to the requester, exactly once.
* ``recovery``: at start, jobs from before a restart back in line, undelivered results sent.
* ``health``: ``/healthz`` and Prometheus ``/metrics`` on a small aiohttp server.
* ``render``: every text, the result embed and the loss chart.

Start it with ``python -m bot --config config.toml`` (``__main__``).
"""

__all__: list[str] = []
