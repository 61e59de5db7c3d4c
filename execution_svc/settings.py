"""Settings of the execution service process."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from flowforge_common.settings import ServiceSettings


class ExecutionSettings(ServiceSettings):
    """`FLOWFORGE_EXECUTION_*` plus the shared `FLOWFORGE_*`, `DATABASE_URL`, `REDIS_URL`."""

    service_name: str = "execution"
    port: int = Field(default=50053, validation_alias=AliasChoices("FLOWFORGE_EXECUTION_PORT"))
    metrics_port: int = Field(default=0, validation_alias=AliasChoices("FLOWFORGE_EXECUTION_METRICS_PORT"))
    workers: int = Field(
        default=1,
        validation_alias=AliasChoices("FLOWFORGE_EXECUTION_WORKERS"),
        description="Workers in this process; 0 serves the API only.",
    )
    worker_concurrency: int = Field(
        default=64,
        validation_alias=AliasChoices("FLOWFORGE_EXECUTION_WORKER_CONCURRENCY"),
        description="Attempts one worker runs at once.",
    )
    lease_seconds: float = Field(
        default=30.0,
        validation_alias=AliasChoices("FLOWFORGE_EXECUTION_LEASE_SECONDS"),
        description="How long a claimed task stays a worker's without a heartbeat.",
    )
    heartbeat_seconds: float = Field(
        default=10.0, validation_alias=AliasChoices("FLOWFORGE_EXECUTION_HEARTBEAT_SECONDS")
    )
    idle_poll_seconds: float = Field(
        default=2.0,
        validation_alias=AliasChoices("FLOWFORGE_EXECUTION_IDLE_POLL_SECONDS"),
        description="Fallback poll when no notification arrives (notifications normally wake workers).",
    )
    max_output_bytes: int = Field(
        default=1024 * 1024,
        validation_alias=AliasChoices("FLOWFORGE_EXECUTION_MAX_OUTPUT_BYTES"),
        description="A step output (or run output) over this fails clearly instead of bloating rows.",
    )
    max_connections: int = Field(
        default=512,
        validation_alias=AliasChoices("FLOWFORGE_EXECUTION_MAX_CONNECTIONS"),
        description="Size of the shared HTTP connection pool to agents.",
    )
