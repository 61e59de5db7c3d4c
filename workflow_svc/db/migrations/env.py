"""Alembic environment of workflow_svc."""

from flowforge_common.migrations import run_migrations
from workflow_svc.db.orm import metadata

run_migrations(metadata)
