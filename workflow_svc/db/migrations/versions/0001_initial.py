"""Agents and their capabilities.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from flowforge_common.orm import JSONType, UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE_ROWS = sa.text("deleted_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("health_url", sa.String(2048), nullable=False),
        sa.Column("auth_type", sa.String(16), nullable=False),
        sa.Column("sealed_auth_config", sa.Text(), nullable=True),
        sa.Column("timeout_ms", sa.Integer(), nullable=False),
        sa.Column("retry_config", JSONType, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("etag", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("deleted_at", UTCDateTime, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_agents"),
        sa.CheckConstraint("auth_type IN ('none', 'bearer', 'apikey')", name="ck_agents_auth_type"),
        sa.CheckConstraint("status IN ('active', 'inactive')", name="ck_agents_status"),
    )
    op.create_index(
        "uq_agents_tenant_id_name_live",
        "agents",
        ["tenant_id", "name"],
        unique=True,
        postgresql_where=LIVE_ROWS,
        sqlite_where=LIVE_ROWS,
    )
    op.create_index("ix_agents_tenant_id_id", "agents", ["tenant_id", "id"])
    op.create_table(
        "agent_capabilities",
        sa.Column("agent_id", sa.String(40), nullable=False),
        sa.Column("capability", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_agent_capabilities_agent_id_agents", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("agent_id", "capability", name="pk_agent_capabilities"),
    )
    op.create_index(
        "ix_agent_capabilities_tenant_id_capability",
        "agent_capabilities",
        ["tenant_id", "capability", "agent_id"],
    )


def downgrade() -> None:
    op.drop_table("agent_capabilities")
    op.drop_table("agents")
