"""tasks.concurrency_key / concurrency_limit: keyed concurrency limits across runs (`concurrency:
{key, limit}` on a step), enforced when workers claim tasks.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("concurrency_key", sa.String(length=600), nullable=True))
    op.add_column("tasks", sa.Column("concurrency_limit", sa.Integer(), nullable=True))
    op.create_index(
        "ix_tasks_concurrency_key",
        "tasks",
        ["concurrency_key"],
        postgresql_where=sa.text("concurrency_key IS NOT NULL AND state = 'leased'"),
        sqlite_where=sa.text("concurrency_key IS NOT NULL AND state = 'leased'"),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_concurrency_key", table_name="tasks")
    op.drop_column("tasks", "concurrency_limit")
    op.drop_column("tasks", "concurrency_key")
