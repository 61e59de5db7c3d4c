"""Settings of the edge process."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import NoDecode

from flowforge_common.settings import CommonSettings


class EdgeSettings(CommonSettings):
    """`FLOWFORGE_EDGE_*` plus the shared `FLOWFORGE_*` settings (service targets, JWT, logging)."""

    # FLOWFORGE_HOST is the bind address of every process (deploy/ sets it); the edge-specific
    # name wins when both are set.
    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("FLOWFORGE_EDGE_HOST", "FLOWFORGE_HOST"))
    port: int = Field(default=8080, validation_alias=AliasChoices("FLOWFORGE_EDGE_PORT"))
    max_body_bytes: int = Field(default=1024 * 1024, gt=0, description="Larger request bodies get 413.")
    request_timeout_seconds: float = Field(default=30.0, gt=0, description="Deadline of one upstream gRPC call.")
    ready_timeout_seconds: float = Field(
        default=2.0, gt=0, description="Deadline of each upstream health check behind /health/ready."
    )
    # NoDecode: the environment gives a comma-separated list, not JSON.
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS; `*` allows any. Empty disables CORS."
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value


SETTINGS_KEY = web.AppKey("settings", EdgeSettings)
