"""Transactions of execution_svc: write transactions that serialise correctly on both backends,
read transactions that never block writers, and retries of transient conflicts."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from flowforge_common.db import is_postgres

logger = logging.getLogger(__name__)

T = TypeVar("T")

# PostgreSQL: deadlock detected, serialization failure, lock not available.
_TRANSIENT_SQLSTATES = frozenset({"40P01", "40001", "55P03"})
_MAX_ATTEMPTS = 6


def use_immediate_transactions(engine: AsyncEngine) -> None:
    """SQLite: every write transaction starts with `BEGIN IMMEDIATE`.

    SQLite allows one writer. A deferred transaction that reads and then writes must upgrade
    its lock and fails with SQLITE_BUSY (no waiting) when another writer got there first;
    taking the write lock up front makes writers queue on the busy timeout instead. That is
    the single-writer equivalent of `FOR UPDATE SKIP LOCKED`: a claim runs alone. Reads use
    the `sqlite_begin="DEFERRED"` execution option and run beside writers (WAL).
    """
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine.sync_engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        # Stop the sqlite3 module from issuing its own BEGIN; we issue ours below.
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        connection.exec_driver_sql(f"BEGIN {mode}")


def _is_transient(error: DBAPIError) -> bool:
    code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    if code in _TRANSIENT_SQLSTATES:
        return True
    return "database is locked" in str(error.orig)


class Database:
    """Session factories over one engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_postgres = is_postgres(engine)
        self._writer = async_sessionmaker(engine, expire_on_commit=False)
        # Reads on PostgreSQL run in autocommit: under READ COMMITTED each statement of a
        # transaction sees its own snapshot anyway, so BEGIN and ROLLBACK would only add two
        # round trips to every read.
        reader_bind = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.is_postgres
            else engine.execution_options(sqlite_begin="DEFERRED")
        )
        self._reader = async_sessionmaker(reader_bind, expire_on_commit=False)
        self._writes: set[asyncio.Task[Any]] = set()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only session."""
        async with self._reader() as session:
            yield session

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[Any]:
        """A pooled asyncpg connection outside any transaction (PostgreSQL only): each
        statement sent on it is a transaction of its own, one round trip with no BEGIN or
        COMMIT. For the statements written to be atomic and self-checking on their own."""
        async with self.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            yield raw.driver_connection

    async def write(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Runs `work` in a write transaction and commits it; transient conflicts (deadlocks,
        serialisation failures) roll back and run `work` again with a short jittered pause,
        so `work` must be safe to repeat (it is: it only touches the database).

        The transaction is shielded from the caller's cancellation (a stopping worker, a
        client hanging up): cut in half, it could leave a pooled connection inside an open
        transaction, holding row locks on PostgreSQL or SQLite's only write lock. A cancelled
        caller stops waiting; the transaction still ends, committed or rolled back."""
        task = asyncio.ensure_future(self._write(work))
        self._writes.add(task)
        task.add_done_callback(self._write_done)
        return await asyncio.shield(task)

    def _write_done(self, task: asyncio.Task[Any]) -> None:
        self._writes.discard(task)
        if not task.cancelled():
            # Mark the outcome seen: the caller that would have seen it may be gone.
            task.exception()

    async def drain(self) -> None:
        """Waits for write transactions whose callers were cancelled (before disposing)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def _write(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                async with self._writer() as session, session.begin():
                    return await work(session)
            except DBAPIError as error:
                if attempt == _MAX_ATTEMPTS or not _is_transient(error):
                    raise
                logger.info("transient database conflict, retrying", extra={"attempt": attempt})
                await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
        raise AssertionError("unreachable")
