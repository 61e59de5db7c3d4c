"""Tracing is on only when spans can be exported: without an OTLP endpoint no SDK provider is
installed and no gRPC interceptor of OpenTelemetry runs, on clients or servers (W3C trace
context still travels: the edge forwards `traceparent` as metadata, see test_edge_transcoding)."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from flowforge_common import clients, grpc_server
from flowforge_common.clients import open_channel
from flowforge_common.grpc_server import start_grpc_server
from flowforge_common.telemetry import OTLP_ENDPOINT_VARIABLES, setup_tracing, tracing_enabled
from tests.fixtures.tokens import TokenFactory


def exporter_installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is not None
    except ModuleNotFoundError:
        return False


@pytest.fixture(autouse=True)
def no_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTLP_ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_without_an_endpoint_tracing_stays_off() -> None:
    assert setup_tracing("flowforge-test") is False
    assert not tracing_enabled()
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)


@pytest.mark.skipif(exporter_installed(), reason="the OTLP exporter is installed")
def test_an_endpoint_without_the_exporter_package_is_reported_and_leaves_tracing_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    with caplog.at_level(logging.WARNING):
        assert setup_tracing("flowforge-test") is False
    assert "opentelemetry-exporter-otlp is not installed" in caplog.text
    assert not tracing_enabled()


async def test_channels_have_no_tracing_interceptors_when_tracing_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    real = grpc.aio.insecure_channel

    def capture(target: str, **kwargs: Any) -> grpc.aio.Channel:
        seen.update(kwargs)
        return real(target, **kwargs)

    monkeypatch.setattr(clients.grpc.aio, "insecure_channel", capture)
    channel = open_channel("127.0.0.1:1")
    await channel.close()
    assert not seen["interceptors"]


async def test_servers_run_only_the_flowforge_interceptor_when_tracing_is_off(
    monkeypatch: pytest.MonkeyPatch, tokens: TokenFactory
) -> None:
    seen: dict[str, Any] = {}
    real = grpc.aio.server

    def capture(**kwargs: Any) -> grpc.aio.Server:
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(grpc_server.grpc.aio, "server", capture)
    server = await start_grpc_server(
        host="127.0.0.1", port=0, services=[], registrations=[], verifier=tokens.verifier()
    )
    await server.stop(0)
    assert [type(interceptor).__name__ for interceptor in seen["interceptors"]] == ["ServiceInterceptor"]
