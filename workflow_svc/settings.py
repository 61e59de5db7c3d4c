"""Settings of the workflow service process."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from flowforge_common.settings import ServiceSettings


class WorkflowSettings(ServiceSettings):
    """`FLOWFORGE_WORKFLOW_*` plus the shared `FLOWFORGE_*`, `DATABASE_URL`, `REDIS_URL`."""

    service_name: str = "workflow"
    port: int = Field(default=50052, validation_alias=AliasChoices("FLOWFORGE_WORKFLOW_PORT"))
    metrics_port: int = Field(default=0, validation_alias=AliasChoices("FLOWFORGE_WORKFLOW_METRICS_PORT"))
