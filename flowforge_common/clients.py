"""gRPC client plumbing shared by the edge and the services."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from flowforge.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from flowforge_common.auth import JwksKeySource, KeyFetcher, TokenVerifier


def open_channel(target: str) -> grpc.aio.Channel:
    """An insecure channel to a FlowForge service with tracing interceptors."""
    return grpc.aio.insecure_channel(
        target,
        interceptors=aio_client_interceptors(),
        options=[("grpc.keepalive_time_ms", 30_000), ("grpc.max_receive_message_length", 16 * 1024 * 1024)],
    )


def jwks_fetcher(channel: grpc.aio.Channel, timeout: float = 5.0) -> KeyFetcher:
    """Fetches auth_svc's JWKS over gRPC."""
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)

    async def fetch() -> list[dict[str, Any]]:
        response = await stub.GetJwks(auth_service_pb2.GetJwksRequest(), timeout=timeout)
        return [json_format.MessageToDict(key) for key in response.keys]

    return fetch


def remote_token_verifier(channel: grpc.aio.Channel, *, issuer: str, audience: str) -> TokenVerifier:
    """A verifier whose keys come from auth_svc (fetched lazily, refreshed on unknown kid)."""
    return TokenVerifier(
        JwksKeySource(jwks_fetcher(channel), min_refresh_interval=5.0), issuer=issuer, audience=audience
    )
