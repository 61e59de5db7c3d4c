"""Domain errors of workflow_svc; each carries its gRPC code through the shared hierarchy."""

from __future__ import annotations

from flowforge_common.errors import AlreadyExistsError, NotFoundError


class AgentNotFoundError(NotFoundError):
    """No live agent with this id in the caller's tenant (another tenant's agent included)."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"agent {agent_id!r} not found", metadata={"id": agent_id})


class AgentNameTakenError(AlreadyExistsError):
    """Another live agent of the tenant already has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"an agent named {name!r} already exists", metadata={"name": name})


class WorkflowNotFoundError(NotFoundError):
    """No live workflow with this id in the caller's tenant, or not at the requested version."""

    def __init__(self, workflow_id: str, version: int | None = None) -> None:
        if version is None:
            super().__init__(f"workflow {workflow_id!r} not found", metadata={"id": workflow_id})
        else:
            super().__init__(
                f"workflow {workflow_id!r} has no version {version}",
                metadata={"id": workflow_id, "version": str(version)},
            )


class WorkflowNameTakenError(AlreadyExistsError):
    """Another live workflow of the tenant already has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"a workflow named {name!r} already exists", metadata={"name": name})


class TemplateNotFoundError(NotFoundError):
    """Neither a built-in template nor one of the caller's tenant has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"workflow template {name!r} not found", metadata={"name": name})


class TemplateNameTakenError(AlreadyExistsError):
    """A built-in template or another template of the tenant already has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"a workflow template named {name!r} already exists", metadata={"name": name})
