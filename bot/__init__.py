"""The Discord bot that serves :mod:`nst_core` style transfer. No TensorFlow in this process.

Modules, in the order a request travels through them:

* ``config``: the TOML settings, ``NSTBOT_*`` environment overrides, validation.
* ``app``: the client and command tree, startup (command sync, worker pool), shutdown.
* ``commands``: ``/stylize``, ``/stylebot status|cancel`` and the Cancel button.
* ``scheduler``: the fair waiting line and the job record; feeds the worker pool.
* ``store``: every accepted job in SQLite, its pictures in a spool folder.
* ``delivery``: status-message updates and getting results to the requester, exactly once.
* ``recovery``: at start, jobs from before a restart back in line, undelivered results sent.
* ``health``: ``/healthz`` and Prometheus ``/metrics`` on a small aiohttp server.
* ``render``: every text, the result embed and the loss chart.

Start it with ``python -m bot --config config.toml`` (``__main__``).
"""

__all__: list[str] = []
