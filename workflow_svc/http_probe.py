"""Agent health probes over HTTP, under the agent network policy.

The URL is checked with `netpolicy.check_url` before each probe, and host names are resolved by
`PolicyResolver`, which refuses any address the policy refuses: the address checked is the
address connected to, so a DNS answer that changes between the check and the connection
(rebinding) gains nothing. Redirects are not followed, proxies from the environment are not
used, and no cookie travels from one agent to another.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Mapping
from typing import Final

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from flowforge_common.netpolicy import (
    AgentNetworkMode,
    NetworkPolicyError,
    Resolver,
    check_address,
    check_url,
    resolve_host,
)
from flowforge_common.orm import utcnow
from workflow_svc.domain.models import HealthProbe

FIELD: Final = "health_url"
"""The field policy refusals name: the probe goes to the health endpoint."""


class PolicyResolver(AbstractResolver):
    """aiohttp resolver that answers only addresses the agent network policy allows."""

    def __init__(self, network: AgentNetworkMode, resolver: Resolver | None = None) -> None:
        self._network = network
        self._resolver = resolver or resolve_host

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Every allowed address of `host` in `family`; NetworkPolicyError when any address of
        the answer is refused (one bad address is enough to distrust the name)."""
        name = host.removesuffix(".")
        # RFC 6761, as in check_url: these names are loopback whatever a resolver says.
        answers = ["127.0.0.1"] if name == "localhost" or name.endswith(".localhost") else await self._resolver(host)
        results: list[ResolveResult] = []
        for answer in answers:
            text = answer.split("%", 1)[0]  # a zone id names an interface, not another address
            check_address(text, self._network, field=FIELD)
            address = ipaddress.ip_address(text)
            address_family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            if family in (socket.AF_UNSPEC, address_family):
                results.append(
                    ResolveResult(
                        hostname=host,
                        host=str(address),
                        port=port,
                        family=address_family,
                        proto=0,
                        flags=socket.AI_NUMERICHOST,
                    )
                )
        if not results:
            raise OSError(f"{host} has no address to connect to")
        return results

    async def close(self) -> None:
        """Nothing to release."""


class HttpHealthProber:
    """GETs agents' health endpoints through one connection pool (`HealthProber`)."""

    def __init__(self, network: AgentNetworkMode, resolver: Resolver | None = None) -> None:
        self._network = network
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    async def probe(self, url: str, headers: Mapping[str, str], *, timeout_ms: int) -> HealthProbe:
        """One probe: healthy on a 2xx answer within `timeout_ms` (DNS and the policy check
        included); otherwise unhealthy, with the reason as the detail."""
        checked_at = utcnow()
        started = time.perf_counter()

        def outcome(healthy: bool, detail: str) -> HealthProbe:
            latency_ms = round((time.perf_counter() - started) * 1000)
            return HealthProbe(healthy=healthy, latency_ms=latency_ms, checked_at=checked_at, detail=detail)

        try:
            async with asyncio.timeout(timeout_ms / 1000):
                await check_url(url, self._network, self._resolver, field=FIELD)
                async with self._client().get(url, headers=dict(headers), allow_redirects=False) as response:
                    status, reason = response.status, response.reason or ""
        except NetworkPolicyError as error:
            return outcome(False, f"refused by the agent network policy: {error.message}")
        except TimeoutError:
            return outcome(False, f"no answer within {timeout_ms} ms")
        except (aiohttp.ClientError, OSError) as error:
            return outcome(False, f"connection failed: {error}")
        detail = f"HTTP {status} {reason}".rstrip()
        if 300 <= status < 400:
            detail += " (redirects are not followed)"
        return outcome(200 <= status < 300, detail)

    async def close(self) -> None:
        """Closes the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running event loop, as aiohttp requires.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=PolicyResolver(self._network, self._resolver), use_dns_cache=False
            )
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
            )
        return self._session
