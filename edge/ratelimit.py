"""Edge rate limiting: GCRA (the generic cell rate algorithm) per principal and route class,
in Redis (one Lua script, so the check-and-update is atomic across edge replicas) or in memory
when REDIS_URL is unset or Redis cannot be reached (logged once, and reported by /health/ready).

GCRA keeps one number per key, the theoretical arrival time (TAT) of the next request. With a
limit of L per period P the emission interval is T = P / L and the burst tolerance is
T * (L - 1): a quiet client may spend its whole minute at once, then one request per T.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.typedefs import Handler
from redis.exceptions import RedisError

from edge.authn import RateClass, request_access, request_principal
from edge.middlewares import RATE_LIMIT_HEADERS_KEY
from edge.problems import ProblemError
from edge.settings import SETTINGS_KEY, EdgeSettings

logger = logging.getLogger(__name__)

PERIOD_MS = 60_000
# After Redis failed, the edge stays on the in-memory limiter this long before trying again.
REDIS_RETRY_SECONDS = 5.0

# KEYS[1]: the bucket. ARGV: emission interval T (ms), burst tolerance tau (ms).
# Returns {allowed (0/1), remaining, reset_ms, retry_after_ms}. Redis's own clock is used so
# that every edge replica agrees on "now".
GCRA_SCRIPT = """
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then
  return {0, 0, tat - now, tat - now - tolerance}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
local remaining = math.floor((tolerance + interval - (new_tat - now)) / interval)
return {1, remaining, new_tat - now, 0}
"""


@dataclass(frozen=True)
class Decision:
    """The outcome of one check."""

    allowed: bool
    limit: int
    remaining: int
    reset_ms: int
    retry_after_ms: int

    def headers(self) -> dict[str, str]:
        """`RateLimit-*` headers (draft-ietf-httpapi-ratelimit-headers); Reset in seconds."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(max(0, self.remaining)),
            "RateLimit-Reset": str(math.ceil(self.reset_ms / 1000)),
        }


