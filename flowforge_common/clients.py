"""gRPC client plumbing shared by the edge and the services."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from flowforge.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from flowforge_common.auth import (
    ApiKeyResolver,
    CachedApiKeyResolver,
    JwksKeySource,
    KeyFetcher,
    Principal,
    TokenVerifier,
)
from flowforge_common.errors import UnauthenticatedError, UnavailableError
from flowforge_common.telemetry import tracing_enabled


def open_channel(target: str) -> grpc.aio.Channel:
    """An insecure channel to a FlowForge service, with the tracing interceptors when tracing
    is on (`setup_tracing` runs first)."""
    return grpc.aio.insecure_channel(
        target,
        interceptors=aio_client_interceptors() if tracing_enabled() else None,
        options=[("grpc.keepalive_time_ms", 30_000), ("grpc.max_receive_message_length", 16 * 1024 * 1024)],
    )


def jwks_fetcher(channel: grpc.aio.Channel, timeout: float = 5.0) -> KeyFetcher:
    """Fetches auth_svc's JWKS over gRPC."""
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)

    async def fetch() -> list[dict[str, Any]]:
        response = await stub.GetJwks(auth_service_pb2.GetJwksRequest(), timeout=timeout)
        return [json_format.MessageToDict(key) for key in response.keys]

    return fetch


def api_key_verifier(channel: grpc.aio.Channel, timeout: float = 5.0) -> ApiKeyResolver:
    """Resolves API keys through auth_svc's VerifyApiKey, uncached.

    UNAUTHENTICATED from auth_svc is UnauthenticatedError; any other failure means auth_svc could
    not answer, which is UnavailableError (503), never a silent acceptance."""
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)

    async def verify(key: str) -> Principal:
        try:
            response = await stub.VerifyApiKey(auth_service_pb2.VerifyApiKeyRequest(key=key), timeout=timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
                raise UnauthenticatedError("the API key is not valid") from error
            raise UnavailableError("API keys cannot be verified right now") from error
        return Principal(tenant_id=response.tenant_id, subject=response.subject, scopes=frozenset(response.scopes))

    return verify


def remote_api_key_resolver(channel: grpc.aio.Channel, *, ttl_seconds: float = 4.0) -> CachedApiKeyResolver:
    """API key resolution through auth_svc with a cache of at most 5 s (the revocation bound)."""
    return CachedApiKeyResolver(api_key_verifier(channel), ttl_seconds=ttl_seconds)


def remote_token_verifier(channel: grpc.aio.Channel, *, issuer: str, audience: str) -> TokenVerifier:
    """A verifier whose keys come from auth_svc (fetched lazily, refreshed on unknown kid), and
    which resolves API keys through auth_svc too."""
    return TokenVerifier(
        JwksKeySource(jwks_fetcher(channel), min_refresh_interval=5.0),
        issuer=issuer,
        audience=audience,
        api_keys=remote_api_key_resolver(channel),
    )
