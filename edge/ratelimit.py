"""Edge rate limiting: GCRA (the generic cell rate algorithm) per principal and route class,
in Redis (one Lua script, so the check-and-update is atomic across edge replicas) or in memory
when REDIS_URL is unset or Redis cannot be reached (logged once, and reported by /health/ready).

GCRA keeps one number per key, the theoretical arrival time (TAT) of the next request. With a
limit of L per period P the emission interval is T = P / L and the burst tolerance is
T * (L - 1): a quiet client may spend its whole minute at once, then one request per T.

Run starts and controls (the `execute` class) also spend from one bucket per tenant that all
its principals share, so that minting API keys does not multiply a tenant's budget; a call that
bucket refuses gives its principal's spend back.

Password sign-in is also limited per email address, whatever the client IP, so that guessing
one account's password from many addresses gets no further than from one. The key is an HMAC
of the address (Redis never holds one), and every address gets a bucket, registered or not, so
a 429 tells nothing about accounts. An attempt is spent up front and given back when the
answer shows the password was right, so the limit counts failures and bursts of concurrent
guesses cannot overshoot it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.typedefs import Handler
from redis.exceptions import RedisError

from edge.authn import RateClass, request_access, request_principal
from edge.middlewares import RATE_LIMIT_HEADERS_KEY
from edge.problems import ProblemError
from edge.settings import SETTINGS_KEY, EdgeSettings
from edge.transcoder import JSON_TYPES

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

# Gives back one request spent from KEYS[1]. ARGV: emission interval T (ms).
REFUND_SCRIPT = """
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local new_tat = tat - interval
if new_tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
end
return 1
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


