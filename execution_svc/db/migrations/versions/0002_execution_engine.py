"""Execution engine: runs, run_steps, step_attempts, tasks (the queue), events, idempotency keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)
ID = sa.String(40)
TENANT = sa.String(64)
STEP_ID = sa.String(200)
STATUS = sa.String(16)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", ID, nullable=False),
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("workflow_id", sa.String(64), nullable=False),
        sa.Column("workflow_name", sa.String(200), nullable=False),
        sa.Column("workflow_version", sa.Integer(), nullable=False),
        sa.Column("workflow", JSON, nullable=False),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("input", JSON, nullable=True),
        sa.Column("output", JSON, nullable=True),
        sa.Column("error", JSON, nullable=True),
        sa.Column("trigger", STATUS, nullable=False),
        sa.Column("triggered_by", sa.String(200), nullable=False),
        sa.Column("parent_run_id", ID, nullable=True),
        sa.Column("parent_step_id", STEP_ID, nullable=True),
        sa.Column("pause_reason", STATUS, nullable=True),
        sa.Column("last_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("completed_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_index("ix_runs_tenant_id_id", "runs", ["tenant_id", "id"])
    op.create_index("ix_runs_tenant_id_workflow_id_id", "runs", ["tenant_id", "workflow_id", "id"])
    op.create_index("ix_runs_tenant_id_status_id", "runs", ["tenant_id", "status", "id"])
    op.create_index("ix_runs_parent_run_id", "runs", ["parent_run_id"])

    op.create_table(
        "run_steps",
        sa.Column("run_id", ID, nullable=False),
        sa.Column("step_id", STEP_ID, nullable=False),
        sa.Column("item_index", sa.Integer(), nullable=False),
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("retry_base", sa.Integer(), nullable=False),
        sa.Column("lease_losses", sa.Integer(), nullable=False),
        sa.Column("input", JSON, nullable=True),
        sa.Column("output", JSON, nullable=True),
        sa.Column("error", JSON, nullable=True),
        sa.Column("agent", sa.String(200), nullable=True),
        sa.Column("signal", sa.String(200), nullable=True),
        sa.Column("items_total", sa.Integer(), nullable=True),
        sa.Column("ready_at", TS, nullable=True),
        sa.Column("deadline_at", TS, nullable=True),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("completed_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_steps_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "step_id", "item_index", name=op.f("pk_run_steps")),
    )

    op.create_table(
        "step_attempts",
        sa.Column("run_id", ID, nullable=False),
        sa.Column("step_id", STEP_ID, nullable=False),
        sa.Column("item_index", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("error", JSON, nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("completed_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_step_attempts_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "step_id", "item_index", "attempt", name=op.f("pk_step_attempts")),
    )

    op.create_table(
        "tasks",
        sa.Column("id", ID, nullable=False),
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("run_id", ID, nullable=False),
        sa.Column("step_id", STEP_ID, nullable=False),
        sa.Column("item_index", sa.Integer(), nullable=False),
        sa.Column("kind", STATUS, nullable=False),
        sa.Column("state", STATUS, nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("available_at", TS, nullable=False),
        sa.Column("lease_owner", sa.String(100), nullable=True),
        sa.Column("lease_expires_at", TS, nullable=True),
        sa.Column("fencing_token", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_tasks_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("run_id", "step_id", "item_index", name=op.f("uq_tasks_run_id_step_id_item_index")),
    )
    ready = sa.text("state = 'ready'")
    leased = sa.text("state = 'leased'")
    op.create_index(
        "ix_tasks_claim",
        "tasks",
        [sa.literal_column("priority DESC"), "available_at"],
        postgresql_where=ready,
        sqlite_where=ready,
    )
    op.create_index("ix_tasks_due", "tasks", ["available_at"], postgresql_where=ready, sqlite_where=ready)
    op.create_index(
        "ix_tasks_lease_expires_at", "tasks", ["lease_expires_at"], postgresql_where=leased, sqlite_where=leased
    )
    op.create_index("ix_tasks_lease_owner", "tasks", ["lease_owner"])

    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("run_id", ID, nullable=False),
        sa.Column("workflow_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("step_id", STEP_ID, nullable=True),
        sa.Column("timestamp", TS, nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_events_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("run_id", "seq", name=op.f("uq_events_run_id_seq")),
    )
    op.create_index("ix_events_tenant_id_id", "events", ["tenant_id", "id"])

    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("response", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("events")
    op.drop_table("tasks")
    op.drop_table("step_attempts")
    op.drop_table("run_steps")
    op.drop_table("runs")
