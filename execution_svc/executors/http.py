"""Executors of remote steps over HTTP: `agent` (the agent protocol of API.md) and `http`.

One aiohttp ClientSession (one connection pool) serves every call. Each attempt runs under a
*total* deadline covering connect, headers and body, so an agent that drips its answer one
byte at a time still times out. Outcomes are classified for the scheduler: 2xx succeeds;
429, 5xx, timeouts and connection errors are retryable (honouring `Retry-After`); any other
status fails at once. Bodies over `max_output_bytes` fail the step instead of bloating rows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from execution_svc.domain.definition import RetryOverrides, StepType
from execution_svc.domain.models import RunError
from execution_svc.domain.ports import AgentDirectory, Clock, StepCall, StepFailed, StepResult, StepSucceeded
from execution_svc.domain.scheduler import attempt_timeout_ms
from execution_svc.executors.guard import AgentGuard, CircuitOpenError
from flowforge_common.errors import ConflictError, DomainError, NotFoundError
from flowforge_common.netpolicy import AgentNetworkMode, NetworkPolicyError, PolicyResolver, Resolver, check_url_offline
from flowforge_common.orm import utcnow

logger = logging.getLogger(__name__)

DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
# A Retry-After beyond this is read as this: an agent must not park a step for days.
MAX_RETRY_AFTER_MS = 3_600_000
_ERROR_SNIPPET_BYTES = 512
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


class OutputTooLargeError(Exception):
    """The response body is over the configured limit."""


def parse_retry_after(value: str | None, now: dt.datetime) -> int | None:
    """`Retry-After` (delta seconds or an HTTP date) in ms, capped; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(int(value) * 1000, MAX_RETRY_AFTER_MS)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return min(max(0, int((when - now).total_seconds() * 1000)), MAX_RETRY_AFTER_MS)


