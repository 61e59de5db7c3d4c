"""Use cases of the agent registry. Each owns its transaction, which also writes the change's
audit entry; slow work (DNS look-ups of the network policy) happens outside any transaction."""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection, Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from flowforge_common.auth import Principal
from flowforge_common.errors import (
    AbortedError,
    BadRequestError,
    ConflictError,
    EtagMismatchError,
    FieldViolation,
    NotFoundError,
)
from flowforge_common.ids import new_id
from flowforge_common.netpolicy import AgentNetworkMode, Resolver
from flowforge_common.orm import utcnow
from flowforge_common.secrets import SecretBox
from workflow_svc.db import audit as audit_repository
from workflow_svc.db import repository
from workflow_svc.domain.audit import agent_change, agent_view, audit_entry, created, deleted
from workflow_svc.domain.errors import AgentNotFoundError
from workflow_svc.domain.models import (
    CREDENTIALS_FIELD,
    DEFAULT_APIKEY_HEADER,
    OUTPUT_ONLY_FIELDS,
    RETRY_CONFIG_FIELDS,
    SPEC_FIELDS,
    Agent,
    AgentFilter,
    AgentPage,
    AgentSpec,
    AgentStatus,
    AuthType,
)
from workflow_svc.domain.validation import normalised, validate_agent

AGENT_ID_PREFIX = "agt"


class AgentRegistry:
    """Registers, reads, changes and retires the agents of the caller's tenant."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        secret_box: SecretBox,
        *,
        network: AgentNetworkMode,
        resolver: Resolver | None = None,
    ) -> None:
        self._sessions = sessions
        self._secret_box = secret_box
        self._network = network
        self._resolver = resolver

    async def create_agent(self, principal: Principal, spec: AgentSpec, auth_config: Mapping[str, Any]) -> Agent:
        """Validates and registers an agent; its credentials are sealed before they are stored."""
        spec = normalised(spec)
        await validate_agent(spec, auth_config, network=self._network, resolver=self._resolver)
        agent_id = new_id(AGENT_ID_PREFIX)
        now = utcnow()
        agent = Agent(
            id=agent_id,
            tenant_id=principal.tenant_id,
            spec=spec,
            sealed_auth_config=self._seal(principal.tenant_id, agent_id, auth_config),
            etag=_new_etag(),
            created_at=now,
            updated_at=now,
            created_by=principal.subject,
        )
        async with self._sessions.begin() as session:
            await repository.insert_agent(session, agent)
            await audit_repository.insert_audit_entry(
                session, audit_entry(principal, "agent.created", agent.id, created(agent_view(agent)))
            )
        return agent

    async def get_agent(self, principal: Principal, agent_id: str) -> Agent:
        """The tenant's live agent with this id."""
        async with self._sessions.begin() as session:
            agent = await repository.get_agent(session, principal.tenant_id, agent_id)
        if agent is None:
            raise AgentNotFoundError(agent_id)
        return agent

    async def resolve_agent(self, principal: Principal, name: str) -> tuple[Agent, dict[str, str]]:
        """The tenant's active agent called `name` and the headers carrying its credentials, for
        the execution engine (the `internal` scope guards the RPC that exposes this)."""
        async with self._sessions.begin() as session:
            agent = await repository.get_agent_by_name(session, principal.tenant_id, name)
        if agent is None:
            raise NotFoundError(f"agent {name!r} not found", metadata={"name": name})
        if agent.spec.status is not AgentStatus.ACTIVE:
            raise ConflictError(f"agent {name!r} is {agent.spec.status.value} and takes no calls")
        return agent, credential_headers(agent.spec.auth_type, self.open_credentials(agent))

    async def list_agents(
        self, principal: Principal, agent_filter: AgentFilter, *, limit: int, after: str | None
    ) -> AgentPage:
        """One page of the tenant's agents, newest first; `after` is the previous page's cursor."""
        async with self._sessions.begin() as session:
            # One row more than asked tells whether another page follows.
            agents = await repository.list_agents(
                session, principal.tenant_id, agent_filter, limit=limit + 1, before_id=after
            )
        if len(agents) > limit:
            return AgentPage(agents[:limit], next_cursor=agents[limit - 1].id)
        return AgentPage(agents, next_cursor=None)

    async def update_agent(
        self,
        principal: Principal,
        agent_id: str,
        requested: AgentSpec,
        auth_config: Mapping[str, Any],
        paths: Collection[str],
        *,
        etag: str | None,
    ) -> Agent:
        """Changes the fields named by `paths` to their values in `requested` (and the
        credentials to `auth_config` when `auth_config` is named), then re-validates the whole
        agent. A field named but absent from the request takes its default (AIP-134); naming
        `retry_config` replaces the whole policy, `retry_config.<field>` one setting.

        `etag`, when given, must be the current one. The write is a compare-and-set on the etag
        read here, so a concurrent change makes this update fail rather than be lost."""
        _check_update_paths(paths)
        current = await self.get_agent(principal, agent_id)
        if etag is not None and etag != current.etag:
            raise EtagMismatchError("the agent has changed since it was read")
        spec = normalised(_merge(current.spec, requested, paths))
        if CREDENTIALS_FIELD in paths:
            sealed = self._seal(current.tenant_id, current.id, auth_config)
            credentials = auth_config
        else:
            sealed = current.sealed_auth_config
            credentials = self.open_credentials(current)
        await validate_agent(spec, credentials, network=self._network, resolver=self._resolver)
        updated = replace(current, spec=spec, sealed_auth_config=sealed, etag=_new_etag(), updated_at=utcnow())
        async with self._sessions.begin() as session:
            written = await repository.update_agent(session, updated, expected_etag=current.etag)
            if written:
                change = agent_change(current, updated, credentials_written=CREDENTIALS_FIELD in paths)
                await audit_repository.insert_audit_entry(
                    session, audit_entry(principal, "agent.updated", agent_id, change)
                )
        if not written:
            if etag is not None:
                raise EtagMismatchError("the agent has changed since it was read")
            raise AbortedError("the agent changed during the update; retry")
        return updated

    async def delete_agent(self, principal: Principal, agent_id: str) -> None:
        """Soft-deletes the tenant's agent: NOT_FOUND from now on, and its name is free again."""
        async with self._sessions.begin() as session:
            current = await repository.get_agent(session, principal.tenant_id, agent_id)
            if current is None or not await repository.soft_delete_agent(
                session, principal.tenant_id, agent_id, at=utcnow()
            ):
                raise AgentNotFoundError(agent_id)
            await audit_repository.insert_audit_entry(
                session, audit_entry(principal, "agent.deleted", agent_id, deleted(agent_view(current)))
            )

    def _seal(self, tenant_id: str, agent_id: str, auth_config: Mapping[str, Any]) -> str | None:
        if not auth_config:
            return None
        plaintext = json.dumps(dict(auth_config), separators=(",", ":")).encode()
        return self._secret_box.seal(plaintext, context=_credentials_context(tenant_id, agent_id))

    def open_credentials(self, agent: Agent) -> dict[str, Any]:
        """The agent's credentials in clear (`{}` when it has none). Use them for a call, never
        keep, return or log them."""
        if agent.sealed_auth_config is None:
            return {}
        plaintext = self._secret_box.open(
            agent.sealed_auth_config, context=_credentials_context(agent.tenant_id, agent.id)
        )
        credentials: dict[str, Any] = json.loads(plaintext)
        return credentials


