"""The job store's SQLite schema, its version, and the upgrades from older versions.

Version 1: jobs. Version 2: per-server settings and the daily quota's count. Version 3: one
lifecycle (:mod:`bot.core.job`): the old ``queued`` state and a failed job's ``notice`` column
(pending, sending, sent, unsent) folded into ``state``. Version 4: playing with results: a
job's parent (the result whose button made it) and second style, how long a delivered job's
pictures are kept for remixes, and members' saved styles. Version 5: the bytes each job's spool
folder and each saved style hold, so one server's part of the spool is a cheap sum (its share,
:class:`bot.store.job_store.JobStore`'s ``server_share``). An older database gets the columns at 0; the
store fills them from the files on disk when it opens (it measures the spool at every open).
Version 6: style events (:mod:`bot.core.event`), their entries (each a job) and votes.
"""

from __future__ import annotations

import sqlite3
from typing import Any

__all__ = ["SCHEMA", "SCHEMA_VERSION", "upgrade", "transaction"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- acceptance order
    job_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    user_id INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    guild_id INTEGER,
    application_id INTEGER NOT NULL,
    interaction_token TEXT NOT NULL,         -- cleared once the job has ended
    token_created_at REAL NOT NULL,
    upload_limit INTEGER NOT NULL,
    params TEXT NOT NULL,                    -- StylizeParams.to_dict() as JSON
    style_label TEXT NOT NULL,
    preset TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    status_message_id INTEGER,
    position INTEGER,                        -- last announced place in line (waiting jobs)
    attempts INTEGER NOT NULL DEFAULT 0,     -- starts on a worker, retries and restarts included
    restarts INTEGER NOT NULL DEFAULT 0,     -- times put back in line by a restart
    started_at REAL,
    finished_at REAL,
    worker TEXT,
    failure TEXT,                            -- the reason the requester reads
    failure_kind TEXT,
    cancelled_by INTEGER,
    notice TEXT,                             -- version 1-2 only (folded into state since version 3)
    route TEXT,                              -- delivering: route being tried; delivered: route used
    message_id INTEGER,                      -- the message that delivered the result (or the notice)
    delivered_at REAL,
    -- version 4 (added to older tables by upgrade())
    parent_id TEXT,                          -- the job whose result's button made this one
    remix TEXT,                              -- that button: again, more, less, colours, sharper
    style2_label TEXT,                       -- a second, blended style (NULL: one style)
    compare INTEGER NOT NULL DEFAULT 0,      -- the result also shows "before | after"
    kept_until REAL,                         -- delivered: pictures kept in the spool until then
    -- version 5
    spool_bytes INTEGER NOT NULL DEFAULT 0   -- bytes in the job's spool folder (inputs, result)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_guild_bytes ON jobs (guild_id, spool_bytes);  -- a server's part of the spool
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- version 2: per-server settings and the daily quota's count
CREATE TABLE IF NOT EXISTS guild_settings (
    guild_id INTEGER PRIMARY KEY,
    channels TEXT NOT NULL DEFAULT '[]',     -- JSON list of channel ids; empty: everywhere
    max_preset TEXT,                         -- NULL: the operator's ceiling
    daily_jobs INTEGER,                      -- NULL: the operator's default
    updated_at REAL NOT NULL,
    updated_by INTEGER
);
CREATE TABLE IF NOT EXISTS usage (           -- accepted jobs, for "jobs per member per day"
    job_id TEXT PRIMARY KEY,
    guild_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_member ON usage (guild_id, user_id, at);
-- version 4: "Use as my style": one picture per member and server, its file in the spool
CREATE TABLE IF NOT EXISTS saved_styles (
    guild_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    label TEXT NOT NULL,                     -- the picture's file name, for messages
    saved_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    bytes INTEGER NOT NULL DEFAULT 0,        -- version 5: the picture's size in the spool
    PRIMARY KEY (guild_id, user_id)
);
-- version 6: style events, their entries and votes (bot.store.events)
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    guild_id INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    host_id INTEGER NOT NULL,
    title TEXT NOT NULL,
    style_label TEXT NOT NULL,
    library_style TEXT,                      -- NULL: the style picture is style_png
    style_png BLOB,                          -- an attached style, as the bot prepared it
    preset TEXT NOT NULL,
    per_member INTEGER NOT NULL,
    closes_at REAL NOT NULL,
    created_at REAL NOT NULL,
    upload_limit INTEGER NOT NULL,
    state TEXT NOT NULL,                     -- open, closed, cancelled
    card_message_id INTEGER,
    thread_id INTEGER,
    scheduled_event_id INTEGER,
    gallery_message_id INTEGER
);
CREATE INDEX IF NOT EXISTS events_open ON events (state, closes_at);
CREATE TABLE IF NOT EXISTS event_entries (
    job_id TEXT PRIMARY KEY,                 -- the entry's job (jobs.job_id; that record may be purged first)
    event_id TEXT NOT NULL,
    user_id INTEGER NOT NULL,
    author TEXT NOT NULL,
    entered_at REAL NOT NULL,
    message_id INTEGER,
    removed INTEGER NOT NULL DEFAULT 0,
    thumb BLOB                               -- a small JPEG of the result, for the gallery
);
CREATE INDEX IF NOT EXISTS event_entries_event ON event_entries (event_id, user_id);
CREATE TABLE IF NOT EXISTS event_votes (
    event_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    voter_id INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (job_id, voter_id)
);
CREATE INDEX IF NOT EXISTS event_votes_voter ON event_votes (event_id, voter_id);
"""
SCHEMA_VERSION = 6
# Version 4: columns added to the jobs table of an older database.
JOBS_COLUMNS_4 = (("parent_id", "TEXT"), ("remix", "TEXT"), ("style2_label", "TEXT"),
                  ("compare", "INTEGER NOT NULL DEFAULT 0"), ("kept_until", "REAL"))
# Version 5: columns added to older tables (the sizes are filled in by the store when it opens).
JOBS_COLUMNS_5 = (("spool_bytes", "INTEGER NOT NULL DEFAULT 0"),)
SAVED_STYLES_COLUMNS_5 = (("bytes", "INTEGER NOT NULL DEFAULT 0"),)
# Version 3: one lifecycle. Old states (and a failed job's notice column) to new states.
MIGRATE_TO_3 = """
UPDATE jobs SET state = 'waiting' WHERE state = 'queued';
UPDATE jobs SET state = CASE notice WHEN 'sending' THEN 'notifying' WHEN 'sent' THEN 'notified'
                                    WHEN 'unsent' THEN 'unnotified' ELSE 'failed' END
    WHERE state = 'failed';
"""



def upgrade(db: sqlite3.Connection) -> None:
    """Create what is missing and bring an older database's records to this version."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version and version < SCHEMA_VERSION:  # CREATE TABLE IF NOT EXISTS leaves an old table as it is
        _add_columns(db, "jobs", JOBS_COLUMNS_4 + JOBS_COLUMNS_5)
        _add_columns(db, "saved_styles", SAVED_STYLES_COLUMNS_5)
    db.executescript(SCHEMA)  # after the columns: its indexes may name new ones
    if version < 3:
        with transaction(db):
            for statement in MIGRATE_TO_3.split(";"):
                if statement.strip():
                    db.execute(statement)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _add_columns(db: sqlite3.Connection, table: str, columns: tuple[tuple[str, str], ...]) -> None:
    """Add the ``columns`` an older ``table`` lacks (a table not there yet is created whole by SCHEMA)."""
    have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    if not have:
        return
    for name, kind in columns:
        if name not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


class transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


