"""The identity audit log: what each event records (never a secret) and how it is read."""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Sequence
from typing import Any, Final, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from auth_svc.db import repository
from auth_svc.domain.models import AuditEntry, Page
from flowforge_common.auth import Principal
from flowforge_common.errors import BadRequestError, FieldViolation
from flowforge_common.ids import new_id
from flowforge_common.orm import utcnow
from flowforge_common.pagination import clamp_limit, decode_page_token, encode_page_token

MASK: Final = "***"
# Field names whose values never reach the audit log, whatever the event.
SECRET_FIELDS: Final = frozenset(
    {"password", "password_hash", "key", "key_hash", "client_secret", "secret", "refresh_token", "token"}
)


def masked(change: dict[str, Any]) -> dict[str, Any]:
    """`change` with the value of every secret-named field (at any depth) replaced by MASK."""

    def mask(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: MASK if k in SECRET_FIELDS and v not in (None, "") else mask(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mask(item) for item in value]
        return value

    result: dict[str, Any] = mask(change)
    return result


def record(
    session: AsyncSession,
    *,
    tenant_id: str,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    change: dict[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> AuditEntry:
    """Stages one audit entry in the caller's transaction (so it commits with the change)."""
    entry = AuditEntry(
        id=new_id("aud"),
        tenant_id=tenant_id,
        actor=actor,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        change=masked(change or {}),
        created_at=at or utcnow(),
    )
    repository.add_audit_entry(session, entry)
    return entry


def _cursor(token: str) -> tuple[dt.datetime, str] | None:
    position = decode_page_token(token)
    if position is None:
        return None
    try:
        at, entry_id = dt.datetime.fromisoformat(str(position["t"])), str(position["id"])
    except (KeyError, ValueError) as exc:
        raise BadRequestError(
            "page_token is not valid", [FieldViolation("page_token", "not a token from this API")]
        ) from exc
    if at.tzinfo is None or "\x00" in entry_id:
        raise BadRequestError("page_token is not valid", [FieldViolation("page_token", "not a token from this API")])
    return at, entry_id


def cursor_after(entry: AuditEntry) -> str:
    """The page token that continues after `entry` (newest-first order)."""
    return encode_page_token({"t": entry.created_at.isoformat(), "id": entry.id})


# Another service's page size limit: sources are never asked for more.
SOURCE_MAX_LIMIT = 100
# The caller's credentials as metadata, forwarded so that each source checks them itself.
Credentials = Sequence[tuple[str, str]]


class AuditSource(Protocol):
    """Another service's audit entries (workflow_svc's AuditService), read as the caller."""

    async def entries(
        self,
        credentials: Credentials,
        *,
        limit: int,
        before: tuple[dt.datetime, str] | None,
        entity_type: str,
        entity_id: str,
        actor: str,
    ) -> list[AuditEntry]:
        """Up to `limit` entries newest first, strictly before `before`; UnavailableError when
        the service cannot answer (an audit log never silently leaves entries out)."""
        ...


def _newest_first(entry: AuditEntry) -> tuple[dt.datetime, str]:
    return entry.created_at, entry.id


class AuditLog:
    """Reads the tenant's audit log, newest first: auth_svc's identity events merged with the
    entries of every other audited service (keyset order: created_at, then id)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], sources: Sequence[AuditSource] = ()) -> None:
        self._sessions = sessions
        self._sources = list(sources)

    async def list(
        self,
        principal: Principal,
        *,
        limit: int,
        page_token: str,
        entity_type: str = "",
        entity_id: str = "",
        actor: str = "",
        credentials: Credentials = (),
    ) -> Page[AuditEntry]:
        """One page of the caller's tenant's entries matching the filters."""
        size = clamp_limit(limit)
        before = _cursor(page_token)
        filters = {"entity_type": entity_type, "entity_id": entity_id, "actor": actor}
        bad = [FieldViolation(name, "must not contain the NUL character") for name, v in filters.items() if "\x00" in v]
        if bad:
            raise BadRequestError("the filters are not valid", bad)
        async with self._sessions() as session:
            own = await repository.list_audit_entries(
                session,
                tenant_id=principal.tenant_id,
                limit=size + 1,
                before=before,
                entity_type=entity_type,
                entity_id=entity_id,
                actor=actor,
            )
        source_limit = min(size + 1, SOURCE_MAX_LIMIT)
        pages = [own]
        more = len(own) > size
        for source in self._sources:
            entries = await source.entries(
                credentials,
                limit=source_limit,
                before=before,
                entity_type=entity_type,
                entity_id=entity_id,
                actor=actor,
            )
            # A full page capped below size + 1 cannot say whether more follow: assume so.
            more = more or len(entries) > size or (len(entries) == source_limit and source_limit <= size)
            pages.append(entries)
        merged = list(heapq.merge(*pages, key=_newest_first, reverse=True))
        page = merged[:size]
        more = more or len(merged) > size
        return Page(page, cursor_after(page[-1]) if more and page else "")
