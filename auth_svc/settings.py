"""Settings of the auth service process."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr

from flowforge_common.settings import ServiceSettings


class AuthSettings(ServiceSettings):
    """`FLOWFORGE_AUTH_*`, `FLOWFORGE_ALLOW_SIGNUP`, `FLOWFORGE_SIGNING_KEY` plus the shared settings."""

    service_name: str = "auth"
    port: int = Field(default=50051, validation_alias=AliasChoices("FLOWFORGE_AUTH_PORT"))
    metrics_port: int = Field(default=0, validation_alias=AliasChoices("FLOWFORGE_AUTH_METRICS_PORT"))
    allow_signup: bool = Field(
        default=True,
        validation_alias=AliasChoices("FLOWFORGE_ALLOW_SIGNUP"),
        description="Whether anyone may create a tenant through Signup.",
    )
    access_token_ttl_seconds: int = Field(
        default=900,
        gt=0,
        validation_alias=AliasChoices("FLOWFORGE_ACCESS_TOKEN_TTL_SECONDS"),
        description="Lifetime of access tokens.",
    )
    refresh_token_ttl_seconds: int = Field(
        default=30 * 24 * 3600,
        gt=0,
        validation_alias=AliasChoices("FLOWFORGE_REFRESH_TOKEN_TTL_SECONDS"),
        description="Lifetime of a refresh token; each refresh mints a new one.",
    )
    signing_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("FLOWFORGE_SIGNING_KEY"),
        description="Ed25519 private key (PKCS#8 PEM) that signs access tokens; production sets it. "
        "Unset: a dev key is generated once and kept under the data directory.",
    )
