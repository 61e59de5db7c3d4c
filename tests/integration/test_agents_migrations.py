"""workflow_svc's migrations build exactly the schema its ORM describes, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from flowforge_common import db
from tests.fixtures.databases import DatabaseTarget
from workflow_svc.db.orm import metadata
from workflow_svc.server import MIGRATIONS
from workflow_svc.settings import WorkflowSettings


def schema_drift(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_migrations_match_the_orm(database: DatabaseTarget) -> None:
    settings = WorkflowSettings(database_url=database.url, db_schema=database.schema, data_dir=database.data_dir)
    engine = db.create_engine(settings.database_url, schema=settings.schema(), sqlite_path=settings.sqlite_path())
    try:
        await db.migrate(engine, migrations=MIGRATIONS, schema=settings.schema())
        async with engine.connect() as conn:
            assert await conn.run_sync(schema_drift) == []
    finally:
        await engine.dispose()
