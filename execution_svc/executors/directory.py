"""Agent directories: where the executor learns an agent's URL, credentials and defaults."""

from __future__ import annotations

from execution_svc.domain.ports import AgentEndpoint
from flowforge_common.errors import NotFoundError, UnavailableError


class InMemoryAgentDirectory:
    """Agents registered by hand (tests, embedded experiments)."""

    def __init__(self) -> None:
        self._agents: dict[tuple[str, str], AgentEndpoint] = {}

    def register(self, tenant_id: str, endpoint: AgentEndpoint) -> None:
        """Adds or replaces the tenant's agent of that name."""
        self._agents[(tenant_id, endpoint.name)] = endpoint

    async def resolve(self, tenant_id: str, name: str) -> AgentEndpoint:
        """See `AgentDirectory.resolve`."""
        try:
            return self._agents[(tenant_id, name)]
        except KeyError:
            raise NotFoundError(f"agent {name!r} is not registered") from None


class WorkflowServiceAgentDirectory:
    """TODO(next step): agents resolved from workflow_svc over gRPC.

    The public `GetAgent` never returns credentials (`auth_config` is write-only), so this
    needs an internal workflow_svc RPC, e.g. `ResolveAgent(tenant_id, name) -> {url,
    auth headers (decrypted), timeout_ms, retry_config, status}`, callable only by service
    identities, with a short-lived cache here (invalidated on `agent.status.changed`).
    """

    async def resolve(self, _tenant_id: str, _name: str) -> AgentEndpoint:
        """Unavailable until workflow_svc serves the internal RPC (steps retry, then fail)."""
        raise UnavailableError("agent resolution needs workflow_svc's internal ResolveAgent RPC (not built yet)")
