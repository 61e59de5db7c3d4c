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
    worker_claim_batch: int = Field(
        default=32,
        validation_alias=AliasChoices("FLOWFORGE_EXECUTION_WORKER_CLAIM_BATCH"),
        description="Most tasks one claim takes (they are started in one transaction).",
    )
    reap_seconds: float = Field(
        default=5.0,
        validation_alias=AliasChoices("FLOWFORGE_EXECUTION_REAP_SECONDS"),
        description="How often a worker looks for expired leases to put back in the queue.",
    )
    static_agents: dict[str, str] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("FLOWFORGE_EXECUTION_STATIC_AGENTS"),
        description=(
            "JSON object of agent name -> URL served to every tenant, for development and tests "
            "until workflow_svc resolves agents; empty means agents come from workflow_svc."
        ),
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
    circuit_failure_threshold: int = Field(
        default=5,
        gt=0,
        validation_alias=AliasChoices("FLOWFORGE_EXECUTION_CIRCUIT_FAILURE_THRESHOLD"),
        description="Consecutive retryable failures (5xx, 429, timeouts) that open an agent's circuit.",
    )
    circuit_open_seconds: float = Field(
        default=30.0,
        gt=0,
        validation_alias=AliasChoices("FLOWFORGE_EXECUTION_CIRCUIT_OPEN_SECONDS"),
        description="How long an open circuit refuses calls before one trial call is let through.",
    )
    agent_max_in_flight: int = Field(
        default=64,
        gt=0,
        validation_alias=AliasChoices("FLOWFORGE_EXECUTION_AGENT_MAX_IN_FLIGHT"),
        description="Most calls one process has in flight to one agent; further attempts wait for a slot.",
    )
    watch_buffer_events: int = Field(
        default=256,
        gt=0,
        validation_alias=AliasChoices("FLOWFORGE_EXECUTION_WATCH_BUFFER_EVENTS"),
        description="Events buffered per WatchRun/WatchEvents stream for a consumer that reads slowly.",
    )
    watch_stall_seconds: float = Field(
        default=30.0,
        gt=0,
        validation_alias=AliasChoices("FLOWFORGE_EXECUTION_WATCH_STALL_SECONDS"),
        description="A watcher whose buffer stays full this long is ended with RESOURCE_EXHAUSTED (it can resume).",
    )
