"""Settings of the edge process."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from flowforge_common.settings import CommonSettings


class EdgeSettings(CommonSettings):
    """`FLOWFORGE_EDGE_*` plus the shared `FLOWFORGE_*` settings (service targets, JWT, logging)."""

    # FLOWFORGE_HOST is the bind address of every process (deploy/ sets it); the edge-specific
    # name wins when both are set.
    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("FLOWFORGE_EDGE_HOST", "FLOWFORGE_HOST"))
    port: int = Field(default=8080, validation_alias=AliasChoices("FLOWFORGE_EDGE_PORT"))
    max_body_bytes: int = Field(default=1024 * 1024, gt=0, description="Larger request bodies get 413.")
    access_log: bool = Field(
        default=True,
        description="One INFO line per request on the `edge.access` logger (`FLOWFORGE_ACCESS_LOG`); `false` "
        "when a proxy in front of the edge logs requests already.",
    )
    request_timeout_seconds: float = Field(default=30.0, gt=0, description="Deadline of one upstream gRPC call.")
    ready_timeout_seconds: float = Field(
        default=2.0, gt=0, description="Deadline of each upstream health check behind /health/ready."
    )
    sse_heartbeat_seconds: float = Field(
        default=15.0, gt=0, description="Idle SSE streams get a `: keepalive` comment this often."
    )
    stream_buffer_events: int = Field(
        default=64, gt=0, description="Events buffered per SSE stream or WebSocket subscription from upstream."
    )
    ws_send_queue: int = Field(
        default=256, gt=0, description="Messages queued for one WebSocket client; a client that lets it fill is closed."
    )
    ws_auth_timeout_seconds: float = Field(
        default=10.0, gt=0, description="A WebSocket without credentials must send its auth message this soon."
    )
    ws_max_subscriptions: int = Field(default=100, gt=0, description="Subscriptions one WebSocket may hold.")
    rate_limit_enabled: bool = Field(default=True, description="Whether the edge rate-limits calls at all.")
    rate_limit_auth_per_minute: int = Field(
        default=20, gt=0, description="Sign-in calls (signup, login, refresh, logout, token) per client IP."
    )
    rate_limit_login_failures_per_account: int = Field(
        default=10,
        gt=0,
        description="Failed password sign-ins per email address (whether or not it has an account) within "
        "`rate_limit_login_failures_window_seconds`, whatever the client IP; a sign-in that proves the password "
        "gives its attempt back.",
    )
    rate_limit_login_failures_window_seconds: int = Field(
        default=900,
        gt=0,
        description="Window of the per-email limit: a quiet address may spend the whole limit at once, then one "
        "attempt per window / limit.",
    )
    rate_limit_key_secret: SecretStr | None = Field(
        default=None,
        min_length=32,
        description="HMAC key that turns email addresses into rate-limit keys, so that Redis never holds an "
        "address; the same value on every edge replica. Unset: a random key per process (per-email limits "
        "then count per replica).",
    )
    rate_limit_public_per_minute: int = Field(
        default=300, gt=0, description="Other unauthenticated calls (signed inbound hooks) per client IP."
    )
    rate_limit_read_per_minute: int = Field(default=1200, gt=0, description="Reads (GET) per principal.")
    rate_limit_write_per_minute: int = Field(default=300, gt=0, description="Writes per principal.")
    rate_limit_execute_per_minute: int = Field(
        default=120, gt=0, description="Run starts and run controls (`runs:execute` RPCs) per principal."
    )
    rate_limit_tenant_execute_per_minute: int = Field(
        default=600,
        gt=0,
        description="Run starts and run controls per tenant, all its principals (users, API keys, service "
        "accounts) together: minting keys does not multiply the per-principal budget. A tenant's own figure goes "
        'in `rate_limit_overrides` under `"tenant_execute"`.',
    )
    rate_limit_overrides: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="Per tenant id or subject (`apikey:<id>`, a user or service account id), per-minute limits "
        'by class, as JSON: `{"ten_x": {"read": 5000}}`. The subject\'s entry wins over its tenant\'s.',
    )
    rate_limit_prefix: str = Field(
        default="flowforge:ratelimit:", description="Prefix of the rate-limit keys in Redis."
    )
    rate_limit_redis_timeout_seconds: float = Field(
        default=0.25, gt=0, description="Redis calls slower than this fall back to the in-memory limiter."
    )
    trusted_proxy_hops: int = Field(
        default=0,
        ge=0,
        description="Reverse proxies in front of the edge that append to X-Forwarded-For; the client IP that "
        "per-IP limits use is the entry that many places from the end (0: the socket's peer address).",
    )
    max_header_bytes: int = Field(
        default=16 * 1024, gt=0, description="Request header lines (and each field) longer than this get 431."
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
