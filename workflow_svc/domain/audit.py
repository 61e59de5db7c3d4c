"""The audit log: what each change records, with secrets masked, and how entries are read.

Use cases build an entry with `audit_entry` and insert it in the transaction of the change, so a
change that rolls back leaves no entry and a committed one always has its entry.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from flowforge_common.auth import Principal
from flowforge_common.ids import new_id
from flowforge_common.orm import utcnow
from workflow_svc.db import audit as audit_repository
from workflow_svc.domain.models import Agent, AuditEntry, AuditQuery, Workflow
from workflow_svc.domain.templates import WorkflowTemplate

AUDIT_ID_PREFIX: Final = "aud"
MASK: Final = "***"
"""Stands for a secret value: it says a secret is (or was) there, never what it is."""


def audit_entry(principal: Principal, action: str, entity_id: str, change: Mapping[str, Any]) -> AuditEntry:
    """An entry for `action` (`<entity_type>.<verb>`, e.g. `agent.created`) by the caller."""
    return AuditEntry(
        id=new_id(AUDIT_ID_PREFIX),
        tenant_id=principal.tenant_id,
        actor=principal.subject,
        action=action,
        entity_type=action.rsplit(".", 1)[0],
        entity_id=entity_id,
        change=change,
        created_at=utcnow(),
    )


def created(view: Mapping[str, Any]) -> dict[str, Any]:
    """The change of a creation: everything is new."""
    return {"after": dict(view)}


def deleted(view: Mapping[str, Any]) -> dict[str, Any]:
    """The change of a deletion: what was there."""
    return {"before": dict(view)}


def changed(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The change of an update: the fields whose value differs, before and after."""
    keys = [key for key in {**before, **after} if before.get(key) != after.get(key)]
    return {"before": {key: before.get(key) for key in keys}, "after": {key: after.get(key) for key in keys}}


def agent_view(agent: Agent) -> dict[str, Any]:
    """An agent as the audit log shows it. Credentials never appear: `AgentSpec` cannot hold
    them, and `auth_config` is MASK when some are stored."""
    view: dict[str, Any] = dataclasses.asdict(agent.spec)
    view["capabilities"] = list(agent.spec.capabilities)
    view["auth_config"] = MASK if agent.has_credentials else None
    return view


def agent_change(before: Agent, after: Agent, *, credentials_written: bool) -> dict[str, Any]:
    """The change of an agent update. Rewritten credentials are recorded (masked) even when the
    masks look alike, since the secret behind them did change."""
    change = changed(agent_view(before), agent_view(after))
    if credentials_written:
        change["before"]["auth_config"] = agent_view(before)["auth_config"]
        change["after"]["auth_config"] = agent_view(after)["auth_config"]
    return change


def workflow_view(workflow: Workflow) -> dict[str, Any]:
    """A workflow version as the audit log shows it: version, status and the definition with
    the values of HTTP step headers masked (where a definition would carry credentials)."""
    return {"version": workflow.version, "status": workflow.status.value, **masked_definition(workflow.definition)}


def template_view(template: WorkflowTemplate) -> dict[str, Any]:
    """A tenant template as the audit log shows it."""
    return {
        "name": template.name,
        "description": template.description,
        "parameters_schema": dict(template.parameters_schema),
        "definition": masked_definition(template.definition),
    }


def masked_definition(definition: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a definition whose steps' `config.headers` values are MASK."""
    masked = copy.deepcopy(dict(definition))
    steps = masked.get("steps")
    for step in steps if isinstance(steps, list) else []:
        config = step.get("config") if isinstance(step, dict) else None
        if isinstance(config, dict) and isinstance(config.get("headers"), dict):
            config["headers"] = dict.fromkeys(config["headers"], MASK)
    return masked


class AuditLog:
    """Reads the audit entries of the caller's tenant."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def list_entries(self, principal: Principal, query: AuditQuery) -> list[AuditEntry]:
        """One page of the tenant's entries, newest first (see `ListAuditEntriesRequest`)."""
        async with self._sessions.begin() as session:
            return await audit_repository.list_audit_entries(session, principal.tenant_id, query)
