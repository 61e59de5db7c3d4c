"""Use cases of workflow definitions and templates: validate, save immutable versions, list, read,
soft-delete, instantiate templates. Each owns its transaction, which also writes the change's
audit entry.

Definitions travel as the Workflow JSON of API.md (proto field names, lower-case enum values);
validation is `definitions.validate_definition`, with agent statuses read from the caller's tenant
in the same transaction as the write they guard.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from flowforge_common.auth import Principal
from flowforge_common.errors import AbortedError, BadRequestError, EtagMismatchError, FieldViolation, ValidationError
from flowforge_common.expressions import join_path
from flowforge_common.ids import new_id
from flowforge_common.orm import utcnow
from workflow_svc.db import audit as audit_repository
from workflow_svc.db import repository as agent_repository
from workflow_svc.db import workflows as repository
from workflow_svc.domain.audit import audit_entry, changed, created, deleted, template_view, workflow_view
from workflow_svc.domain.definitions import ValidationReport, referenced_agents, validate_definition
from workflow_svc.domain.errors import (
    TemplateNameTakenError,
    TemplateNotFoundError,
    WorkflowNotFoundError,
)
from workflow_svc.domain.models import (
    DEFINITION_FIELDS,
    VersionPage,
    Workflow,
    WorkflowCursor,
    WorkflowFilter,
    WorkflowOrder,
    WorkflowPage,
    WorkflowStatus,
)
from workflow_svc.domain.templates import (
    BUILTIN_TEMPLATES,
    WorkflowTemplate,
    builtin_templates,
    get_builtin_template,
    instantiate,
    validate_template,
)

WORKFLOW_ID_PREFIX: Final = "wf"
DEFAULT_ORDER: Final = WorkflowOrder.CREATED_DESC


@dataclass(frozen=True)
class TemplatePage:
    """One page of templates by name; `next_after` is the name the next page starts after
    (None on the last)."""

    templates: list[WorkflowTemplate]
    next_after: str | None


def parse_order_by(order_by: str) -> WorkflowOrder:
    """The listing order `order_by` names (`created_at desc` when empty); a field alone means
    ascending. BadRequestError naming `order_by` for anything else."""
    words = order_by.lower().split()
    if not words:
        return DEFAULT_ORDER
    if len(words) == 1:
        words.append("asc")
    try:
        return WorkflowOrder(" ".join(words))
    except ValueError:
        allowed = ", ".join(f"`{order.value}`" for order in WorkflowOrder)
        raise BadRequestError(
            f"order_by {order_by!r} is not supported", [FieldViolation("order_by", f"must be one of {allowed}")]
        ) from None


class VersionCache:
    """Workflow versions by (tenant id, workflow id, version), least recently used out first.

    A version is immutable once saved (a save writes version N+1, a delete marks the
    workflow's head), so a cached version never goes stale; whether the workflow is still
    live, and which version is its latest, are not cached: every read asks the database, so
    that a save or a delete in any replica counts at once. The tenant in the key keeps one
    tenant from ever being handed another's version."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str, int], Workflow] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, tenant_id: str, workflow_id: str, version: int) -> Workflow | None:
        """The cached version, if any."""
        key = (tenant_id, workflow_id, version)
        workflow = self._entries.get(key)
        if workflow is not None:
            self._entries.move_to_end(key)
        return workflow

    def put(self, workflow: Workflow) -> None:
        """Remembers a version read from the database."""
        if self._max_entries <= 0:
            return
        key = (workflow.tenant_id, workflow.id, workflow.version)
        self._entries[key] = workflow
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


class WorkflowCatalog:
    """The workflows and templates of the caller's tenant.

    `reads` are the sessions of `get_workflow`, the read behind every run start (default:
    `sessions`); server.py gives it autocommit sessions on PostgreSQL, where a read needs no
    BEGIN and COMMIT round trips. Versions it reads are kept in `versions`."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        reads: async_sessionmaker[AsyncSession] | None = None,
        versions: VersionCache | None = None,
    ) -> None:
        self._sessions = sessions
        self._reads = reads or sessions
        self.versions = versions if versions is not None else VersionCache()

    async def validate_workflow(self, principal: Principal, definition: Mapping[str, Any]) -> ValidationReport:
        """Every problem of a definition and, when its DAG is sound, the plan; saves nothing."""
        async with self._sessions.begin() as session:
            return await _checked(session, principal.tenant_id, definition)

    async def create_workflow(
        self, principal: Principal, definition: Mapping[str, Any], *, status: WorkflowStatus | None = None
    ) -> Workflow:
        """Validates and saves a new workflow as version 1 (`active` unless `status` says otherwise)."""
        now = utcnow()
        async with self._sessions.begin() as session:
            (await _checked(session, principal.tenant_id, definition)).raise_if_invalid()
            workflow = Workflow(
                id=new_id(WORKFLOW_ID_PREFIX),
                tenant_id=principal.tenant_id,
                version=1,
                status=status or WorkflowStatus.ACTIVE,
                definition=_snapshot(definition),
                etag=_new_etag(),
                created_at=now,
                updated_at=now,
                created_by=principal.subject,
            )
            await repository.insert_workflow(session, workflow)
            await audit_repository.insert_audit_entry(
                session, audit_entry(principal, "workflow.created", workflow.id, created(workflow_view(workflow)))
            )
        return workflow

    async def get_workflow(self, principal: Principal, workflow_id: str, *, version: int | None = None) -> Workflow:
        """The tenant's live workflow at `version` (the latest when None).

        One small query says whether the workflow is live and which version is its latest;
        the version itself comes from the cache when this process read it before. Versions
        1 to the latest all exist: they are never deleted one by one."""
        if version is not None and version < 1:
            raise BadRequestError("version must be at least 1", [FieldViolation("version", "must be at least 1")])
        tenant_id = principal.tenant_id
        async with self._reads() as session:
            latest = await repository.latest_version(session, tenant_id, workflow_id)
            if latest is None:
                raise WorkflowNotFoundError(workflow_id)
            wanted = latest if version is None else version
            if wanted > latest:
                raise WorkflowNotFoundError(workflow_id, version)
            workflow = self.versions.get(tenant_id, workflow_id, wanted)
            if workflow is None:
                # Each statement may see its own snapshot (autocommit): a save in between adds
                # a version, which changes nothing for this one.
                workflow = await repository.get_workflow(session, tenant_id, workflow_id, version=wanted)
                if workflow is None:  # deleted in between: as if the read came after the delete
                    raise WorkflowNotFoundError(workflow_id)
                self.versions.put(workflow)
        return workflow

    async def list_workflows(
        self,
        principal: Principal,
        workflow_filter: WorkflowFilter,
        *,
        order: WorkflowOrder,
        after: WorkflowCursor | None,
        limit: int,
    ) -> WorkflowPage:
        """One page of the tenant's live workflows at their latest version; `after` is the
        previous page's cursor, which must have been made for the same order."""
        if after is not None and after.order is not order:
            raise BadRequestError(
                "page_token was made for another order_by",
                [FieldViolation("page_token", f"was made for order_by `{after.order.value}`")],
            )
        async with self._sessions.begin() as session:
            # One row more than asked tells whether another page follows.
            workflows = await repository.list_workflows(
                session, principal.tenant_id, workflow_filter, order=order, after=after, limit=limit + 1
            )
        if len(workflows) <= limit:
            return WorkflowPage(workflows, next_cursor=None)
        last = workflows[limit - 1]
        value = last.name if order.field == "name" else getattr(last, order.field)
        return WorkflowPage(workflows[:limit], next_cursor=WorkflowCursor(order, value, last.id))

    async def list_versions(
        self, principal: Principal, workflow_id: str, *, before: int | None, limit: int
    ) -> VersionPage:
        """One page of the workflow's versions, newest first, below version `before`."""
        async with self._sessions.begin() as session:
            versions = await repository.list_versions(
                session, principal.tenant_id, workflow_id, before=before, limit=limit + 1
            )
            if not versions and await repository.get_workflow(session, principal.tenant_id, workflow_id) is None:
                raise WorkflowNotFoundError(workflow_id)
        if len(versions) <= limit:
            return VersionPage(versions, next_before=None)
        return VersionPage(versions[:limit], next_before=versions[limit - 1].version)

    async def update_workflow(
        self,
        principal: Principal,
        workflow_id: str,
        definition: Mapping[str, Any],
        *,
        status: WorkflowStatus | None = None,
        etag: str | None = None,
    ) -> Workflow:
        """Validates `definition` and saves it as version N+1; version N and older stay as they
        were (runs in flight keep theirs). `status` None keeps the current status: a client
        that edits steps must not revive an archived workflow by leaving the field out.

        `etag`, when given, must be the current one (`If-Match`). Concurrent saves queue on the
        workflow's row lock on PostgreSQL; the save is also a compare-and-set on the version read
        here, so where there is no row lock (SQLite) a concurrent save makes this one fail
        (ABORTED, or ETAG_MISMATCH with an etag) instead of silently replacing it."""
        async with self._sessions.begin() as session:
            current = await repository.get_workflow(session, principal.tenant_id, workflow_id, for_update=True)
            if current is None:
                raise WorkflowNotFoundError(workflow_id)
            if etag is not None and etag != current.etag:
                raise EtagMismatchError("the workflow has changed since it was read")
            (await _checked(session, principal.tenant_id, definition)).raise_if_invalid()
            saved = replace(
                current,
                version=current.version + 1,
                status=status or current.status,
                definition=_snapshot(definition),
                etag=_new_etag(),
                updated_at=utcnow(),
            )
            if not await repository.save_version(session, saved, replaces=current.version):
                if etag is not None:
                    raise EtagMismatchError("the workflow has changed since it was read")
                raise AbortedError("the workflow changed during the update; retry")
            change = changed(workflow_view(current), workflow_view(saved))
            await audit_repository.insert_audit_entry(
                session, audit_entry(principal, "workflow.updated", workflow_id, change)
            )
        return saved

    async def delete_workflow(self, principal: Principal, workflow_id: str) -> None:
        """Soft-deletes the workflow: NOT_FOUND from now on, its name free again, its versions
        kept for the runs that used them."""
        async with self._sessions.begin() as session:
            current = await repository.get_workflow(session, principal.tenant_id, workflow_id, for_update=True)
            if current is None or not await repository.soft_delete_workflow(
                session, principal.tenant_id, workflow_id, at=utcnow()
            ):
                raise WorkflowNotFoundError(workflow_id)
            await audit_repository.insert_audit_entry(
                session, audit_entry(principal, "workflow.deleted", workflow_id, deleted(workflow_view(current)))
            )

    async def list_templates(self, principal: Principal, *, after: str | None, limit: int) -> TemplatePage:
        """One page of the built-in and the tenant's templates together, by name."""
        builtins = [template for template in builtin_templates() if after is None or template.name > after]
        async with self._sessions.begin() as session:
            own = await repository.list_templates(session, principal.tenant_id, after=after, limit=limit + 1)
        # Names are unique across both sources and compare by code point in Python and SQL alike.
        merged = sorted([*builtins, *own], key=lambda template: template.name)[: limit + 1]
        if len(merged) <= limit:
            return TemplatePage(merged, next_after=None)
        return TemplatePage(merged[:limit], next_after=merged[limit - 1].name)

    async def get_template(self, principal: Principal, name: str) -> WorkflowTemplate:
        """The built-in template of this name, else the tenant's."""
        template = get_builtin_template(name)
        if template is None:
            async with self._sessions.begin() as session:
                template = await repository.get_template(session, principal.tenant_id, name)
        if template is None:
            raise TemplateNotFoundError(name)
        return template

    async def create_template(self, principal: Principal, template: WorkflowTemplate) -> WorkflowTemplate:
        """Validates and saves a tenant template; its name may not be a built-in's."""
        template = replace(template, definition=_snapshot(template.definition), builtin=False)
        violations = [
            *validate_template(template),
            *_nul_violations(template.description, "description"),
            *_nul_violations(template.parameters_schema, "parameters_schema"),
            *_nul_violations(template.definition, "definition"),
        ]
        if violations:
            raise ValidationError("the workflow template is invalid", violations)
        if template.name in BUILTIN_TEMPLATES:
            raise TemplateNameTakenError(template.name)
        async with self._sessions.begin() as session:
            await repository.insert_template(
                session, principal.tenant_id, template, created_at=utcnow(), created_by=principal.subject
            )
            await audit_repository.insert_audit_entry(
                session,
                audit_entry(principal, "workflow_template.created", template.name, created(template_view(template))),
            )
        return template

    async def create_from_template(
        self, principal: Principal, template_name: str, *, name: str, parameters: Mapping[str, Any] | None
    ) -> Workflow:
        """Instantiates a template with `parameters`, then validates and saves it as a new
        workflow called `name`. Parameter problems are reported at `parameters.<path>`."""
        template = await self.get_template(principal, template_name)
        return await self.create_workflow(principal, instantiate(template, parameters, name=name))


async def _checked(session: AsyncSession, tenant_id: str, definition: Mapping[str, Any]) -> ValidationReport:
    """Validates a definition against the tenant's agents as they are in this transaction."""
    statuses = await agent_repository.agent_statuses(session, tenant_id, referenced_agents(definition))
    report = validate_definition(definition, agent_lookup=lambda _names: statuses)
    report.errors.extend(await _sub_workflow_violations(session, tenant_id, definition))
    report.errors.extend(_nul_violations(definition, ""))
    return report


async def _sub_workflow_violations(
    session: AsyncSession, tenant_id: str, definition: Mapping[str, Any]
) -> list[FieldViolation]:
    """`sub_workflow` steps must name a live workflow (and version) of the tenant. A child that
    does not exist would otherwise only fail when a run reaches the step. Ids given by an
    expression are checked when the run evaluates them."""
    steps = definition.get("steps")
    violations: list[FieldViolation] = []
    for index, step in enumerate(steps if isinstance(steps, list) else []):
        config = step.get("config") if isinstance(step, Mapping) else None
        if step.get("type") != "sub_workflow" or not isinstance(config, Mapping):
            continue
        workflow_id, version = config.get("workflow_id"), config.get("version")
        if not isinstance(workflow_id, str) or not workflow_id or "{{" in workflow_id:
            continue  # a missing or mistyped id is the step type's schema problem, reported already
        pinned = version if isinstance(version, int) and not isinstance(version, bool) else None
        if await repository.get_workflow(session, tenant_id, workflow_id, version=pinned) is None:
            what = f"version {pinned} of workflow {workflow_id!r}" if pinned else f"workflow {workflow_id!r}"
            violations.append(FieldViolation(f"steps[{index}].config.workflow_id", f"{what} does not exist"))
    return violations


def _nul_violations(value: Any, path: str) -> list[FieldViolation]:
    """Strings (keys included) holding U+0000, which PostgreSQL cannot store in text or jsonb;
    refused on SQLite too, so that a definition is valid or not whatever the database."""
    if isinstance(value, str):
        return [FieldViolation(path, "must not contain the NUL character (U+0000)")] if "\x00" in value else []
    if isinstance(value, list):
        return [
            violation for index, item in enumerate(value) for violation in _nul_violations(item, f"{path}[{index}]")
        ]
    if isinstance(value, Mapping):
        violations = []
        for key, item in value.items():
            where = join_path(path, str(key))
            if "\x00" in str(key):
                violations.append(FieldViolation(where, "must not contain the NUL character (U+0000)"))
            violations.extend(_nul_violations(item, where))
        return violations
    return []


def _snapshot(definition: Mapping[str, Any]) -> dict[str, Any]:
    """What a version stores: the definition fields only; bookkeeping fields a client sent
    (`id`, `version`, `etag`, ...) are output-only and ignored."""
    return {key: definition[key] for key in DEFINITION_FIELDS if key in definition}


def _new_etag() -> str:
    return secrets.token_hex(8)
