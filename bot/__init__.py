"""The Discord bot that serves :mod:`nst_core` style transfer. No TensorFlow in this process.

Modules, in the order a request travels through them:

* ``__main__``: ``python -m bot``: settings, the token moved out of the environment, then ``app.run``.
* ``config``: the TOML settings and ``NSTBOT_*`` environment overrides, validated (pydantic-settings).
* ``app``: the client, startup (store, pool and upload checker made outside it and passed in,
  command sync, recovery), the background loops, shutdown.
* ``commands``: ``/stylize`` (and the one way every job starts), ``/stylebot status|styles|cancel``;
  ``admin``: ``/stylebot-settings``; ``views``: the buttons and the style picker; ``errors``: how
  a failed command is answered.
* ``play``: the buttons under a result and the message commands ("Stylize this image", "Use as
  my style"); ``remix``: what each button asks for, as plain functions.
* ``settings``: each server's rules (channels, largest preset, daily quota) within the operator's ceilings.
* ``uploads``: attachments from strangers: metadata checks, size-limited downloads, bounded decoding.
* ``library``: the built-in paintings (``styles/``) and the operator's folder of style images.
* ``jobs``: the job record, its one lifecycle, and the ledger, the only writer of a job's state.
* ``scheduler``: admission and the line's limits, feeding the pool; ``line``: the fair order
  (servers in turn, then members) and time estimates.
* ``delivery``: what follows each recorded event; ``status``: the status messages;
  ``outbox``: results and notices delivered exactly once.
* ``store``: SQLite (jobs, server settings, quota counts) and the spool; ``schema``: its tables
  and upgrades; ``spool``: its files.
* ``recovery``: at start, jobs from before a restart back in line, undelivered results sent.
* ``health``: ``/healthz`` and Prometheus ``/metrics`` on a small aiohttp server.
* ``render``: every text and the result embed; ``pictures``: the loss chart, before | after and the
  library's contact sheet (Pillow).

Start it with ``python -m bot --config config.toml`` (``__main__``).
"""

__all__: list[str] = []
