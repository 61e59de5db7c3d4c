"""Workflows with immutable versions and tags, tenant templates, the audit log, agent health probes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from flowforge_common.orm import JSONType, UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE_ROWS = sa.text("deleted_at IS NULL")


def code_point_string(length: int) -> sa.types.TypeEngine[str]:
    # Names compare by code point on PostgreSQL too (see workflow_svc.db.orm.code_point_string).
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "workflows",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("name", code_point_string(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("etag", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("deleted_at", UTCDateTime, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_workflows"),
        sa.CheckConstraint("status IN ('active', 'archived')", name="ck_workflows_status"),
    )
    op.create_index(
        "uq_workflows_tenant_id_name_live",
        "workflows",
        ["tenant_id", "name"],
        unique=True,
        postgresql_where=LIVE_ROWS,
        sqlite_where=LIVE_ROWS,
    )
    for name, columns in [
        ("ix_workflows_tenant_id_created_at_live", ["tenant_id", "created_at", "id"]),
        ("ix_workflows_tenant_id_updated_at_live", ["tenant_id", "updated_at", "id"]),
        ("ix_workflows_tenant_id_status_live", ["tenant_id", "status", "created_at", "id"]),
    ]:
        op.create_index(name, "workflows", columns, postgresql_where=LIVE_ROWS, sqlite_where=LIVE_ROWS)

    op.create_table(
        "workflow_versions",
        sa.Column("workflow_id", sa.String(40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("definition", JSONType, nullable=False),
        sa.Column("etag", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["workflows.id"], name="fk_workflow_versions_workflow_id_workflows", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("workflow_id", "version", name="pk_workflow_versions"),
        sa.CheckConstraint("status IN ('active', 'archived')", name="ck_workflow_versions_status"),
    )

    op.create_table(
        "workflow_tags",
        sa.Column("workflow_id", sa.String(40), nullable=False),
        sa.Column("tag", sa.String(50), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["workflows.id"], name="fk_workflow_tags_workflow_id_workflows", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("workflow_id", "tag", name="pk_workflow_tags"),
    )
    op.create_index("ix_workflow_tags_tenant_id_tag", "workflow_tags", ["tenant_id", "tag", "workflow_id"])

    op.create_table(
        "workflow_templates",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("name", code_point_string(63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("parameters_schema", JSONType, nullable=False),
        sa.Column("definition", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "name", name="pk_workflow_templates"),
    )

    op.create_table(
        "audit_entries",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("entity_type", sa.String(32), nullable=False),
        sa.Column("entity_id", sa.String(128), nullable=False),
        sa.Column("change", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_entries"),
    )
    op.create_index("ix_audit_entries_tenant_id_created_at", "audit_entries", ["tenant_id", "created_at", "id"])
    op.create_index(
        "ix_audit_entries_tenant_id_entity_id", "audit_entries", ["tenant_id", "entity_id", "created_at", "id"]
    )

    op.create_table(
        "agent_health_probes",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("agent_id", sa.String(40), nullable=False),
        sa.Column("healthy", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("checked_at", UTCDateTime, nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_agent_health_probes_agent_id_agents", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_agent_health_probes"),
    )
    op.create_index(
        "ix_agent_health_probes_tenant_id_agent_id",
        "agent_health_probes",
        ["tenant_id", "agent_id", "checked_at", "id"],
    )


def downgrade() -> None:
    op.drop_table("agent_health_probes")
    op.drop_table("audit_entries")
    op.drop_table("workflow_templates")
    op.drop_table("workflow_tags")
    op.drop_table("workflow_versions")
    op.drop_table("workflows")
