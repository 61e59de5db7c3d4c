"""The migrations build exactly the tables the code declares, on both backends."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from execution_svc.db.orm import metadata
from execution_svc.db.session import Database


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _index_names(connection: Connection) -> set[str]:
    return {index["name"] for index in inspect(connection).get_indexes("tasks")}


async def test_migrated_schema_matches_the_tables(engine_db: Database) -> None:
    async with engine_db.engine.connect() as connection:
        assert await connection.run_sync(_differences) == []
        assert {"ix_tasks_claim", "ix_tasks_due", "ix_tasks_lease_expires_at"} <= await connection.run_sync(
            _index_names
        )
