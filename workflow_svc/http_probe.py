"""Agent health probes over HTTP, under the agent network policy.

The URL is checked with `netpolicy.check_url` before each probe, and host names are resolved by
`PolicyResolver`, which refuses any address the policy refuses: the address checked is the
address connected to, so a DNS answer that changes between the check and the connection
(rebinding) gains nothing. Redirects are not followed, proxies from the environment are not
used, and no cookie travels from one agent to another.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Final

import aiohttp

from flowforge_common.netpolicy import AgentNetworkMode, NetworkPolicyError, PolicyResolver, Resolver, check_url
from flowforge_common.orm import utcnow
from workflow_svc.domain.models import HealthProbe

FIELD: Final = "health_url"
"""The field policy refusals name: the probe goes to the health endpoint."""


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
                resolver=PolicyResolver(self._network, self._resolver, field=FIELD), use_dns_cache=False
            )
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
            )
        return self._session
