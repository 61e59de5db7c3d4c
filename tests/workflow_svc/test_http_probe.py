"""The connect-time half of the network policy for health probes: PolicyResolver answers only
addresses the policy allows, so the address checked is the address connected to."""

from __future__ import annotations

import socket

import pytest

from flowforge_common.netpolicy import AgentNetworkMode, NetworkPolicyError, PolicyResolver
from tests.workflow_svc.harness import DNS, INTERNAL_HOST, METADATA_HOST, PUBLIC_HOST, StubResolver

PUBLIC_ONLY = AgentNetworkMode.PUBLIC_ONLY
ALLOW_PRIVATE = AgentNetworkMode.ALLOW_PRIVATE


async def test_allowed_names_resolve_to_their_checked_addresses() -> None:
    resolver = PolicyResolver(PUBLIC_ONLY, StubResolver())

    answers = await resolver.resolve(PUBLIC_HOST, 443, socket.AF_UNSPEC)

    assert [(answer["host"], answer["port"], answer["family"]) for answer in answers] == [
        (DNS[PUBLIC_HOST][0], 443, socket.AF_INET),
        (DNS[PUBLIC_HOST][1], 443, socket.AF_INET6),
    ]
    assert all(answer["flags"] == socket.AI_NUMERICHOST for answer in answers)
    only_v4 = await resolver.resolve(PUBLIC_HOST, 443, socket.AF_INET)
    assert [answer["host"] for answer in only_v4] == [DNS[PUBLIC_HOST][0]]


@pytest.mark.parametrize(
    ("mode", "host"),
    [
        (PUBLIC_ONLY, INTERNAL_HOST),
        (ALLOW_PRIVATE, METADATA_HOST),  # link-local metadata: refused in every mode
        (PUBLIC_ONLY, "mixed.example.com"),  # one refused address is enough
        (PUBLIC_ONLY, "localhost"),  # loopback by RFC 6761, whatever the resolver says
    ],
)
async def test_refused_addresses_never_reach_the_connector(mode: AgentNetworkMode, host: str) -> None:
    stub = StubResolver({**DNS, "localhost": ["93.184.216.34"]})
    with pytest.raises(NetworkPolicyError) as caught:
        await PolicyResolver(mode, stub, field="health_url").resolve(host, 80, socket.AF_UNSPEC)
    assert [violation.field for violation in caught.value.violations] == ["health_url"]


async def test_private_names_resolve_when_allowed() -> None:
    answers = await PolicyResolver(ALLOW_PRIVATE, StubResolver()).resolve(INTERNAL_HOST, 80, socket.AF_UNSPEC)
    assert [answer["host"] for answer in answers] == ["10.1.2.3"]
    loopback = await PolicyResolver(ALLOW_PRIVATE, StubResolver()).resolve("localhost", 80, socket.AF_UNSPEC)
    assert [answer["host"] for answer in loopback] == ["127.0.0.1"]
