"""SSRF through agent registration: URLs that reach metadata, link-local or (in production)
private addresses are refused with a violation on the field, whatever their spelling."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import grpc
import pytest

from flowforge.workflow.v1 import agent_service_pb2 as pb
from flowforge.workflow.v1 import agent_service_pb2_grpc as pb_grpc
from flowforge_common.netpolicy import AgentNetworkMode
from flowforge_common.service import RunningService
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.tokens import TokenFactory
from tests.workflow_svc.harness import (
    INTERNAL_HOST,
    METADATA_HOST,
    StubResolver,
    agent_stub,
    bearer,
    create_request,
    error_details,
    running_workflow_service,
    update_request,
)

# 169.254.169.254 (AWS, GCP, Azure metadata) and friends, in the spellings attackers use.
METADATA_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://2852039166/",
    "http://0xa9fea9fe/",
    "http://0xA9FEA9FE/",
    "http://0251.0376.0251.0376/",
    "http://0xa9.0xfe.0xa9.0xfe/",
    "http://169.254.43518/",
    "http://169.16689662/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[64:ff9b::169.254.169.254]/",
    "http://[::169.254.169.254]/",
    "http://[2002:a9fe:a9fe::]/",
    "http://[fe80::1]/",
    "http://[fe80::a9fe:a9fe]/",
    "http://[fd00:ec2::254]/",
    "http://100.100.100.200/",
    "http://169.254.170.2/v2/credentials",
    f"http://{METADATA_HOST}/computeMetadata/v1/",
    f"http://{METADATA_HOST.upper()}./",
    "http://mixed.example.com/",
    "http://0.0.0.0:8080/",
    "http://0/",
    "http://[::]/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
]

# Reachable only inside the deployment: refused in production, fine for `make run`.
PRIVATE_URLS = [
    "http://10.0.0.1/",
    "http://172.16.5.4:8080/run",
    "http://192.168.1.10/",
    "http://100.64.0.1/",
    "http://127.0.0.1:9000/run",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://017700000001/",
    "http://localhost:9000/run",
    "http://agent.localhost/",
    "http://[::1]:9000/",
    "http://[::ffff:10.0.0.1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[fd12:3456:789a::1]/",
    f"http://{INTERNAL_HOST}/run",
]

StartService = Callable[[AgentNetworkMode], AbstractAsyncContextManager[RunningService]]


@pytest.fixture
def start_service(database: DatabaseTarget, tokens: TokenFactory) -> StartService:
    def start(network: AgentNetworkMode) -> AbstractAsyncContextManager[RunningService]:
        return running_workflow_service(database, tokens, network=network, resolver=StubResolver())

    return start


@pytest.fixture
def editor(tokens: TokenFactory) -> list[tuple[str, str]]:
    return bearer(tokens.mint(tenant_id="ten_acme", scopes=("agents:read", "agents:write")))


async def refused_fields(
    stub: pb_grpc.AgentServiceStub, metadata: list[tuple[str, str]], name: str, **fields: str
) -> dict[str, str] | None:
    """The violations when CreateAgent refuses the agent, None when it registers it."""
    try:
        await stub.CreateAgent(create_request(name=name, **fields), metadata=metadata)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        reason, violations = error_details(error)
        assert reason == "VALIDATION_FAILED"
        return violations
    return None


async def registered(
    start_service: StartService, network: AgentNetworkMode, editor: list[tuple[str, str]], field: str, urls: list[str]
) -> dict[str, dict[str, str] | None]:
    """url -> refusal (None when registered) for each URL put into `field`."""
    async with start_service(network) as service, agent_stub(service) as stub:
        return {url: await refused_fields(stub, editor, f"agent-{i}", **{field: url}) for i, url in enumerate(urls)}


@pytest.mark.parametrize("network", list(AgentNetworkMode))
@pytest.mark.parametrize("field", ["url", "health_url"])
async def test_metadata_and_link_local_urls_are_refused_in_every_mode(
    start_service: StartService, editor: list[tuple[str, str]], network: AgentNetworkMode, field: str
) -> None:
    outcomes = await registered(start_service, network, editor, field, METADATA_URLS)
    accepted = [url for url, refusal in outcomes.items() if refusal is None]
    assert accepted == [], f"registered despite the policy ({network}, {field})"
    for url, refusal in outcomes.items():
        assert refusal is not None
        assert list(refusal) == [field], url


async def test_private_urls_are_refused_when_public_only(
    start_service: StartService, editor: list[tuple[str, str]]
) -> None:
    outcomes = await registered(start_service, AgentNetworkMode.PUBLIC_ONLY, editor, "url", PRIVATE_URLS)
    for url, refusal in outcomes.items():
        assert refusal is not None, f"{url} was registered in public-only mode"
        assert list(refusal) == ["url"], url
        assert "allow-private" in refusal["url"], url


async def test_private_urls_are_accepted_when_allow_private(
    start_service: StartService, editor: list[tuple[str, str]]
) -> None:
    outcomes = await registered(start_service, AgentNetworkMode.ALLOW_PRIVATE, editor, "url", PRIVATE_URLS)
    assert {url: refusal for url, refusal in outcomes.items() if refusal is not None} == {}


async def test_an_update_cannot_point_an_agent_at_metadata(
    start_service: StartService, editor: list[tuple[str, str]]
) -> None:
    async with start_service(AgentNetworkMode.ALLOW_PRIVATE) as service, agent_stub(service) as stub:
        created = (await stub.CreateAgent(create_request(url="http://10.0.0.1/run"), metadata=editor)).agent
        for url in ["http://0xa9fea9fe/", f"http://{METADATA_HOST}/"]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.UpdateAgent(update_request(created.id, ["url"], url=url), metadata=editor)
            assert error_details(caught.value)[1].keys() == {"url"}
        stored = await stub.GetAgent(pb.GetAgentRequest(id=created.id), metadata=editor)
        assert stored.agent.url == "http://10.0.0.1/run"


async def test_literal_addresses_never_reach_dns(
    database: DatabaseTarget, tokens: TokenFactory, editor: list[tuple[str, str]]
) -> None:
    resolver = StubResolver()
    literal = [url for url in METADATA_URLS + PRIVATE_URLS if "example.com" not in url.lower()]
    async with (
        running_workflow_service(database, tokens, resolver=resolver) as service,
        agent_stub(service) as stub,
    ):
        for i, url in enumerate(literal):
            await refused_fields(stub, editor, f"agent-{i}", url=url)
    assert resolver.lookups == []