def credential_headers(auth_type: AuthType, credentials: Mapping[str, Any]) -> dict[str, str]:
    """The headers that carry an agent's credentials (validated when they were stored)."""
    if auth_type is AuthType.BEARER:
        return {"Authorization": f"Bearer {credentials['token']}"}
    if auth_type is AuthType.APIKEY:
        return {str(credentials.get("header") or DEFAULT_APIKEY_HEADER): str(credentials["key"])}
    return {}


def _credentials_context(tenant_id: str, agent_id: str) -> str:
    # Sealed credentials open only for the agent they were sealed for: a ciphertext copied to
    # another row, or another tenant, is useless.
    return f"agent:{tenant_id}:{agent_id}:auth_config"


def _check_update_paths(paths: Collection[str]) -> None:
    if not paths:
        raise BadRequestError(
            "update_mask must name the fields to change",
            [FieldViolation("update_mask", "must name at least one field")],
        )
    violations = []
    for path in sorted(set(paths)):
        if path in OUTPUT_ONLY_FIELDS:
            violations.append(FieldViolation(path, "is output only and cannot be changed"))
        elif not _is_writable(path):
            violations.append(FieldViolation(path, "is not a field of an agent"))
    if violations:
        raise BadRequestError(
            "update_mask names fields that cannot be changed: " + ", ".join(v.field for v in violations),
            violations,
        )


def _is_writable(path: str) -> bool:
    top, _, nested = path.partition(".")
    if not nested:
        return top in SPEC_FIELDS or top == CREDENTIALS_FIELD
    return top == "retry_config" and nested in RETRY_CONFIG_FIELDS


def _merge(current: AgentSpec, requested: AgentSpec, paths: Collection[str]) -> AgentSpec:
    merged = replace(current, **{path: getattr(requested, path) for path in paths if path in SPEC_FIELDS})
    retry_changes = {
        nested: getattr(requested.retry_config, nested)
        for top, _, nested in (path.partition(".") for path in paths)
        if top == "retry_config" and nested
    }
    return replace(merged, retry_config=replace(merged.retry_config, **retry_changes))


def _new_etag() -> str:
    return secrets.token_hex(8)
