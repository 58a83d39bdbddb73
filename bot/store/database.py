"""The job store's SQLite connection, on a thread of its own (stdlib :mod:`sqlite3`), never
on the event loop. Calls run in the order they were made, so a fire-and-forget
:meth:`Database._submit` lands before any later awaited call."""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import logging
import sqlite3
from pathlib import Path
from typing import Any, Callable, TypeVar

from bot.store.errors import StoreError

__all__ = ["Database"]

log = logging.getLogger(__name__)

T = TypeVar("T")
DatabaseT = TypeVar("DatabaseT", bound="Database")


class Database(abc.ABC):
    """One connection used from one thread; subclasses open it in :meth:`_open`."""

    def __init__(self, db_path: str | Path) -> None:
        self.db_path = Path(db_path).expanduser()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None  # used only on the executor's thread
        self._pending: set[concurrent.futures.Future] = set()
        self.last_error: str | None = None  # the latest failed write, for /healthz

    @abc.abstractmethod
    def _open(self) -> None:
        """Connect (on the store's thread) and set ``self._db``."""

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError("the job store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:  # a broken or full database: one kind of failure for callers
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise StoreError(f"the job store failed: {exc}") from exc

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the store's thread without waiting; failures are logged."""
        if self._executor is None:
            return
        future = self._executor.submit(fn, *args)
        self._pending.add(future)

        def done(f: concurrent.futures.Future) -> None:
            self._pending.discard(f)
            exc = f.exception()
            if exc is not None:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("job store update failed", extra={"error": self.last_error})
        future.add_done_callback(done)

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "the job store is not open"
        return self._db

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="job-store")
        try:
            await self._run(self._open)
        except Exception as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise StoreError(f"the job store at {self.db_path} cannot be opened: {exc}") from exc

    async def __aenter__(self: "DatabaseT") -> "DatabaseT":
        await self.open()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            await self._run(self._close)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def flush(self) -> None:
        """Wait until every fire-and-forget update has been written."""
        if self._executor is not None:
            await self._run(lambda: None)
