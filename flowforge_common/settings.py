"""Settings shared by every process; each process subclasses `ServiceSettings` once."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from flowforge_common.netpolicy import AgentNetworkMode


class CommonSettings(BaseSettings):
    """Environment-driven settings every FlowForge process reads (`FLOWFORGE_*`)."""

    model_config = SettingsConfigDict(env_prefix="FLOWFORGE_", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(default=Path(".flowforge"), description="Embedded-mode files (SQLite, dev keys).")
    log_level: str = "INFO"
    log_format: str = Field(default="text", description="`text` or `json`.")
    jwt_issuer: str = "flowforge"
    jwt_audience: str = "flowforge-api"
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "FLOWFORGE_REDIS_URL"))
    auth_target: str = Field(default="127.0.0.1:50051", description="host:port of auth_svc.")
    workflow_target: str = Field(default="127.0.0.1:50052", description="host:port of workflow_svc.")
    execution_target: str = Field(default="127.0.0.1:50053", description="host:port of execution_svc.")
    shutdown_grace_seconds: float = 10.0
    gc_threshold: int = Field(
        default=50_000,
        ge=0,
        description=(
            "Allocations between young-generation garbage collections (CPython's default is 700); the "
            "objects alive after start are frozen out of collections. 0 keeps CPython's defaults."
        ),
    )
    internal_token: SecretStr | None = Field(
        default=None,
        min_length=32,
        description=(
            "Shared secret FlowForge's services present to each other (execution_svc resolving agents "
            "in workflow_svc). Embedded mode generates one under the data directory."
        ),
    )


class ServiceSettings(CommonSettings):
    """Settings of one gRPC service. Subclasses set `service_name` and default ports."""

    service_name: str = "service"
    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int = Field(default=0, description="Prometheus port; 0 disables the exporter.")
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "FLOWFORGE_DATABASE_URL")
    )
    db_schema: str | None = Field(default=None, description="PostgreSQL schema of this service; defaults to its name.")
    migrate_on_start: bool = True
    agent_network: AgentNetworkMode = Field(
        default=AgentNetworkMode.PUBLIC_ONLY,
        description="`public-only` (production) or `allow-private` (`make run`): which addresses agent "
        "and `http` step URLs may point at (`FLOWFORGE_AGENT_NETWORK`), at registration and at every call.",
    )
    db_pool_size: int = 10
    secrets_key: SecretStr | None = Field(
        default=None, description="Base64 32-byte AES-GCM keys, comma-separated: the first seals, all open."
    )

    def schema(self) -> str:  # type: ignore[override]  # pydantic's deprecated classmethod
        """PostgreSQL schema this service owns."""
        return self.db_schema or self.service_name

    def sqlite_path(self) -> Path:
        """Embedded-mode database file of this service."""
        return self.data_dir / f"{self.service_name}.db"
