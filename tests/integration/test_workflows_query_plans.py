"""Workflow listings stay index-driven at 100k workflows per tenant (PostgreSQL only).

The test loads 100k workflows (with a version and a tag each) for one tenant plus 10k for
another, with one multi-row `INSERT ... SELECT generate_series` per table, ANALYZEs, then
EXPLAINs the exact statements `list_workflows` runs: every plan must reach `workflows` through
an index and contain no Seq Scan. It takes a few seconds, so it runs in CI with the rest (it
needs PostgreSQL, which CI provides; elsewhere it is skipped when PostgreSQL is not there).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import ClauseElement, Executable, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from flowforge_common import db
from workflow_svc.db.workflows import list_workflows_statement
from workflow_svc.domain.models import WorkflowCursor, WorkflowFilter, WorkflowOrder, WorkflowStatus
from workflow_svc.server import MIGRATIONS

TENANT = "ten_big"
WORKFLOWS = 100_000
PAGE = 21  # what a default page asks for: 20 rows and one more to know whether another follows

WORKFLOW_ID = "'wf_' || :tenant || '_' || lpad(g::text, 7, '0')"
BULK_LOAD = [
    # Ids and creation times both follow g, as time-sortable ids do; every 20th workflow is
    # archived and every 100th deleted; updated_at is shuffled against created_at.
    f"""
    INSERT INTO workflows (id, tenant_id, name, status, latest_version, etag, created_at, updated_at, created_by,
                           deleted_at)
    SELECT {WORKFLOW_ID}, :tenant, 'workflow-' || lpad(g::text, 6, '0'),
           CASE WHEN g % 20 = 0 THEN 'archived' ELSE 'active' END, 1, md5(g::text),
           timestamptz '2026-01-01' + g * interval '1 second',
           timestamptz '2026-01-01' + ((g * 7919) % :count) * interval '1 second',
           'usr_bulk', CASE WHEN g % 100 = 0 THEN timestamptz '2026-06-01' END
    FROM generate_series(1, :count) AS g
    """,
    f"""
    INSERT INTO workflow_versions (workflow_id, version, tenant_id, status, definition, etag, created_at)
    SELECT {WORKFLOW_ID}, 1, :tenant, CASE WHEN g % 20 = 0 THEN 'archived' ELSE 'active' END,
           '{{"name": "w", "steps": [{{"id": "a", "type": "transform"}}]}}'::jsonb, md5(g::text),
           timestamptz '2026-01-01' + ((g * 7919) % :count) * interval '1 second'
    FROM generate_series(1, :count) AS g
    """,
    # One tag per workflow: `env-prod` on a third of them, else one of 50 teams (about 1.3% each).
    f"""
    INSERT INTO workflow_tags (workflow_id, tag, tenant_id)
    SELECT {WORKFLOW_ID}, CASE WHEN g % 3 = 0 THEN 'env-prod' ELSE 'team-' || (g % 50) END, :tenant
    FROM generate_series(1, :count) AS g
    """,
]

CURSOR_TIME = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=50_000)
LISTINGS: dict[str, tuple[WorkflowFilter, WorkflowOrder, WorkflowCursor | None]] = {
    "default order": (WorkflowFilter(), WorkflowOrder.CREATED_DESC, None),
    "default order, a later page": (
        WorkflowFilter(),
        WorkflowOrder.CREATED_DESC,
        WorkflowCursor(WorkflowOrder.CREATED_DESC, CURSOR_TIME, f"wf_{TENANT}_0050000"),
    ),
    "name prefix": (WorkflowFilter(name_prefix="workflow-0421"), WorkflowOrder.CREATED_DESC, None),
    "tag filter (1.3% of rows)": (WorkflowFilter(tag="team-7"), WorkflowOrder.CREATED_DESC, None),
    "tag filter (33% of rows)": (WorkflowFilter(tag="env-prod"), WorkflowOrder.CREATED_DESC, None),
    "status filter (archived, 5%)": (WorkflowFilter(status=WorkflowStatus.ARCHIVED), WorkflowOrder.CREATED_DESC, None),
    "status filter (active, 95%)": (WorkflowFilter(status=WorkflowStatus.ACTIVE), WorkflowOrder.CREATED_DESC, None),
    "name asc, a later page": (
        WorkflowFilter(),
        WorkflowOrder.NAME_ASC,
        WorkflowCursor(WorkflowOrder.NAME_ASC, "workflow-050000", f"wf_{TENANT}_0050000"),
    ),
    "updated_at desc, a later page": (
        WorkflowFilter(),
        WorkflowOrder.UPDATED_DESC,
        WorkflowCursor(WorkflowOrder.UPDATED_DESC, CURSOR_TIME, f"wf_{TENANT}_0050000"),
    ),
}


class Explain(Executable, ClauseElement):
    """`EXPLAIN <statement>`, with the statement's parameters bound as usual."""

    inherit_cache = False

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement


@compiles(Explain, "postgresql")
def _compile_explain(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXPLAIN " + compiler.process(element.statement, **kw)


@pytest.fixture
async def big_tenant(postgres_database: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A migrated schema holding 100k workflows of TENANT and 10k of another tenant."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = db.create_engine(postgres_database, schema=schema, sqlite_path=tmp_path / "unused.db")
    try:
        await db.migrate(engine, migrations=MIGRATIONS, schema=schema)
        async with engine.begin() as conn:
            for tenant, count in [(TENANT, WORKFLOWS), ("ten_small", WORKFLOWS // 10)]:
                for statement in BULK_LOAD:
                    await conn.execute(text(statement), {"tenant": tenant, "count": count})
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("ANALYZE workflows, workflow_versions, workflow_tags"))
        yield engine
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await engine.dispose()


@pytest.mark.timeout(30)
async def test_workflow_listings_use_indexes_at_100k_workflows(big_tenant: AsyncEngine) -> None:
    started = time.perf_counter()
    plans: dict[str, str] = {}
    async with big_tenant.connect() as conn:
        for label, (workflow_filter, order, after) in LISTINGS.items():
            statement = list_workflows_statement(TENANT, workflow_filter, order=order, after=after, limit=PAGE)
            plans[label] = "\n".join((await conn.execute(Explain(statement))).scalars())
            assert len((await conn.execute(statement)).all()) == PAGE, label

    for label, plan in plans.items():
        assert "Seq Scan" not in plan, f"{label}:\n{plan}"
        assert any(
            scan in line and " on workflows" in line
            for line in plan.splitlines()
            for scan in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan")
        ), f"{label}:\n{plan}"
    assert time.perf_counter() - started < 5, "EXPLAINs and first pages took too long"