def _parameters(limit: int) -> tuple[int, int]:
    interval = max(1, PERIOD_MS // limit)
    return interval, interval * (limit - 1)


class MemoryLimiter:
    """GCRA in this process: exact for one edge, per replica for several."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._tats: dict[str, float] = {}
        self._max_keys = max_keys

    def check(self, key: str, limit: int) -> Decision:
        """Spends one request of `key`'s bucket, if allowed."""
        interval, tolerance = _parameters(limit)
        now = time.monotonic() * 1000
        tat = max(self._tats.get(key, now), now)
        if tat - now > tolerance:
            return Decision(False, limit, 0, round(tat - now), round(tat - now - tolerance))
        new_tat = tat + interval
        if len(self._tats) >= self._max_keys and key not in self._tats:
            self._evict(now)
        self._tats[key] = new_tat
        remaining = math.floor((tolerance + interval - (new_tat - now)) / interval)
        return Decision(True, limit, remaining, round(new_tat - now), 0)

    def _evict(self, now: float) -> None:
        # Buckets whose TAT has passed are full again: forgetting them changes nothing.
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
        if len(self._tats) >= self._max_keys:
            self._tats.pop(next(iter(self._tats)))


class RateLimiter:
    """Redis GCRA with an in-memory fallback; `backend` says which one answered last."""

    def __init__(self, redis: aioredis.Redis | None, *, prefix: str, timeout: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self._timeout = timeout
        self._memory = MemoryLimiter()
        self._script: Any = redis.register_script(GCRA_SCRIPT) if redis is not None else None
        self._redis_down_until = 0.0

    @property
    def backend(self) -> str:
        """`redis`, `memory` (no Redis configured) or `memory (redis unreachable)`."""
        if self._redis is None:
            return "memory"
        return "memory (redis unreachable)" if self._redis_down_until > time.monotonic() else "redis"

    @property
    def degraded(self) -> bool:
        """True while Redis is configured but not answering."""
        return self._redis is not None and self._redis_down_until > time.monotonic()

    async def check(self, key: str, limit: int) -> Decision:
        """Spends one request of the bucket `key` (without the prefix)."""
        if self._script is None or self._redis_down_until > time.monotonic():
            return self._memory.check(key, limit)
        interval, tolerance = _parameters(limit)
        try:
            async with asyncio.timeout(self._timeout):
                allowed, remaining, reset_ms, retry_ms = await self._script(
                    keys=[self._prefix + key], args=[interval, tolerance]
                )
        except (RedisError, OSError, TimeoutError) as error:
            self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS
            logger.warning(
                "Redis is unreachable; rate limiting falls back to this process's memory: %r",
                error,
                extra={"retry_in_seconds": REDIS_RETRY_SECONDS},
            )
            return self._memory.check(key, limit)
        if self._redis_down_until:
            self._redis_down_until = 0.0
            logger.warning("Redis is reachable again; rate limiting is shared again")
        return Decision(bool(allowed), limit, int(remaining), int(reset_ms), int(retry_ms))


RATE_LIMITER_KEY = web.AppKey("rate_limiter", RateLimiter)


async def rate_limiter_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: a Redis client when REDIS_URL is set (closed at shutdown), else memory."""
    settings = app[SETTINGS_KEY]
    client: aioredis.Redis | None = None
    if settings.redis_url:
        client = aioredis.from_url(
            settings.redis_url,
            socket_timeout=settings.rate_limit_redis_timeout_seconds,
            socket_connect_timeout=settings.rate_limit_redis_timeout_seconds,
        )
    app[RATE_LIMITER_KEY] = RateLimiter(
        client, prefix=settings.rate_limit_prefix, timeout=settings.rate_limit_redis_timeout_seconds
    )
    try:
        yield
    finally:
        if client is not None:
            await client.aclose()


def limit_for(settings: EdgeSettings, rate_class: RateClass, identities: tuple[str, ...]) -> int:
    """The per-minute limit of a class, overridden for the first identity that has one."""
    for identity in identities:
        override = settings.rate_limit_overrides.get(identity, {}).get(rate_class.value)
        if override:
            return override
    defaults = {
        RateClass.AUTH: settings.rate_limit_auth_per_minute,
        RateClass.PUBLIC: settings.rate_limit_public_per_minute,
        RateClass.READ: settings.rate_limit_read_per_minute,
        RateClass.WRITE: settings.rate_limit_write_per_minute,
        RateClass.EXECUTE: settings.rate_limit_execute_per_minute,
    }
    return defaults[rate_class]


def client_ip(request: web.Request, trusted_proxy_hops: int) -> str:
    """The caller's address: the peer, or behind `trusted_proxy_hops` proxies the address the
    outermost trusted proxy saw (entries further left are client-controlled and ignored)."""
    if trusted_proxy_hops:
        forwarded = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",") if part.strip()]
        if len(forwarded) >= trusted_proxy_hops:
            return forwarded[-trusted_proxy_hops]
    return request.remote or "unknown"


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Spends one request of the caller's bucket for the route's class: per principal (tenant
    and subject) once authenticated, per client IP for the sign-in endpoints and anything
    anonymous. Over the limit: 429 problem+json with `Retry-After`. `RateLimit-*` headers are
    added to whatever response follows (see add_standard_headers)."""
    settings = request.app[SETTINGS_KEY]
    access = request_access(request)
    if not settings.rate_limit_enabled or access is None or access.rate_class is RateClass.NONE:
        return await handler(request)
    principal = request_principal(request)
    if principal is not None and access.rate_class not in (RateClass.AUTH, RateClass.PUBLIC):
        bucket = f"{access.rate_class.value}:{principal.tenant_id}:{principal.subject}"
        identities: tuple[str, ...] = (principal.subject, principal.tenant_id)
    else:
        bucket = f"{access.rate_class.value}:ip:{client_ip(request, settings.trusted_proxy_hops)}"
        identities = ()
    decision = await request.app[RATE_LIMITER_KEY].check(
        bucket, limit_for(settings, access.rate_class, identities)
    )
    request[RATE_LIMIT_HEADERS_KEY] = decision.headers()
    if not decision.allowed:
        raise ProblemError(
            429,
            f"rate limit of {decision.limit} {access.rate_class.value} calls per minute exceeded",
            "RATE_LIMITED",
            headers={"Retry-After": str(max(1, math.ceil(decision.retry_after_ms / 1000)))},
        )
    return await handler(request)
