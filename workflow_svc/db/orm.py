"""ORM tables of workflow_svc."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from flowforge_common.orm import JSONType, UTCDateTime, make_metadata

metadata = make_metadata()

# A partial index is the one uniqueness rule that lets a soft-deleted agent's name be reused;
# PostgreSQL and SQLite both support `WHERE` on an index.
LIVE_ROWS = text("deleted_at IS NULL")


def code_point_string(length: int) -> TypeEngine[str]:
    """A string column that sorts and compares by code point on both databases: SQLite compares
    UTF-8 bytes, and PostgreSQL's "C" collation does the same whatever the database's locale.
    That makes name order identical everywhere (and equal to Python's), and a name prefix an
    index range."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


class Base(DeclarativeBase):
    """Declarative base bound to workflow_svc's metadata."""

    metadata = metadata


class AgentRow(Base):
    """A registered agent; soft-deleted rows keep `deleted_at`."""

    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(String(2048))
    health_url: Mapped[str] = mapped_column(String(2048))
    auth_type: Mapped[str] = mapped_column(String(16))
    sealed_auth_config: Mapped[str | None] = mapped_column(Text)
    timeout_ms: Mapped[int]
    retry_config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16))
    etag: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(256))
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("auth_type IN ('none', 'bearer', 'apikey')", name="auth_type"),
        CheckConstraint("status IN ('active', 'inactive')", name="status"),
        Index(
            "uq_agents_tenant_id_name_live",
            "tenant_id",
            "name",
            unique=True,
            postgresql_where=LIVE_ROWS,
            sqlite_where=LIVE_ROWS,
        ),
        # Listings page by id (time-sortable) within a tenant.
        Index("ix_agents_tenant_id_id", "tenant_id", "id"),
    )


class AgentCapabilityRow(Base):
    """One capability of an agent: a row per label so that filtering is a plain indexed lookup
    on both databases (no JSON containment operators)."""

    __tablename__ = "agent_capabilities"

    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True)
    capability: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    position: Mapped[int]

    __table_args__ = (Index("ix_agent_capabilities_tenant_id_capability", "tenant_id", "capability", "agent_id"),)


class WorkflowRow(Base):
    """A workflow's head: its identity, the latest version's columns that listings filter and
    sort on, and the etag that makes saving version N+1 a compare-and-set."""

    __tablename__ = "workflows"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(code_point_string(100))
    status: Mapped[str] = mapped_column(String(16))
    latest_version: Mapped[int]
    etag: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(256))
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("status IN ('active', 'archived')", name="status"),
        # Also serves `name asc|desc` listings and `name` prefix filters.
        Index(
            "uq_workflows_tenant_id_name_live",
            "tenant_id",
            "name",
            unique=True,
            postgresql_where=LIVE_ROWS,
            sqlite_where=LIVE_ROWS,
        ),
        # One index per listing order, each ending in id (the tie-breaker of the keyset), and
        # one for the status filter in the default order. Partial: listings only show live rows.
        Index(
            "ix_workflows_tenant_id_created_at_live",
            "tenant_id",
            "created_at",
            "id",
            postgresql_where=LIVE_ROWS,
            sqlite_where=LIVE_ROWS,
        ),
        Index(
            "ix_workflows_tenant_id_updated_at_live",
            "tenant_id",
            "updated_at",
            "id",
            postgresql_where=LIVE_ROWS,
            sqlite_where=LIVE_ROWS,
        ),
        Index(
            "ix_workflows_tenant_id_status_live",
            "tenant_id",
            "status",
            "created_at",
            "id",
            postgresql_where=LIVE_ROWS,
            sqlite_where=LIVE_ROWS,
        ),
    )


class WorkflowVersionRow(Base):
    """One immutable version of a workflow: written once, never updated, kept after a soft
    delete (runs refer to it)."""

    __tablename__ = "workflow_versions"

    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    definition: Mapped[dict[str, Any]] = mapped_column(JSONType)
    etag: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (CheckConstraint("status IN ('active', 'archived')", name="status"),)


class WorkflowTagRow(Base):
    """One tag of a workflow's latest version: a row per tag, like agent capabilities, so the
    `tag` filter is an indexed lookup on both databases."""

    __tablename__ = "workflow_tags"

    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(50), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_workflow_tags_tenant_id_tag", "tenant_id", "tag", "workflow_id"),)


class WorkflowTemplateRow(Base):
    """A tenant's own template (the built-in ones live in code)."""

    __tablename__ = "workflow_templates"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(code_point_string(63), primary_key=True)
    description: Mapped[str] = mapped_column(Text)
    parameters_schema: Mapped[dict[str, Any]] = mapped_column(JSONType)
    definition: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(256))


class AuditEntryRow(Base):
    """One audited change of an agent, workflow or template; append-only."""

    __tablename__ = "audit_entries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64))
    entity_type: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str] = mapped_column(String(128))
    change: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        # Keyset pages, newest first, over the whole tenant or over one entity's history.
        Index("ix_audit_entries_tenant_id_created_at", "tenant_id", "created_at", "id"),
        Index("ix_audit_entries_tenant_id_entity_id", "tenant_id", "entity_id", "created_at", "id"),
    )


class AgentHealthProbeRow(Base):
    """One recorded health probe of an agent; only the most recent few are kept per agent."""

    __tablename__ = "agent_health_probes"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    healthy: Mapped[bool] = mapped_column(Boolean)
    latency_ms: Mapped[int]
    detail: Mapped[str] = mapped_column(Text)
    checked_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_agent_health_probes_tenant_id_agent_id", "tenant_id", "agent_id", "checked_at", "id"),)
