"""AgentService over a real gRPC server, on SQLite and PostgreSQL: CRUD, pagination, filters,
updates, credentials at rest, tenant isolation, scopes and validation."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from sqlalchemy import text

from flowforge.workflow.v1 import agent_pb2
from flowforge.workflow.v1 import agent_service_pb2 as pb
from flowforge.workflow.v1 import agent_service_pb2_grpc as pb_grpc
from flowforge_common.auth import ALL_SCOPES
from flowforge_common.pagination import encode_page_token
from flowforge_common.service import RunningService
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.tokens import TokenFactory
from tests.workflow_svc.harness import (
    METADATA_HOST,
    PUBLIC_URL,
    agent_stub,
    bearer,
    create_request,
    error_details,
    running_workflow_service,
    update_request,
)

TENANT = "ten_acme"
OTHER_TENANT = "ten_globex"
Metadata = list[tuple[str, str]]
Stub = pb_grpc.AgentServiceStub


@pytest.fixture
async def service(database: DatabaseTarget, tokens: TokenFactory) -> AsyncIterator[RunningService]:
    async with running_workflow_service(database, tokens) as running:
        yield running


@pytest.fixture
async def stub(service: RunningService) -> AsyncIterator[Stub]:
    async with agent_stub(service) as client:
        yield client


@pytest.fixture
def editor(tokens: TokenFactory) -> Metadata:
    return bearer(tokens.mint(tenant_id=TENANT, subject="usr_ada", scopes=("agents:read", "agents:write")))


@pytest.fixture
def outsider(tokens: TokenFactory) -> Metadata:
    return bearer(tokens.mint(tenant_id=OTHER_TENANT, subject="usr_eve", scopes=ALL_SCOPES))


async def failure(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The error a call ends with; fails the test when it succeeds."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def credentials(**values: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


async def create(stub: Stub, metadata: Metadata, **fields: Any) -> agent_pb2.Agent:
    response = await stub.CreateAgent(create_request(**fields), metadata=metadata)
    return response.agent


async def list_ids(stub: Stub, metadata: Metadata, **filters: Any) -> list[str]:
    """Every id the listing returns, following page tokens to the end."""
    ids: list[str] = []
    token = ""
    while True:
        page = await stub.ListAgents(pb.ListAgentsRequest(page_token=token, **filters), metadata=metadata)
        ids.extend(agent.id for agent in page.items)
        token = page.next_page_token
        if not token:
            return ids


async def test_create_then_get_round_trips_with_the_documented_defaults(stub: Stub, editor: Metadata) -> None:
    created = await create(stub, editor)

    assert created.id.startswith("agt_")
    assert (created.name, created.url, created.description, created.health_url) == ("summarizer", PUBLIC_URL, "", "")
    assert created.auth_type == agent_pb2.AGENT_AUTH_TYPE_NONE
    assert not created.has_credentials
    assert created.timeout_ms == 30_000
    retry = created.retry_config
    assert (retry.max_retries, retry.initial_delay_ms, retry.max_delay_ms, retry.backoff_multiplier) == (
        3,
        1000,
        30_000,
        2.0,
    )
    assert list(created.capabilities) == []
    assert created.status == agent_pb2.AGENT_STATUS_ACTIVE
    assert created.etag
    assert created.created_by == "usr_ada"
    assert created.created_at == created.updated_at
    assert abs(created.created_at.ToDatetime(dt.UTC) - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)

    fetched = await stub.GetAgent(pb.GetAgentRequest(id=created.id), metadata=editor)
    assert fetched.agent == created


async def test_create_keeps_every_writable_field_and_ignores_output_only_ones(stub: Stub, editor: Metadata) -> None:
    created = await create(
        stub,
        editor,
        description="Summarises documents",
        health_url=f"{PUBLIC_URL}/ready",
        auth_type=agent_pb2.AGENT_AUTH_TYPE_APIKEY,
        auth_config=credentials(key="k-123", header="X-Agent-Key"),
        timeout_ms=5000,
        retry_config=agent_pb2.RetryPolicy(max_retries=5, backoff_multiplier=1.5),
        capabilities=["summarize", "lang:en", "summarize"],
        status=agent_pb2.AGENT_STATUS_INACTIVE,
        # Output-only fields a client cannot set:
        id="agt_chosen_by_client",
        etag="forged",
        created_by="usr_mallory",
        created_at=timestamp_pb2.Timestamp(seconds=0),
    )
    assert created.id != "agt_chosen_by_client"
    assert created.etag != "forged"
    assert created.created_by == "usr_ada"
    assert created.created_at.seconds > 0
    assert created.description == "Summarises documents"
    assert created.health_url == f"{PUBLIC_URL}/ready"
    assert created.auth_type == agent_pb2.AGENT_AUTH_TYPE_APIKEY
    assert created.has_credentials
    assert not created.HasField("auth_config")
    assert created.timeout_ms == 5000
    retry = created.retry_config
    assert (retry.max_retries, retry.initial_delay_ms, retry.max_delay_ms, retry.backoff_multiplier) == (
        5,
        1000,
        30_000,
        1.5,
    )
    assert list(created.capabilities) == ["summarize", "lang:en"]
    assert created.status == agent_pb2.AGENT_STATUS_INACTIVE


async def test_names_are_unique_within_a_tenant(stub: Stub, editor: Metadata, outsider: Metadata) -> None:
    await create(stub, editor, name="summarizer")
    duplicate = await failure(stub.CreateAgent(create_request(name="summarizer"), metadata=editor))
    assert duplicate.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_details(duplicate)[0] == "ALREADY_EXISTS"

    other = await create(stub, editor, name="classifier")
    renamed = await failure(stub.UpdateAgent(update_request(other.id, ["name"], name="summarizer"), metadata=editor))
    assert renamed.code() == grpc.StatusCode.ALREADY_EXISTS

    # Another tenant has a namespace of its own.
    assert (await create(stub, outsider, name="summarizer")).name == "summarizer"


async def test_deleted_agents_are_gone_and_free_their_name(stub: Stub, editor: Metadata) -> None:
    created = await create(stub, editor)
    assert await stub.DeleteAgent(pb.DeleteAgentRequest(id=created.id), metadata=editor) == pb.DeleteAgentResponse()

    for call in [
        stub.GetAgent(pb.GetAgentRequest(id=created.id), metadata=editor),
        stub.DeleteAgent(pb.DeleteAgentRequest(id=created.id), metadata=editor),
        stub.UpdateAgent(update_request(created.id, ["description"], description="x"), metadata=editor),
    ]:
        assert (await failure(call)).code() == grpc.StatusCode.NOT_FOUND
    assert await list_ids(stub, editor) == []

    again = await create(stub, editor)
    assert again.id != created.id
    assert await list_ids(stub, editor) == [again.id]


async def test_pages_are_stable_while_agents_are_added(stub: Stub, editor: Metadata) -> None:
    originals = [(await create(stub, editor, name=f"agent-{i}")).id for i in range(7)]
    newest_first = sorted(originals, reverse=True)  # ids are time-sortable
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await stub.ListAgents(pb.ListAgentsRequest(limit=3, page_token=token), metadata=editor)
        pages.append([agent.id for agent in page.items])
        token = page.next_page_token
        if not token:
            break
        # Ids order by millisecond; agents added from the next millisecond on are newer than
        # every agent already listed, so they must not appear on the pages still to come.
        await asyncio.sleep(0.002)
        await create(stub, editor, name=f"late-{len(pages)}")

    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]
    first = await stub.ListAgents(pb.ListAgentsRequest(limit=3), metadata=editor)
    assert [agent.name for agent in first.items][:2] == ["late-2", "late-1"]


async def test_limits_default_cap_and_tokens_are_checked(stub: Stub, editor: Metadata) -> None:
    for i in range(21):
        await create(stub, editor, name=f"agent-{i:02d}")
    default_page = await stub.ListAgents(pb.ListAgentsRequest(), metadata=editor)
    assert len(default_page.items) == 20
    assert default_page.next_page_token
    last_page = await stub.ListAgents(
        pb.ListAgentsRequest(limit=100, page_token=default_page.next_page_token), metadata=editor
    )
    assert len(last_page.items) == 1
    assert last_page.next_page_token == ""

    for request in [
        pb.ListAgentsRequest(limit=101),
        pb.ListAgentsRequest(limit=-1),
        pb.ListAgentsRequest(page_token="not a token"),
        pb.ListAgentsRequest(page_token=encode_page_token({"offset": 20})),
    ]:
        error = await failure(stub.ListAgents(request, metadata=editor))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_details(error)[0] == "BAD_REQUEST"


async def test_filters_by_status_capability_and_name_prefix(stub: Stub, editor: Metadata) -> None:
    alpha = await create(stub, editor, name="alpha-1", capabilities=["summarize", "lang:en"])
    inactive = await create(
        stub, editor, name="alpha-2", capabilities=["classify"], status=agent_pb2.AGENT_STATUS_INACTIVE
    )
    beta = await create(stub, editor, name="beta-1", capabilities=["summarize"])

    async def matching(**filters: Any) -> set[str]:
        return set(await list_ids(stub, editor, **filters))

    assert await matching(status=agent_pb2.AGENT_STATUS_ACTIVE) == {alpha.id, beta.id}
    assert await matching(status=agent_pb2.AGENT_STATUS_INACTIVE) == {inactive.id}
    assert await matching(capability="summarize") == {alpha.id, beta.id}
    assert await matching(capability="lang:en") == {alpha.id}
    assert await matching(capability="translate") == set()
    assert await matching(name="alpha") == {alpha.id, inactive.id}
    assert await matching(name="alpha-", status=agent_pb2.AGENT_STATUS_ACTIVE) == {alpha.id}
    assert await matching(name="ALPHA") == set()  # names are case-sensitive
    assert await matching(name="alpha_") == set()  # no LIKE wildcards
    assert await matching(name="beta", capability="summarize") == {beta.id}


async def test_the_capability_filter_paginates_without_gaps(stub: Stub, editor: Metadata) -> None:
    tagged = [(await create(stub, editor, name=f"bulk-{i}", capabilities=["x", "bulk", "y"])).id for i in range(5)]
    for i in range(3):
        await create(stub, editor, name=f"other-{i}", capabilities=["x"])
    pages = []
    token = ""
    while True:
        page = await stub.ListAgents(
            pb.ListAgentsRequest(limit=2, capability="bulk", page_token=token), metadata=editor
        )
        pages.append(len(page.items))
        assert all(list(agent.capabilities) == ["x", "bulk", "y"] for agent in page.items)
        token = page.next_page_token
        if not token:
            break
    assert pages == [2, 2, 1]
    assert await list_ids(stub, editor, capability="bulk", limit=2) == sorted(tagged, reverse=True)


async def test_updates_change_only_the_masked_fields(stub: Stub, editor: Metadata) -> None:
    created = await create(
        stub,
        editor,
        description="before",
        timeout_ms=5000,
        retry_config=agent_pb2.RetryPolicy(max_retries=5, initial_delay_ms=500),
    )

    async def update(paths: list[str], **fields: Any) -> agent_pb2.Agent:
        return (await stub.UpdateAgent(update_request(created.id, paths, **fields), metadata=editor)).agent

    described = await update(["description"], description="after", timeout_ms=9999)
    assert (described.description, described.timeout_ms) == ("after", 5000)
    assert described.etag != created.etag
    assert described.created_at == created.created_at
    assert described.updated_at.ToDatetime() >= created.updated_at.ToDatetime()

    one_setting = await update(
        ["retry_config.max_retries"], retry_config=agent_pb2.RetryPolicy(max_retries=7, initial_delay_ms=9999)
    )
    assert (one_setting.retry_config.max_retries, one_setting.retry_config.initial_delay_ms) == (7, 500)

    # Naming the message replaces it (AIP-134): absent settings return to their defaults.
    whole_policy = await update(["retry_config"], retry_config=agent_pb2.RetryPolicy(max_delay_ms=60_000))
    retry = whole_policy.retry_config
    assert (retry.max_retries, retry.initial_delay_ms, retry.max_delay_ms) == (3, 1000, 60_000)

    reset = await update(["timeout_ms"])
    assert reset.timeout_ms == 30_000

    relabelled = await update(
        ["capabilities", "status"], capabilities=["b", "a", "b"], status=agent_pb2.AGENT_STATUS_INACTIVE
    )
    assert list(relabelled.capabilities) == ["b", "a"]
    assert relabelled.status == agent_pb2.AGENT_STATUS_INACTIVE
    assert (await stub.GetAgent(pb.GetAgentRequest(id=created.id), metadata=editor)).agent == relabelled


async def test_update_masks_name_only_writable_fields(stub: Stub, editor: Metadata) -> None:
    created = await create(stub, editor)
    cases = {
        (): {"update_mask"},
        ("nickname",): {"nickname"},
        ("id", "created_at", "etag", "has_credentials"): {"id", "created_at", "etag", "has_credentials"},
        ("description", "retry_config.jitter", "retry_config.max_retries.x"): {
            "retry_config.jitter",
            "retry_config.max_retries.x",
        },
    }
    for paths, fields in cases.items():
        error = await failure(
            stub.UpdateAgent(update_request(created.id, paths, description="changed"), metadata=editor)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, paths
        reason, violations = error_details(error)
        assert reason == "BAD_REQUEST"
        assert set(violations) == fields, paths
    assert (await stub.GetAgent(pb.GetAgentRequest(id=created.id), metadata=editor)).agent == created


async def test_updates_honour_the_etag(stub: Stub, editor: Metadata) -> None:
    created = await create(stub, editor)
    first = await stub.UpdateAgent(
        update_request(created.id, ["description"], etag=created.etag, description="one"), metadata=editor
    )
    stale = await failure(
        stub.UpdateAgent(
            update_request(created.id, ["description"], etag=created.etag, description="two"), metadata=editor
        )
    )
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(stale)[0] == "ETAG_MISMATCH"

    second = await stub.UpdateAgent(
        update_request(created.id, ["description"], etag=first.agent.etag, description="two"), metadata=editor
    )
    assert second.agent.description == "two"
    assert second.agent.etag not in {created.etag, first.agent.etag}


async def test_updates_revalidate_the_merged_agent(stub: Stub, editor: Metadata) -> None:
    created = await create(stub, editor)
    cases = [
        (["timeout_ms"], {"timeout_ms": 10}, "timeout_ms"),
        (["url"], {"url": f"http://{METADATA_HOST}/"}, "url"),
        (["health_url"], {"health_url": "http://169.254.169.254/"}, "health_url"),
        (["auth_type"], {"auth_type": agent_pb2.AGENT_AUTH_TYPE_BEARER}, "auth_config.token"),
        (
            ["retry_config.max_delay_ms"],
            {"retry_config": agent_pb2.RetryPolicy(max_delay_ms=100)},
            "retry_config.max_delay_ms",
        ),
    ]
    for paths, fields, field in cases:
        error = await failure(stub.UpdateAgent(update_request(created.id, paths, **fields), metadata=editor))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_details(error) == ("VALIDATION_FAILED", {field: error_details(error)[1][field]}), paths
    assert (await stub.GetAgent(pb.GetAgentRequest(id=created.id), metadata=editor)).agent == created


async def test_credentials_are_write_only_and_sealed_at_rest(
    service: RunningService, stub: Stub, editor: Metadata
) -> None:
    token = "s3cr3t-bearer-token"
    created = await create(
        stub, editor, auth_type=agent_pb2.AGENT_AUTH_TYPE_BEARER, auth_config=credentials(token=token)
    )

    responses = [
        created,
        (await stub.GetAgent(pb.GetAgentRequest(id=created.id), metadata=editor)).agent,
        (await stub.ListAgents(pb.ListAgentsRequest(), metadata=editor)).items[0],
        (await stub.UpdateAgent(update_request(created.id, ["description"], description="d"), metadata=editor)).agent,
    ]
    for agent in responses:
        assert agent.has_credentials
        assert not agent.HasField("auth_config")
        assert token.encode() not in agent.SerializeToString()

    async def stored() -> dict[str, Any]:
        assert service.engine is not None
        async with service.engine.connect() as conn:
            result = await conn.execute(text("SELECT * FROM agents WHERE id = :id"), {"id": created.id})
            return dict(result.mappings().one())

    row = await stored()
    assert row["sealed_auth_config"].startswith("v1:")
    assert all(token not in str(value) for value in row.values())

    # The stored credentials are opened to re-validate them against a new auth_type.
    switched = await failure(
        stub.UpdateAgent(
            update_request(created.id, ["auth_type"], auth_type=agent_pb2.AGENT_AUTH_TYPE_APIKEY), metadata=editor
        )
    )
    assert set(error_details(switched)[1]) == {"auth_config.key", "auth_config.token"}
    assert token not in str(switched.details()) + str(switched.trailing_metadata())

    replaced = await stub.UpdateAgent(
        update_request(
            created.id,
            ["auth_type", "auth_config"],
            auth_type=agent_pb2.AGENT_AUTH_TYPE_APIKEY,
            auth_config=credentials(key="k-2"),
        ),
        metadata=editor,
    )
    assert replaced.agent.has_credentials
    assert (await stored())["sealed_auth_config"] != row["sealed_auth_config"]

    cleared = await stub.UpdateAgent(
        update_request(created.id, ["auth_type", "auth_config"], auth_type=agent_pb2.AGENT_AUTH_TYPE_NONE),
        metadata=editor,
    )
    assert not cleared.agent.has_credentials
    assert (await stored())["sealed_auth_config"] is None


async def test_another_tenants_agents_do_not_exist(stub: Stub, editor: Metadata, outsider: Metadata) -> None:
    created = await create(stub, editor, capabilities=["summarize"])
    for call in [
        stub.GetAgent(pb.GetAgentRequest(id=created.id), metadata=outsider),
        stub.UpdateAgent(update_request(created.id, ["description"], description="pwned"), metadata=outsider),
        stub.DeleteAgent(pb.DeleteAgentRequest(id=created.id), metadata=outsider),
    ]:
        error = await failure(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
    assert await list_ids(stub, outsider) == []
    assert await list_ids(stub, outsider, capability="summarize") == []
    assert (await stub.GetAgent(pb.GetAgentRequest(id=created.id), metadata=editor)).agent == created


async def test_scopes_are_enforced(stub: Stub, editor: Metadata, tokens: TokenFactory) -> None:
    created = await create(stub, editor)
    reader = bearer(tokens.mint(tenant_id=TENANT, scopes=("agents:read",)))
    for call in [
        stub.CreateAgent(create_request(name="other"), metadata=reader),
        stub.UpdateAgent(update_request(created.id, ["description"], description="x"), metadata=reader),
        stub.DeleteAgent(pb.DeleteAgentRequest(id=created.id), metadata=reader),
    ]:
        assert (await failure(call)).code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await stub.GetAgent(pb.GetAgentRequest(id=created.id), metadata=reader)).agent == created
    assert await list_ids(stub, reader) == [created.id]

    workflows_only = bearer(tokens.mint(tenant_id=TENANT, scopes=("workflows:read", "workflows:write")))
    denied = await failure(stub.ListAgents(pb.ListAgentsRequest(), metadata=workflows_only))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    anonymous = await failure(stub.ListAgents(pb.ListAgentsRequest()))
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_validation_failures_name_each_field(stub: Stub, editor: Metadata) -> None:
    apikey = agent_pb2.AGENT_AUTH_TYPE_APIKEY
    bearer_auth = agent_pb2.AGENT_AUTH_TYPE_BEARER
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": ""}, "name"),
        ({"name": "no spaces please"}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"url": ""}, "url"),
        ({"url": "ftp://agent.example.com/"}, "url"),
        ({"url": "http://user:pw@agent.example.com/"}, "url"),
        ({"url": "http://10.0.0.1/"}, "url"),
        ({"description": "x" * 2001}, "description"),
        ({"health_url": "file:///etc/passwd"}, "health_url"),
        ({"auth_config": credentials(token="t")}, "auth_config"),
        ({"auth_type": bearer_auth}, "auth_config.token"),
        ({"auth_type": bearer_auth, "auth_config": credentials(token="a b")}, "auth_config.token"),
        ({"auth_type": apikey, "auth_config": credentials(header="X-Key")}, "auth_config.key"),
        ({"auth_type": apikey, "auth_config": credentials(key="k", header="Content-Length")}, "auth_config.header"),
        ({"auth_type": apikey, "auth_config": credentials(key="k", extra="x")}, "auth_config.extra"),
        ({"timeout_ms": 999}, "timeout_ms"),
        ({"timeout_ms": 300_001}, "timeout_ms"),
        ({"retry_config": agent_pb2.RetryPolicy(max_retries=11)}, "retry_config.max_retries"),
        ({"retry_config": agent_pb2.RetryPolicy(max_retries=-1)}, "retry_config.max_retries"),
        ({"retry_config": agent_pb2.RetryPolicy(initial_delay_ms=99)}, "retry_config.initial_delay_ms"),
        ({"retry_config": agent_pb2.RetryPolicy(max_delay_ms=999)}, "retry_config.max_delay_ms"),
        ({"retry_config": agent_pb2.RetryPolicy(backoff_multiplier=0.9)}, "retry_config.backoff_multiplier"),
        ({"capabilities": ["fine", "not fine"]}, "capabilities[1]"),
    ]
    for fields, field in cases:
        error = await failure(stub.CreateAgent(create_request(**fields), metadata=editor))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        reason, violations = error_details(error)
        assert (reason, list(violations)) == ("VALIDATION_FAILED", [field]), fields
        assert violations[field]

    everything = await failure(
        stub.CreateAgent(
            pb.CreateAgentRequest(agent=agent_pb2.Agent(auth_type=bearer_auth, timeout_ms=1, capabilities=[""])),
            metadata=editor,
        )
    )
    assert list(error_details(everything)[1]) == ["name", "url", "auth_config.token", "timeout_ms", "capabilities[0]"]

    unknown_enum = await failure(stub.CreateAgent(create_request(auth_type=99), metadata=editor))
    assert error_details(unknown_enum) == ("BAD_REQUEST", {"auth_type": "unknown value"})
    assert await list_ids(stub, editor) == []
