"""Workflow and tenant-template persistence: functions that take an AsyncSession, never commit,
and always filter on the tenant.

A workflow is a head row (identity, the latest version's name/status/etag, which listings
filter and sort on) plus one immutable row per version holding the definition snapshot.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, delete, insert, literal, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from workflow_svc.db.orm import WorkflowRow, WorkflowTagRow, WorkflowTemplateRow, WorkflowVersionRow
from workflow_svc.domain.errors import TemplateNameTakenError, WorkflowNameTakenError
from workflow_svc.domain.models import Workflow, WorkflowCursor, WorkflowFilter, WorkflowOrder, WorkflowStatus
from workflow_svc.domain.templates import WorkflowTemplate

_SORT_COLUMNS = {"created_at": WorkflowRow.created_at, "name": WorkflowRow.name, "updated_at": WorkflowRow.updated_at}
_MAX_CODE_POINT = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)


async def insert_workflow(session: AsyncSession, workflow: Workflow) -> None:
    """Stores a new workflow at version 1; WorkflowNameTakenError when a live workflow of the
    tenant has its name."""
    try:
        await session.execute(
            insert(WorkflowRow).values(
                id=workflow.id,
                tenant_id=workflow.tenant_id,
                created_at=workflow.created_at,
                created_by=workflow.created_by,
                **_head_columns(workflow),
            )
        )
    except IntegrityError as exc:
        # The live-name index is the only unique rule a new row can break: ids are random.
        raise WorkflowNameTakenError(workflow.name) from exc
    await _insert_version(session, workflow)


async def save_version(session: AsyncSession, workflow: Workflow, *, replaces: int) -> bool:
    """Stores `workflow` as the version after `replaces` and makes it the latest, if the
    workflow is still live at version `replaces` (compare-and-set, so two concurrent saves
    cannot both become version N+1); False when it is not. Earlier versions are untouched."""
    try:
        moved = await session.scalar(
            update(WorkflowRow)
            .where(
                WorkflowRow.tenant_id == workflow.tenant_id,
                WorkflowRow.id == workflow.id,
                WorkflowRow.latest_version == replaces,
                WorkflowRow.deleted_at.is_(None),
            )
            .values(_head_columns(workflow))
            .returning(WorkflowRow.id)
            .execution_options(synchronize_session=False)
        )
    except IntegrityError as exc:
        raise WorkflowNameTakenError(workflow.name) from exc
    if moved is None:
        return False
    await session.execute(
        delete(WorkflowTagRow).where(
            WorkflowTagRow.tenant_id == workflow.tenant_id, WorkflowTagRow.workflow_id == workflow.id
        )
    )
    await _insert_version(session, workflow)
    return True


async def get_workflow(
    session: AsyncSession, tenant_id: str, workflow_id: str, *, version: int | None = None, for_update: bool = False
) -> Workflow | None:
    """The live workflow at `version` (the latest when None), or None.

    `for_update` locks the workflow's head row until the transaction ends (PostgreSQL; SQLite
    has no row locks and serialises writers anyway), so that concurrent saves queue up."""
    version_condition = (
        WorkflowVersionRow.version == WorkflowRow.latest_version
        if version is None
        else WorkflowVersionRow.version == version
    )
    live = (WorkflowRow.tenant_id == tenant_id, WorkflowRow.id == workflow_id, WorkflowRow.deleted_at.is_(None))
    # The head is locked alone, then read by a new statement: a locking read of the join would,
    # after waiting for a concurrent save, recheck the new head against the old version row
    # (the only one its snapshot sees) and find nothing.
    if for_update and await session.scalar(select(WorkflowRow.id).where(*live).with_for_update()) is None:
        return None
    row = (await session.execute(_workflows_with_version(version_condition).where(*live))).first()
    return None if row is None else _workflow_from_rows(row.WorkflowRow, row.WorkflowVersionRow)


# Built once: constructing the statement cost as much as running it (GetWorkflow, behind every
# run start, asks it every time). Table columns, so no ORM compile step either.
_HEADS = WorkflowRow.__table__.c
_LATEST_VERSION = select(_HEADS.latest_version).where(
    _HEADS.id == bindparam("workflow_id"), _HEADS.tenant_id == bindparam("tenant_id"), _HEADS.deleted_at.is_(None)
)


async def latest_version(session: AsyncSession, tenant_id: str, workflow_id: str) -> int | None:
    """The latest version of the live workflow, or None: one row of the head by its primary
    key, without the definition."""
    version: int | None = await session.scalar(_LATEST_VERSION, {"workflow_id": workflow_id, "tenant_id": tenant_id})
    return version


def list_workflows_statement(
    tenant_id: str, workflow_filter: WorkflowFilter, *, order: WorkflowOrder, after: WorkflowCursor | None, limit: int
) -> Select[WorkflowRow, WorkflowVersionRow]:
    """The query behind `list_workflows` (public so that tests can EXPLAIN the real thing)."""
    query = _workflows_with_version(WorkflowVersionRow.version == WorkflowRow.latest_version).where(
        WorkflowRow.tenant_id == tenant_id, WorkflowRow.deleted_at.is_(None)
    )
    if workflow_filter.status is not None:
        query = query.where(WorkflowRow.status == workflow_filter.status.value)
    if workflow_filter.name_prefix:
        query = query.where(*_prefix_conditions(workflow_filter.name_prefix))
    if workflow_filter.tag:
        query = query.where(
            WorkflowRow.id.in_(
                select(WorkflowTagRow.workflow_id).where(
                    WorkflowTagRow.tenant_id == tenant_id, WorkflowTagRow.tag == workflow_filter.tag
                )
            )
        )
    column = _SORT_COLUMNS[order.field]
    if after is not None:
        # A row-value comparison is one index range on (tenant_id, <column>, id) on both databases.
        position = tuple_(column, WorkflowRow.id)
        bound = tuple_(literal(after.value, column.type), literal(after.id, WorkflowRow.id.type))
        query = query.where(position < bound if order.descending else position > bound)
    if order.descending:
        query = query.order_by(column.desc(), WorkflowRow.id.desc())
    else:
        query = query.order_by(column.asc(), WorkflowRow.id.asc())
    return query.limit(limit)


async def list_workflows(
    session: AsyncSession,
    tenant_id: str,
    workflow_filter: WorkflowFilter,
    *,
    order: WorkflowOrder,
    after: WorkflowCursor | None,
    limit: int,
) -> list[Workflow]:
    """Up to `limit` live workflows of the tenant at their latest version, matching the filter,
    in `order`, strictly after the cursor `after`. The cursor is the sort key of the last row
    already seen, so rows inserted while a client pages never shift the pages still to come."""
    rows = await session.execute(
        list_workflows_statement(tenant_id, workflow_filter, order=order, after=after, limit=limit)
    )
    return [_workflow_from_rows(row.WorkflowRow, row.WorkflowVersionRow) for row in rows]


async def list_versions(
    session: AsyncSession, tenant_id: str, workflow_id: str, *, before: int | None, limit: int
) -> list[Workflow]:
    """Up to `limit` versions of the live workflow, newest first, below version `before`."""
    query = _workflows_with_version().where(
        WorkflowRow.tenant_id == tenant_id, WorkflowRow.id == workflow_id, WorkflowRow.deleted_at.is_(None)
    )
    if before is not None:
        query = query.where(WorkflowVersionRow.version < before)
    rows = await session.execute(query.order_by(WorkflowVersionRow.version.desc()).limit(limit))
    return [_workflow_from_rows(row.WorkflowRow, row.WorkflowVersionRow) for row in rows]


async def soft_delete_workflow(session: AsyncSession, tenant_id: str, workflow_id: str, *, at: dt.datetime) -> bool:
    """Marks the live workflow deleted (its name becomes free, its versions stay); False when
    there is none."""
    deleted = await session.scalar(
        update(WorkflowRow)
        .where(WorkflowRow.tenant_id == tenant_id, WorkflowRow.id == workflow_id, WorkflowRow.deleted_at.is_(None))
        .values(deleted_at=at)
        .returning(WorkflowRow.id)
        .execution_options(synchronize_session=False)
    )
    return deleted is not None


async def insert_template(
    session: AsyncSession, tenant_id: str, template: WorkflowTemplate, *, created_at: dt.datetime, created_by: str
) -> None:
    """Stores a tenant template; TemplateNameTakenError when the tenant already has one of that name."""
    try:
        await session.execute(
            insert(WorkflowTemplateRow).values(
                tenant_id=tenant_id,
                name=template.name,
                description=template.description,
                parameters_schema=dict(template.parameters_schema),
                definition=dict(template.definition),
                created_at=created_at,
                created_by=created_by,
            )
        )
    except IntegrityError as exc:
        raise TemplateNameTakenError(template.name) from exc


async def get_template(session: AsyncSession, tenant_id: str, name: str) -> WorkflowTemplate | None:
    """The tenant's template of this name, or None."""
    row = await session.scalar(
        select(WorkflowTemplateRow).where(WorkflowTemplateRow.tenant_id == tenant_id, WorkflowTemplateRow.name == name)
    )
    return None if row is None else _template_from_row(row)


