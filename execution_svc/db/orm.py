"""Tables of execution_svc: runs, their steps and attempts, the task queue, the event log and
idempotency keys. Every table carries `tenant_id`; run-owned rows cascade with their run."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
    and_,
    text,
)

from flowforge_common.orm import JSONType, UTCDateTime, make_metadata

metadata = make_metadata()

ID = String(40)
TENANT = String(64)
STEP_ID = String(200)
STATUS = String(16)

runs = Table(
    "runs",
    metadata,
    Column("id", ID, primary_key=True),
    Column("tenant_id", TENANT, nullable=False),
    Column("workflow_id", String(64), nullable=False),
    Column("workflow_name", String(200), nullable=False),
    Column("workflow_version", Integer, nullable=False),
    # The workflow version as it was when the run started: edits never reach runs in flight.
    Column("workflow", JSONType, nullable=False),
    Column("status", STATUS, nullable=False),
    Column("input", JSONType, nullable=True),
    Column("output", JSONType, nullable=True),
    Column("error", JSONType, nullable=True),
    Column("trigger", STATUS, nullable=False),
    Column("triggered_by", String(200), nullable=False),
    Column("parent_run_id", ID, nullable=True),
    Column("parent_step_id", STEP_ID, nullable=True),
    Column("pause_reason", STATUS, nullable=True),
    # Last event seq written; the run row lock serialises writers, so seqs have no gaps.
    Column("last_seq", BigInteger, nullable=False, server_default=text("0")),
    # Bumped by every transaction that changes the run or its step rows (under the run lock):
    # an engine holding the state it last wrote reuses it while the version still matches.
    Column("state_version", BigInteger, nullable=False, server_default=text("0")),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("completed_at", UTCDateTime, nullable=True),
    # Ids are time-ordered, so (tenant_id, id) pages newest-first without a created_at sort.
    Index("ix_runs_tenant_id_id", "tenant_id", "id"),
    Index("ix_runs_tenant_id_workflow_id_id", "tenant_id", "workflow_id", "id"),
    Index("ix_runs_tenant_id_status_id", "tenant_id", "status", "id"),
    Index("ix_runs_parent_run_id", "parent_run_id"),
)

run_steps = Table(
    "run_steps",
    metadata,
    Column("run_id", ID, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("step_id", STEP_ID, nullable=False),
    # -1 for the step itself; 0.. for its `for_each` items.
    Column("item_index", Integer, nullable=False),
    Column("tenant_id", TENANT, nullable=False),
    Column("status", STATUS, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("retry_base", Integer, nullable=False),
    Column("lease_losses", Integer, nullable=False),
    Column("input", JSONType, nullable=True),
    Column("output", JSONType, nullable=True),
    Column("error", JSONType, nullable=True),
    Column("agent", String(200), nullable=True),
    Column("signal", String(200), nullable=True),
    Column("items_total", Integer, nullable=True),
    Column("ready_at", UTCDateTime, nullable=True),
    Column("deadline_at", UTCDateTime, nullable=True),
    Column("started_at", UTCDateTime, nullable=True),
    Column("completed_at", UTCDateTime, nullable=True),
    PrimaryKeyConstraint("run_id", "step_id", "item_index"),
)

step_attempts = Table(
    "step_attempts",
    metadata,
    Column("run_id", ID, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("step_id", STEP_ID, nullable=False),
    Column("item_index", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("tenant_id", TENANT, nullable=False),
    Column("status", STATUS, nullable=False),
    Column("error", JSONType, nullable=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("completed_at", UTCDateTime, nullable=True),
    PrimaryKeyConstraint("run_id", "step_id", "item_index", "attempt"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", ID, primary_key=True),
    Column("tenant_id", TENANT, nullable=False),
    Column("run_id", ID, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("step_id", STEP_ID, nullable=False),
    Column("item_index", Integer, nullable=False),
    Column("kind", STATUS, nullable=False),
    Column("state", STATUS, nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("available_at", UTCDateTime, nullable=False),
    Column("lease_owner", String(100), nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    # Bumped on every lease: a result is accepted only with the current token.
    Column("fencing_token", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # `<tenant_id>:<key value>` of a step with `concurrency`: at most `concurrency_limit` leased
    # tasks share one key (checked when tasks are claimed).
    Column("concurrency_key", String(600), nullable=True),
    Column("concurrency_limit", Integer, nullable=True),
    # One task per step row: a step can never be queued twice.
    UniqueConstraint("run_id", "step_id", "item_index"),
    Index("ix_tasks_lease_owner", "lease_owner"),
)
_KEYED_AND_LEASED = and_(tasks.c.concurrency_key.is_not(None), tasks.c.state == "leased")
# Counting the leased tasks of a concurrency key at claim time stays cheap however long the queue.
Index(
    "ix_tasks_concurrency_key",
    tasks.c.concurrency_key,
    postgresql_where=_KEYED_AND_LEASED,
    sqlite_where=_KEYED_AND_LEASED,
)
_READY = tasks.c.state == "ready"
# The claim query walks ready tasks by priority, then age; partial, so leased and held rows
# cost the index nothing.
Index(
    "ix_tasks_claim",
    tasks.c.priority.desc(),
    tasks.c.available_at,
    postgresql_where=_READY,
    sqlite_where=_READY,
)
# The earliest future task tells an idle worker how long it may sleep.
Index("ix_tasks_due", tasks.c.available_at, postgresql_where=_READY, sqlite_where=_READY)
# The reaper finds expired leases.
Index(
    "ix_tasks_lease_expires_at",
    tasks.c.lease_expires_at,
    postgresql_where=tasks.c.state == "leased",
    sqlite_where=tasks.c.state == "leased",
)

events = Table(
    "events",
    metadata,
    # Global insertion order, for streams that span runs (WatchEvents).
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("tenant_id", TENANT, nullable=False),
    Column("run_id", ID, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("workflow_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("type", String(64), nullable=False),
    Column("step_id", STEP_ID, nullable=True),
    Column("timestamp", UTCDateTime, nullable=False),
    Column("data", JSONType, nullable=False),
    UniqueConstraint("run_id", "seq"),
    Index("ix_events_tenant_id_id", "tenant_id", "id"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("tenant_id", TENANT, nullable=False),
    Column("key", String(255), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("response", JSONType, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("tenant_id", "key"),
    Index("ix_idempotency_keys_created_at", "created_at"),
)
