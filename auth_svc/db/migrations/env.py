"""Alembic environment of auth_svc."""

from auth_svc.db.orm import metadata
from flowforge_common.migrations import run_migrations

run_migrations(metadata)