async def list_templates(
    session: AsyncSession, tenant_id: str, *, after: str | None, limit: int
) -> list[WorkflowTemplate]:
    """Up to `limit` of the tenant's templates by name, strictly after the name `after`."""
    query = select(WorkflowTemplateRow).where(WorkflowTemplateRow.tenant_id == tenant_id)
    if after is not None:
        query = query.where(WorkflowTemplateRow.name > after)
    rows = await session.scalars(query.order_by(WorkflowTemplateRow.name).limit(limit))
    return [_template_from_row(row) for row in rows]


def _workflows_with_version(
    version_condition: ColumnElement[bool] | None = None,
) -> Select[WorkflowRow, WorkflowVersionRow]:
    """Heads joined with their versions (all of them unless `version_condition` picks some)."""
    join = and_(WorkflowVersionRow.workflow_id == WorkflowRow.id, WorkflowVersionRow.tenant_id == WorkflowRow.tenant_id)
    if version_condition is not None:
        join = and_(join, version_condition)
    return select(WorkflowRow, WorkflowVersionRow).join(WorkflowVersionRow, join)


def _prefix_conditions(prefix: str) -> list[ColumnElement[bool]]:
    """`name` starts with `prefix`, as a range the name index answers: [prefix, successor).

    Names compare by code point (see `code_point_string`), so the strings in that range are
    exactly those that start with the prefix. No LIKE: it would need escaping of `%` and `_`
    and ignores case on SQLite."""
    conditions = [WorkflowRow.name >= prefix]
    successor = _prefix_successor(prefix)
    if successor is not None:
        conditions.append(WorkflowRow.name < successor)
    return conditions


