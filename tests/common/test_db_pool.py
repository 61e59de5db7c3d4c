"""The PostgreSQL pool replaces connections the server closed (checked at checkout, no ping)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
from sqlalchemy import text

from flowforge_common import db


async def test_a_connection_the_server_closed_is_replaced_at_checkout(postgres_database: str, tmp_path: Path) -> None:
    name = f"pool_{uuid.uuid4().hex[:10]}"
    engine = db.create_engine(postgres_database, schema=name, sqlite_path=tmp_path / "unused.db", pool_size=1)
    try:
        async with engine.connect() as connection:
            first = await connection.scalar(text("SELECT pg_backend_pid()"))
        admin = await asyncpg.connect(postgres_database)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
        finally:
            await admin.close()
        # asyncpg notices the closed socket as soon as the loop runs.
        for _ in range(100):
            await asyncio.sleep(0.01)
            if engine.pool.checkedin() == 1:
                break
        async with engine.connect() as connection:
            second = await connection.scalar(text("SELECT pg_backend_pid()"))
        assert second != first
    finally:
        await engine.dispose()

