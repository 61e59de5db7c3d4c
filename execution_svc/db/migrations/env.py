"""Alembic environment of execution_svc."""

from execution_svc.db.orm import metadata
from flowforge_common.migrations import run_migrations

run_migrations(metadata)