def _prefix_successor(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with `prefix` (None: none is)."""
    for end in range(len(prefix), 0, -1):
        code = ord(prefix[end - 1]) + 1
        if code in _SURROGATES:
            code = _SURROGATES.stop  # surrogates cannot be encoded, so nothing sorts among them
        if code <= _MAX_CODE_POINT:
            return prefix[: end - 1] + chr(code)
    return None


def _head_columns(workflow: Workflow) -> dict[str, Any]:
    return {
        "name": workflow.name,
        "status": workflow.status.value,
        "latest_version": workflow.version,
        "etag": workflow.etag,
        "updated_at": workflow.updated_at,
    }


async def _insert_version(session: AsyncSession, workflow: Workflow) -> None:
    await session.execute(
        insert(WorkflowVersionRow).values(
            workflow_id=workflow.id,
            version=workflow.version,
            tenant_id=workflow.tenant_id,
            status=workflow.status.value,
            definition=dict(workflow.definition),
            etag=workflow.etag,
            created_at=workflow.updated_at,
        )
    )
    tags = _tags_of(workflow)
    if tags:
        await session.execute(
            insert(WorkflowTagRow),
            [{"workflow_id": workflow.id, "tenant_id": workflow.tenant_id, "tag": tag} for tag in tags],
        )


def _tags_of(workflow: Workflow) -> Sequence[str]:
    tags = workflow.definition.get("tags") or []
    return list(dict.fromkeys(tag for tag in tags if isinstance(tag, str)))


def _workflow_from_rows(head: WorkflowRow, version: WorkflowVersionRow) -> Workflow:
    return Workflow(
        id=head.id,
        tenant_id=head.tenant_id,
        version=version.version,
        status=WorkflowStatus(version.status),
        definition=version.definition,
        etag=version.etag,
        created_at=head.created_at,
        updated_at=version.created_at,
        created_by=head.created_by,
    )


def _template_from_row(row: WorkflowTemplateRow) -> WorkflowTemplate:
    return WorkflowTemplate(
        name=row.name,
        description=row.description,
        parameters_schema=row.parameters_schema,
        definition=row.definition,
        builtin=False,
    )
