"""Database engine and migrations: SQLite (embedded default) or PostgreSQL, same code.

On PostgreSQL every service owns a schema of its own (`search_path` is set per connection);
on SQLite every service owns a file under the data directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

logger = logging.getLogger(__name__)


def normalise_url(url: str) -> str:
    """Accepts `postgres://` and `postgresql://` and picks the async drivers."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed.render_as_string(hide_password=False)


def is_postgres(engine: AsyncEngine) -> bool:
    """True on PostgreSQL."""
    return engine.dialect.name == "postgresql"


def create_engine(url: str | None, *, schema: str, sqlite_path: Path, pool_size: int = 10) -> AsyncEngine:
    """Engine for one service: its PostgreSQL schema, or its SQLite file when `url` is None."""
    if url is None:
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite+aiosqlite:///{sqlite_path}"
    url = normalise_url(url)
    if url.startswith("postgresql"):
        engine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={"server_settings": {"search_path": schema, "application_name": schema}},
        )
        event.listen(engine.sync_engine, "checkout", _refuse_closed_connection)
        return engine
    engine = create_async_engine(url, pool_pre_ping=True, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def _refuse_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Pool checkout on PostgreSQL: a connection the server closed (a restart, an idle
    timeout, `pg_terminate_backend`) is replaced before use. asyncpg sees the socket close as
    soon as the loop runs, so this costs no round trip, where `pool_pre_ping` costs three
    (BEGIN, a ping, ROLLBACK) on every checkout."""
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the server closed this connection")


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def migrate(engine: AsyncEngine, *, migrations: Path, schema: str) -> None:
    """Upgrades the service's schema to head. On PostgreSQL an advisory lock keeps replicas
    that start together from migrating at once."""
    async with engine.begin() as conn:
        if is_postgres(engine):
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": schema})
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        await conn.run_sync(_upgrade, migrations)
    logger.info("database migrated", extra={"schema": schema})


def _upgrade(connection: Connection, migrations: Path) -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def ping(engine: AsyncEngine) -> bool:
    """True when the database answers."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:
        logger.warning("database ping failed", exc_info=True)
        return False
    return True
