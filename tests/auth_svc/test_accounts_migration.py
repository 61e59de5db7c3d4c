"""Migration 0003 (accounts per tenant) on a database that already has data, on SQLite and
PostgreSQL: nothing that references a user is lost (SQLite rebuilds the table, and its
cascading foreign keys would otherwise take refresh tokens and API keys along), the constraints
survive, and an email becomes unique per tenant instead of across FlowForge."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_svc.server import MIGRATIONS
from auth_svc.settings import AuthSettings
from flowforge_common import db
from tests.fixtures.databases import DatabaseTarget

NOW = "2026-01-01 00:00:00"


def _alembic(connection: Connection, action: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    getattr(command, action)(config, revision)


@pytest.fixture
async def engine(database: DatabaseTarget) -> AsyncIterator[AsyncEngine]:
    settings = AuthSettings(database_url=database.url, db_schema=database.schema, data_dir=database.data_dir)
    engine = db.create_engine(settings.database_url, schema=settings.schema(), sqlite_path=settings.sqlite_path())
    async with engine.begin() as conn:
        if database.backend == "postgresql":
            await conn.execute(text(f'CREATE SCHEMA "{database.schema}"'))
        await conn.run_sync(_alembic, "upgrade", "0002")
    yield engine
    await engine.dispose()


async def migrate(engine: AsyncEngine, action: str, revision: str) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_alembic, action, revision)


async def execute(engine: AsyncEngine, sql: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql))


async def count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


def user(user_id: str, tenant_id: str, email: str) -> str:
    values = f"'{user_id}', '{tenant_id}', '{email}', 'h', 'owner', '', true, 1, '{NOW}', '{NOW}'"
    return f"INSERT INTO users VALUES ({values})"


async def test_upgrading_keeps_every_row_and_makes_email_unique_per_tenant(engine: AsyncEngine) -> None:
    await execute(engine, f"INSERT INTO tenants VALUES ('ten_a', 'a', '{NOW}'), ('ten_b', 'b', '{NOW}')")
    await execute(engine, user("usr_a", "ten_a", "ada@example.com"))
    await execute(
        engine,
        f"INSERT INTO refresh_tokens VALUES ('rft_a', 'ten_a', 'usr_a', 'fam_a', '{'a' * 64}', '{NOW}', '{NOW}', "
        "NULL, NULL)",
    )
    await execute(
        engine,
        f"INSERT INTO api_keys VALUES ('key_a', 'ten_a', 'usr_a', 'k', 'ffk_aaaaaaaa', '{'b' * 64}', 'runs:read', "
        f"'{NOW}', NULL, NULL, NULL)",
    )
    with pytest.raises(IntegrityError):  # before: one account per email across FlowForge
        await execute(engine, user("usr_b", "ten_b", "ada@example.com"))

    await migrate(engine, "upgrade", "head")

    assert [await count(engine, table) for table in ("users", "refresh_tokens", "api_keys")] == [1, 1, 1]
    await execute(engine, user("usr_b", "ten_b", "ada@example.com"))
    with pytest.raises(IntegrityError):
        await execute(engine, user("usr_c", "ten_a", "ada@example.com"))
    with pytest.raises(IntegrityError):  # the lower-case check survived the rebuild
        await execute(engine, user("usr_d", "ten_a", "Bob@example.com"))
    with pytest.raises(IntegrityError):  # and so did the foreign keys
        await execute(engine, user("usr_e", "ten_nowhere", "eve@example.com"))

    # Down again once no email has accounts in two tenants; the tokens and keys stay.
    await execute(engine, "DELETE FROM users WHERE id = 'usr_b'")
    await migrate(engine, "downgrade", "0002")
    assert [await count(engine, table) for table in ("users", "refresh_tokens", "api_keys")] == [1, 1, 1]
    with pytest.raises(IntegrityError):
        await execute(engine, user("usr_b", "ten_b", "ada@example.com"))
    await migrate(engine, "upgrade", "head")
    await execute(engine, user("usr_b", "ten_b", "ada@example.com"))
