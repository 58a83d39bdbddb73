"""The Discord bot that serves :mod:`nst_core` style transfer. No TensorFlow in this process.

Packages from the top down; each imports only those below it (``lint-imports`` checks it):

* ``__main__``: ``python -m bot``; ``config_loading``: the TOML file and ``NSTBOT_*`` overrides.
* ``app``: the client that makes and joins every part (``client``), ``run`` (process, pool,
  signals), ``recovery`` after a restart, ``sync`` of the commands, ``logs``.
* ``ui``: what members touch. ``commands`` (/stylize, /stylebot), ``admin`` (/stylebot-settings),
  ``buttons`` (Cancel, the remixes, before | after, Delete), ``message_commands``; all start
  jobs through ``job_start`` with pictures from ``gather``; ``access``: who may do what. Style
  events: ``event_start`` (/stylebot event start), ``events`` (Join, Enter in event, Vote,
  Close, Cancel), ``event_cards`` (card, thread, scheduled event), ``event_close`` (the timer,
  the gallery, the cancel).
* ``delivery``: the ``messenger`` follows each job event, ``status`` edits status messages,
  ``outbox`` sends results and notices exactly once; ``discord_calls`` puts every REST call
  through the call budget.
* ``intake``: ``uploads`` (strangers' pictures: bounded downloads and one bounded decode),
  ``library`` (the built-in paintings and the operator's folder).
* ``render``: ``words`` (every text), ``drawings`` (loss chart, before | after, contact sheet),
  ``embeds``, ``views`` (buttons and the style picker), ``event_card`` (an event's card and its
  buttons), ``gallery`` (an event's gallery picture).
* ``service``: the ``ledger`` (the only writer of job state), the ``scheduler`` (the line's
  limits, feeding the pool), ``server_settings``, ``checkpool`` (check CPU shared by server),
  ``call_budget`` (Discord calls a second: urgent first, servers in turn), ``events`` (which
  jobs are event entries; their pictures kept for the gallery).
* ``store``: SQLite (``job_store``, ``database``, ``schema``), the spool's files (``spool``)
  and room (``room``: shares per server), ``saved_styles``, ``events`` (style events, entries, votes).
* ``health``: ``/healthz`` and Prometheus ``/metrics``.
* ``core``: the vocabulary, no Discord and no I/O: the ``job`` and its lifecycle, its
  ``events``, ``refusals`` (each with its metric reason), server ``rules``, the fair ``line``,
  the ``remix`` arithmetic, a style ``event``'s rules (durations, votes, standings), the
  gateway's ``shards``.
* ``config``: the operator's settings as frozen dataclasses.

Where a change goes: a new refusal → ``core.refusals``; a new button → ``core.remix`` (what it
asks) and ``ui.buttons`` (what it does); a new text → ``render.words``; a new stored field →
``store.schema`` and ``store.job_store``; a new server rule → ``core.rules`` and
``service.server_settings``.
"""

__all__: list[str] = []