def _parameters(limit: int, period_ms: int) -> tuple[int, int]:
    interval = max(1, period_ms // limit)
    return interval, interval * (limit - 1)


class MemoryLimiter:
    """GCRA in this process: exact for one edge, per replica for several."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._tats: dict[str, float] = {}
        self._max_keys = max_keys

    def check(self, key: str, limit: int, period_ms: int = PERIOD_MS) -> Decision:
        """Spends one request of `key`'s bucket, if allowed."""
        interval, tolerance = _parameters(limit, period_ms)
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

    def refund(self, key: str, limit: int, period_ms: int = PERIOD_MS) -> None:
        """Gives back one request spent from `key`'s bucket."""
        if key in self._tats:
            self._tats[key] -= _parameters(limit, period_ms)[0]

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
        self._refund_script: Any = redis.register_script(REFUND_SCRIPT) if redis is not None else None
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

    async def check(self, key: str, limit: int, period_ms: int = PERIOD_MS) -> Decision:
        """Spends one request of the bucket `key` (without the prefix): `limit` per `period_ms`."""
        if self._script is None or self._redis_down_until > time.monotonic():
            return self._memory.check(key, limit, period_ms)
        interval, tolerance = _parameters(limit, period_ms)
        try:
            async with asyncio.timeout(self._timeout):
                allowed, remaining, reset_ms, retry_ms = await self._script(
                    keys=[self._prefix + key], args=[interval, tolerance]
                )
        except (RedisError, OSError, TimeoutError) as error:
            self._redis_failed(error)
            return self._memory.check(key, limit, period_ms)
        if self._redis_down_until:
            self._redis_down_until = 0.0
            logger.warning("Redis is reachable again; rate limiting is shared again")
        return Decision(bool(allowed), limit, int(remaining), int(reset_ms), int(retry_ms))

    async def refund(self, key: str, limit: int, period_ms: int = PERIOD_MS) -> None:
        """Gives back one request that `check` spent from the bucket `key`."""
        if self._refund_script is None or self._redis_down_until > time.monotonic():
            self._memory.refund(key, limit, period_ms)
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._refund_script(keys=[self._prefix + key], args=[_parameters(limit, period_ms)[0]])
        except (RedisError, OSError, TimeoutError) as error:
            # The attempt stays spent: a limit that errs on the strict side for a while.
            self._redis_failed(error)

    def _redis_failed(self, error: BaseException) -> None:
        self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS
        logger.warning(
            "Redis is unreachable; rate limiting falls back to this process's memory: %r",
            error,
            extra={"retry_in_seconds": REDIS_RETRY_SECONDS},
        )


RATE_LIMITER_KEY = web.AppKey("rate_limiter", RateLimiter)


class EmailBuckets:
    """Names the per-email sign-in buckets: an HMAC-SHA256 of the normalised address, so that
    Redis (and whoever reads it) never sees an address, nor a plain hash one could look up."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def bucket(self, email: str) -> str:
        """The bucket of an email address, as auth_svc normalises it (trimmed, lower-cased)."""
        digest = hmac.new(self._secret, email.strip().lower().encode(), hashlib.sha256).hexdigest()
        return f"login:email:{digest}"


EMAIL_BUCKETS_KEY = web.AppKey("email_buckets", EmailBuckets)


def email_buckets(settings: EdgeSettings) -> EmailBuckets:
    """The configured HMAC key, else a random one for this process."""
    if settings.rate_limit_key_secret is not None:
        return EmailBuckets(settings.rate_limit_key_secret.get_secret_value().encode())
    if settings.redis_url:
        logger.warning(
            "FLOWFORGE_RATE_LIMIT_KEY_SECRET is not set: per-email sign-in limits are not shared between "
            "edge replicas; set the same secret on every replica"
        )
    return EmailBuckets(secrets.token_bytes(32))


async def rate_limiter_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: a Redis client when REDIS_URL is set (closed at shutdown), else memory."""
    settings = app[SETTINGS_KEY]
    app[EMAIL_BUCKETS_KEY] = email_buckets(settings)
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
    anonymous; an `execute` call also spends from its tenant's bucket, a password sign-in from
    its email's. Over a limit: 429
    problem+json with `Retry-After`. `RateLimit-*` headers are added to whatever response
    follows (see add_standard_headers)."""
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
    limiter = request.app[RATE_LIMITER_KEY]
    limit = limit_for(settings, access.rate_class, identities)
    decision = await limiter.check(bucket, limit)
    request[RATE_LIMIT_HEADERS_KEY] = decision.headers()
    if not decision.allowed:
        detail = f"rate limit of {decision.limit} {access.rate_class.value} calls per minute exceeded"
        raise _rate_limited(decision, detail)
    if principal is not None and access.rate_class is RateClass.EXECUTE:
        await _spend_tenant_execute(request, principal.tenant_id, bucket, limit, decision)
    if access.password_sign_in:
        return await _limit_per_email(request, handler, settings)
    return await handler(request)


async def _spend_tenant_execute(
    request: web.Request, tenant_id: str, principal_bucket: str, principal_limit: int, spent: Decision
) -> None:
    """Spends from the tenant's own `execute` bucket too, which all its principals share. Over
    it, the principal's spend is given back and the answer is 429; the headers describe
    whichever bucket has less left."""
    settings = request.app[SETTINGS_KEY]
    limiter = request.app[RATE_LIMITER_KEY]
    override = settings.rate_limit_overrides.get(tenant_id, {}).get("tenant_execute")
    decision = await limiter.check(
        f"execute:tenant:{tenant_id}", override or settings.rate_limit_tenant_execute_per_minute
    )
    if not decision.allowed:
        await limiter.refund(principal_bucket, principal_limit)
        request[RATE_LIMIT_HEADERS_KEY] = decision.headers()
        detail = f"tenant rate limit of {decision.limit} execute calls per minute exceeded (all its keys and users)"
        raise _rate_limited(decision, detail)
    if decision.remaining < spent.remaining:
        request[RATE_LIMIT_HEADERS_KEY] = decision.headers()


def _rate_limited(decision: Decision, detail: str) -> ProblemError:
    retry_after = str(max(1, math.ceil(decision.retry_after_ms / 1000)))
    return ProblemError(429, detail, "RATE_LIMITED", headers={"Retry-After": retry_after})


async def _sign_in_email(request: web.Request) -> str | None:
    """The `email` of a JSON sign-in body; None for any other body, which the transcoder
    refuses (or auth_svc answers 401 to) without checking a password."""
    if not JSON_TYPES.fullmatch(request.content_type):
        return None
    try:
        # aiohttp keeps the body: the transcoder reads the same bytes again.
        document = json.loads(await request.read())
    except (ValueError, RecursionError):
        return None
    email = document.get("email") if isinstance(document, dict) else None
    return email if isinstance(email, str) and email.strip() else None


async def _limit_per_email(request: web.Request, handler: Handler, settings: EdgeSettings) -> web.StreamResponse:
    """Spends one attempt of the email's bucket before the password is checked, and gives it
    back unless the answer is a 401 (wrong password, unknown email or disabled account)."""
    email = await _sign_in_email(request)
    if email is None:
        return await handler(request)
    limiter = request.app[RATE_LIMITER_KEY]
    bucket = request.app[EMAIL_BUCKETS_KEY].bucket(email)
    limit = settings.rate_limit_login_failures_per_account
    period_ms = settings.rate_limit_login_failures_window_seconds * 1000
    decision = await limiter.check(bucket, limit, period_ms)
    if not decision.allowed:
        # The headers describe the bucket that refused; they are the same for every address.
        request[RATE_LIMIT_HEADERS_KEY] = decision.headers()
        raise _rate_limited(decision, "too many failed sign-ins for this email address; try again later")
    try:
        response = await handler(request)
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.UNAUTHENTICATED:
            await limiter.refund(bucket, limit, period_ms)
        raise
    except ProblemError as problem:
        if problem.status != 401:
            await limiter.refund(bucket, limit, period_ms)
        raise
    if response.status != 401:
        await limiter.refund(bucket, limit, period_ms)
    return response
