"""execution_svc's gRPC surface: authenticated, scope-checked, and UNIMPLEMENTED for what is
not built yet (schedules, webhooks, WatchEvents, stats)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from execution_svc.server import create_server
from execution_svc.settings import ExecutionSettings
from flowforge.execution.v1 import execution_service_pb2 as pb
from flowforge.execution.v1 import execution_service_pb2_grpc as pb_grpc
from flowforge_common.service import RunningService
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.tokens import TokenFactory


@pytest.fixture
async def execution(database: DatabaseTarget, tokens: TokenFactory) -> AsyncIterator[RunningService]:
    settings = ExecutionSettings(
        port=0, database_url=database.url, db_schema=database.schema, data_dir=database.data_dir, workers=0
    )
    service = await create_server(settings, verifier=tokens.verifier())
    yield service
    await service.stop(0)


async def test_runs_need_credentials_and_scopes_and_later_milestones_answer_unimplemented(
    execution: RunningService, tokens: TokenFactory
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{execution.port}") as channel:
        stub = pb_grpc.ExecutionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stub.GetRun(pb.GetRunRequest(id="run_x"))
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED

        viewer = [("authorization", f"Bearer {tokens.mint(scopes=('runs:read',))}")]
        with pytest.raises(grpc.aio.AioRpcError) as forbidden:
            await stub.CancelRun(pb.CancelRunRequest(id="run_x"), metadata=viewer)
        assert forbidden.value.code() == grpc.StatusCode.PERMISSION_DENIED

        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetRun(pb.GetRunRequest(id="run_x"), metadata=viewer)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

        stream = stub.WatchRun(pb.WatchRunRequest(run_id="run_x"), metadata=viewer)
        with pytest.raises(grpc.aio.AioRpcError) as watch_missing:
            async for _ in stream:
                pass
        assert watch_missing.value.code() == grpc.StatusCode.NOT_FOUND

        with pytest.raises(grpc.aio.AioRpcError) as later:
            await stub.GetStats(pb.GetStatsRequest(), metadata=viewer)
        assert later.value.code() == grpc.StatusCode.UNIMPLEMENTED