class HttpStepExecutor:
    """Executes `agent` and `http` step attempts."""

    def __init__(
        self,
        directory: AgentDirectory,
        *,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        max_connections: int = 512,
        network: AgentNetworkMode | None = None,
        resolver: Resolver | None = None,
        guard: AgentGuard | None = None,
        clock: Clock = utcnow,
    ) -> None:
        """`network` is the agent network policy every call is held to (agent and `http` steps),
        on the address actually connected to; None checks nothing (tests and benchmarks only).
        `resolver` replaces the system DNS resolver (tests). `guard` holds the per-agent circuit
        breakers and concurrency caps (`AgentGuard()` by default)."""
        self._directory = directory
        self.guard = guard or AgentGuard()
        self._network = network
        self._resolver = resolver
        self._max_output_bytes = max_output_bytes
        self._max_connections = max_connections
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Opens the shared connection pool."""
        if self._session is None:
            # Addresses are checked when resolved; caching checked answers is safe.
            resolver = None if self._network is None else PolicyResolver(self._network, self._resolver)
            connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=60, resolver=resolver)
            # Deadlines are enforced per attempt below, not by aiohttp's defaults.
            # One session serves every tenant: it must keep no cookies (one agent's session
            # cookie would be sent to another tenant's agent on the same host).
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                raise_for_status=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )

    async def close(self) -> None:
        """Closes the pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def execute(self, call: StepCall) -> StepResult:
        """See `StepExecutor.execute`."""
        if call.type is StepType.AGENT:
            return await self._call_agent(call)
        if call.type is StepType.HTTP:
            return await self._call_http(call)
        return StepFailed(RunError("UNSUPPORTED_STEP_TYPE", f"no executor for {call.type} steps"), retryable=False)

    async def _call_agent(self, call: StepCall) -> StepResult:
        try:
            agent = await self._directory.resolve(call.tenant_id, call.agent or "")
        except NotFoundError as exc:
            return StepFailed(RunError("AGENT_NOT_FOUND", exc.message), retryable=False)
        except ConflictError as exc:
            return StepFailed(RunError("AGENT_INACTIVE", exc.message), retryable=False)
        except DomainError as exc:
            # The directory itself is unreachable: the agent may well exist, so retry.
            return StepFailed(RunError("AGENT_DIRECTORY_UNAVAILABLE", exc.message), retryable=True)
        body = {"run_id": call.run_id, "step_id": call.step_id, "attempt": call.attempt, "input": call.input}
        if call.item_index >= 0:
            body["index"] = call.item_index
        key = (call.tenant_id, agent.name)
        try:
            self.guard.admit(key)
        except CircuitOpenError as exc:
            return StepFailed(
                RunError("CIRCUIT_OPEN", f"agent {agent.name!r} is failing; {exc}"),
                retryable=True,
                retry_after_ms=math.ceil(exc.retry_after_seconds * 1000),
                defaults=agent.retry,
            )
        started = time.perf_counter()
        result: StepResult | None = None
        try:
            async with self.guard.slots(key):
                result = await self._request(
                    "POST",
                    agent.url,
                    headers=dict(agent.headers),
                    body=body,
                    call=call,
                    timeout_ms=attempt_timeout_ms(call, agent.timeout_ms, self._clock()),
                    defaults=agent.retry,
                    code_prefix="AGENT_HTTP",
                    who=f"agent {agent.name!r}",
                    unwrap=True,
                )
            return result
        finally:
            # Retryable failures (5xx, 429, timeouts, connection errors) are the agent's; a 4xx,
            # a policy refusal or a cancelled call (result None) says nothing about its health.
            self.guard.record(
                key,
                success=isinstance(result, StepSucceeded),
                blames_agent=isinstance(result, StepFailed) and result.retryable,
                seconds=time.perf_counter() - started,
            )

    async def _call_http(self, call: StepCall) -> StepResult:
        url = call.config.get("url")
        if not isinstance(url, str) or not url:
            return StepFailed(RunError("BAD_CONFIG", "http steps need config.url"), retryable=False)
        method = str(call.config.get("method") or "POST").upper()
        raw_headers = call.config.get("headers") or {}
        headers = {str(k): str(v) for k, v in raw_headers.items()} if isinstance(raw_headers, Mapping) else {}
        return await self._request(
            method,
            url,
            headers=headers,
            body=None if method in _BODYLESS_METHODS else call.input,
            call=call,
            timeout_ms=attempt_timeout_ms(call, None, self._clock()),
            defaults=RetryOverrides(),
            code_prefix="HTTP",
            who=f"{method} {url}",
            unwrap=False,
        )

    async def _request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        body: Any,
        call: StepCall,
        timeout_ms: int,
        defaults: RetryOverrides,
        code_prefix: str,
        who: str,
        unwrap: bool,
    ) -> StepResult:
        if self._session is None:
            await self.start()
        assert self._session is not None
        if self._network is not None:
            try:
                check_url_offline(url, self._network)
            except NetworkPolicyError as exc:
                return _refused_by_policy(who, exc)
        headers["Idempotency-Key"] = call.idempotency_key
        kwargs: dict[str, Any] = {"headers": headers, "allow_redirects": False}
        if body is not None:
            kwargs["json"] = body
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                async with self._session.request(method, url, **kwargs) as response:
                    if 200 <= response.status < 300:
                        raw = await self._read(response, self._max_output_bytes)
                        return self._success(raw, response, who=who, unwrap=unwrap, defaults=defaults)
                    snippet = await self._read(response, _ERROR_SNIPPET_BYTES, truncate=True)
                    retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock())
                    status = response.status
        except TimeoutError:
            return StepFailed(
                RunError("TIMEOUT", f"{who} gave no complete answer within {timeout_ms} ms"),
                retryable=True,
                defaults=defaults,
            )
        except NetworkPolicyError as exc:  # raised by PolicyResolver while connecting
            return _refused_by_policy(who, exc)
        except OutputTooLargeError:
            return StepFailed(
                RunError("OUTPUT_TOO_LARGE", f"{who} answered more than {self._max_output_bytes} bytes"),
                retryable=False,
                defaults=defaults,
            )
        except (aiohttp.ClientError, OSError) as exc:
            return StepFailed(
                RunError("CONNECTION_ERROR", f"{who}: {type(exc).__name__}: {exc}"), retryable=True, defaults=defaults
            )
        detail = snippet.decode("utf-8", "replace").strip()
        message = f"{who} answered HTTP {status}" + (f": {detail}" if detail else "")
        if 300 <= status < 400:
            message += " (redirects are not followed)"
        return StepFailed(
            RunError(f"{code_prefix}_{status}", message),
            retryable=status == 429 or status >= 500,
            retry_after_ms=retry_after,
            status_code=status,
            defaults=defaults,
        )

    def _success(
        self, raw: bytes, response: aiohttp.ClientResponse, *, who: str, unwrap: bool, defaults: RetryOverrides
    ) -> StepResult:
        if not raw.strip():
            return StepSucceeded(None)
        code = "AGENT_BAD_RESPONSE" if unwrap else "HTTP_BAD_RESPONSE"
        try:
            output = json.loads(raw)
        except RecursionError:
            return StepFailed(
                RunError(code, f"{who} answered JSON nested too deeply to read"), retryable=False, defaults=defaults
            )
        except ValueError:
            if unwrap:
                return StepFailed(
                    RunError(code, f"{who} answered HTTP {response.status} with non-JSON"),
                    retryable=False,
                    defaults=defaults,
                )
            output = raw.decode("utf-8", "replace")
        if unwrap and isinstance(output, dict) and "output" in output:
            output = output["output"]
        problem = unstorable(output)
        if problem is not None:
            # Stored as it is, such an output would fail the step's commit again and again.
            return StepFailed(
                RunError(code, f"{who} answered an output that cannot be stored: {problem}"),
                retryable=False,
                defaults=defaults,
            )
        return StepSucceeded(output)

    @staticmethod
    async def _read(response: aiohttp.ClientResponse, limit: int, *, truncate: bool = False) -> bytes:
        """The body, refusing (or, with `truncate`, cutting) anything over `limit` bytes
        without buffering more than that."""
        if not truncate and response.content_length is not None and response.content_length > limit:
            raise OutputTooLargeError
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_any():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                if truncate:
                    break
                raise OutputTooLargeError
        return b"".join(chunks)[:limit] if truncate else b"".join(chunks)


def unstorable(value: Any) -> str | None:
    """Why a JSON value cannot be stored and served by every backend, or None: NaN and
    Infinity (not JSON, though Python reads them), NUL characters (PostgreSQL's jsonb refuses
    them) and unpaired surrogates (not Unicode text)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            pending_text = [item]
        elif isinstance(item, dict):
            pending_text = [key for key in item if isinstance(key, str)]
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
            continue
        elif isinstance(item, float) and not math.isfinite(item):
            return "NaN or Infinity is not JSON"
        else:
            continue
        for text in pending_text:
            if "\x00" in text:
                return "a NUL character (\\u0000) in a string"
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return "an unpaired surrogate (not Unicode text) in a string"
    return None


def _refused_by_policy(who: str, error: NetworkPolicyError) -> StepFailed:
    """A call the agent network policy forbids fails at once: retrying cannot make it allowed."""
    return StepFailed(
        RunError("URL_REFUSED", f"{who}: refused by the agent network policy: {error.message}"), retryable=False
    )
