"""Accounts per tenant: users.email is unique within a tenant, no longer across FlowForge, and
indexed on its own for login, which looks an email up across tenants.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The tables whose rows reference users (ON DELETE CASCADE).
_REFERENCING = ("refresh_tokens", "api_keys")


@contextmanager
def _users_rebuilt() -> Iterator[None]:
    """Keeps the rows that reference users while SQLite rebuilds the table.

    SQLite cannot drop a constraint, so batch mode copies `users` into a new table and drops the
    old one. With foreign keys on (every FlowForge connection turns them on, and the pragma
    cannot change inside the migration's transaction) that drop deletes the old rows first, and
    ON DELETE CASCADE would take every refresh token and API key with them: they are saved
    before and put back after. PostgreSQL alters the table in place.
    """
    if op.get_bind().dialect.name != "sqlite":
        yield
        return
    for table in _REFERENCING:
        op.execute(f"CREATE TEMPORARY TABLE saved_{table} AS SELECT * FROM {table}")
    yield
    for table in _REFERENCING:
        op.execute(f"INSERT INTO {table} SELECT * FROM saved_{table}")
        op.execute(f"DROP TABLE saved_{table}")


def upgrade() -> None:
    with _users_rebuilt(), op.batch_alter_table("users") as batch:
        batch.drop_constraint(op.f("uq_users_email"), type_="unique")
        batch.create_unique_constraint(op.f("uq_users_tenant_id_email"), ["tenant_id", "email"])
        batch.create_index(op.f("ix_users_email"), ["email"], unique=False)


def downgrade() -> None:
    # Fails while an email has accounts in several tenants: which one keeps it is not the
    # migration's call.
    with _users_rebuilt(), op.batch_alter_table("users") as batch:
        batch.drop_index(op.f("ix_users_email"))
        batch.drop_constraint(op.f("uq_users_tenant_id_email"), type_="unique")
        batch.create_unique_constraint(op.f("uq_users_email"), ["email"])
