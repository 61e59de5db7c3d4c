"""Caller identity for every service: JWT verification against JWKS and the principal context."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from flowforge_common.errors import PermissionDeniedError, UnauthenticatedError, UnavailableError

logger = logging.getLogger(__name__)

# Only asymmetric EdDSA is accepted: `none`, HS* (key confusion) and everything else is refused.
ALLOWED_ALGORITHMS = ["EdDSA"]
ALL_SCOPES = (
    "workflows:read",
    "workflows:write",
    "runs:read",
    "runs:execute",
    "agents:read",
    "agents:write",
    "admin",
)
# Held only by FlowForge's own services (see service_identity); `admin` does not imply it.
INTERNAL_SCOPE = "internal"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant, the subject (user, key or service account) and its scopes."""

    tenant_id: str
    subject: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    role: str = ""
    token: str = ""

    def has_scope(self, scope: str) -> bool:
        """`admin` implies every public scope (never `internal`)."""
        return scope in self.scopes or ("admin" in self.scopes and scope != INTERNAL_SCOPE)


_current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "flowforge_principal", default=None
)


def current_principal() -> Principal:
    """The principal of the RPC being served; the auth interceptor sets it."""
    principal = _current_principal.get()
    if principal is None:
        raise UnauthenticatedError("this call needs credentials")
    return principal


def optional_principal() -> Principal | None:
    """The principal when the caller sent credentials to a public RPC, else None."""
    return _current_principal.get()


def bind_principal(principal: Principal | None) -> contextvars.Token[Principal | None]:
    """Sets the principal for the current task (used by the interceptor and tests)."""
    return _current_principal.set(principal)


def reset_principal(token: contextvars.Token[Principal | None]) -> None:
    """Undoes bind_principal."""
    _current_principal.reset(token)


def require_scope(principal: Principal, scope: str) -> None:
    """PERMISSION_DENIED unless the principal holds `scope`."""
    if not principal.has_scope(scope):
        raise PermissionDeniedError(f"this call needs the `{scope}` scope")


KeyFetcher = Callable[[], Awaitable[list[dict[str, Any]]]]
# Resolves an API key to its principal; UnauthenticatedError for an unknown, revoked or expired key.
ApiKeyResolver = Callable[[str], Awaitable[Principal]]
API_KEY_PREFIX = "ffk_"
# A revoked key must be refused everywhere within 5 s: no cache may remember a key longer.
API_KEY_CACHE_MAX_SECONDS = 5.0


class CachedApiKeyResolver:
    """An ApiKeyResolver that remembers answers (accepted and refused) for a few seconds, so
    that a busy client costs auth_svc one lookup per TTL, not one per request. The TTL is capped
    at API_KEY_CACHE_MAX_SECONDS: that cap is what bounds how long a revoked key keeps working.
    Entries are keyed by the SHA-256 of the key, so the cache never holds a usable secret."""

    def __init__(self, resolve: ApiKeyResolver, *, ttl_seconds: float = 4.0, max_entries: int = 10_000) -> None:
        self._resolve = resolve
        self._ttl = min(ttl_seconds, API_KEY_CACHE_MAX_SECONDS)
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal | None]] = {}

    @property
    def ttl_seconds(self) -> float:
        """How long an answer is remembered."""
        return self._ttl

    async def __call__(self, key: str) -> Principal:
        if not key.startswith(API_KEY_PREFIX) or len(key) > 200:
            raise UnauthenticatedError("the API key is not valid")
        digest = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        cached = self._entries.get(digest)
        if cached is not None and cached[0] > now:
            principal = cached[1]
        else:
            try:
                principal = await self._resolve(key)
            except UnauthenticatedError:
                principal = None
            self._remember(digest, now + self._ttl, principal)
        if principal is None:
            raise UnauthenticatedError("the API key is not valid")
        return principal

    def _remember(self, digest: str, expires: float, principal: Principal | None) -> None:
        if len(self._entries) >= self._max_entries:
            now = time.monotonic()
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            if len(self._entries) >= self._max_entries:
                self._entries.pop(next(iter(self._entries)))
        self._entries[digest] = (expires, principal)

    def forget(self, key: str) -> None:
        """Drops one key's cached answer (after revoking it in this process)."""
        self._entries.pop(hashlib.sha256(key.encode()).hexdigest(), None)

    def clear(self) -> None:
        """Drops every cached answer."""
        self._entries.clear()


class JwksKeySource:
    """Public verification keys by `kid`, fetched from a JWKS and refreshed on an unknown kid.

    Refreshes are rate-limited so that tokens with made-up `kid`s cannot hammer auth_svc.
    """

    def __init__(self, fetch: KeyFetcher, *, min_refresh_interval: float = 10.0) -> None:
        self._fetch = fetch
        self._keys: dict[str, Any] = {}
        self._jwks: list[dict[str, Any]] = []
        self._fetched_at = 0.0
        self._min_interval = min_refresh_interval
        self._lock = asyncio.Lock()

    def load(self, jwks: list[dict[str, Any]]) -> None:
        """Replaces the key set with the given JWKs. A key whose JWK did not change keeps its
        key object, so that tokens verified with it stay cached (see `is_current`)."""
        previous = {str(jwk.get("kid")): jwk for jwk in self._jwks}
        keys: dict[str, Any] = {}
        for jwk in jwks:
            try:
                kid = str(jwk["kid"])
                unchanged = previous.get(kid) == jwk and kid in self._keys
                keys[kid] = self._keys[kid] if unchanged else jwt.PyJWK(jwk).key
            except (KeyError, jwt.PyJWKError):
                logger.warning("ignoring an unusable JWK", extra={"kid": jwk.get("kid")})
        self._keys = keys
        self._jwks = [dict(jwk) for jwk in jwks]
        self._fetched_at = time.monotonic()

    @property
    def jwks(self) -> list[dict[str, Any]]:
        """The JWKs last loaded (public keys only), e.g. to serve them again."""
        return [dict(jwk) for jwk in self._jwks]

    def is_current(self, kid: str, key: Any) -> bool:
        """Whether `key`, which `key_for(kid)` returned, is still the key set's key for `kid`."""
        return self._keys.get(kid) is key

    async def key_for(self, kid: str) -> Any | None:
        """The key with this `kid`, refreshing the set once if it is unknown.

        UnavailableError when no key was ever loaded and the JWKS cannot be fetched: the caller
        is not at fault, the issuer is unreachable (503, not 401)."""
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._lock:
            key = self._keys.get(kid)
            if key is None and time.monotonic() - self._fetched_at >= self._min_interval:
                try:
                    self.load(await self._fetch())
                except Exception as exc:
                    logger.exception("could not fetch the JWKS")
                    self._fetched_at = time.monotonic()
                    if not self._keys:
                        # Let the next call try again at once rather than after the interval.
                        self._fetched_at = 0.0
                        raise UnavailableError("the token issuer's keys cannot be fetched") from exc
                key = self._keys.get(kid)
        return key


@dataclass(frozen=True)
class VerifiedToken:
    """What a successful verification established: the principal, the key (and its `kid`)
    that verified the signature, and the token's `exp`."""

    principal: Principal
    kid: str
    key: Any
    expires_at: float


@dataclass(frozen=True)
class _CacheEntry:
    token: VerifiedToken
    evict_at: float  # the cache's own bound, on the monotonic clock


class VerifiedTokenCache:
    """Principals of access tokens whose signature and claims were verified, so that a client
    sending the same token on every request costs one EdDSA verification per `max_ttl_seconds`,
    not one per request.

    Entries are keyed by the SHA-256 of the whole compact token (header, claims and signature):
    a token that differs in any character, a tampered one included, is a miss and goes through
    full verification. Only verified tokens are stored, so a client cannot fill the cache with
    garbage. An entry ends at the token's `exp` (no leeway: the verifier applies its leeway on
    a fresh verification), after `max_ttl_seconds` whatever the `exp`, and when the verifying
    key left the key set; the least recently used entry goes first when the cache is full."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_ttl_seconds: float = 60.0,
        wall_clock: Callable[[], float] = time.time,
        monotonic_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_entries = max_entries
        self._max_ttl = max_ttl_seconds
        self._wall_clock = wall_clock
        self._monotonic_clock = monotonic_clock
        self._entries: OrderedDict[bytes, _CacheEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def digest(token: str) -> bytes:
        """The cache key of a token."""
        return hashlib.sha256(token.encode()).digest()

    def get(self, digest: bytes, is_current_key: Callable[[str, Any], bool]) -> Principal | None:
        """The principal of a verified, unexpired token; `is_current_key(kid, key)` says whether
        the key that verified it is still in the key set."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        token = entry.token
        if (
            token.expires_at <= self._wall_clock()
            or entry.evict_at <= self._monotonic_clock()
            or not is_current_key(token.kid, token.key)
        ):
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return token.principal

    def put(self, digest: bytes, token: VerifiedToken) -> None:
        """Remembers a token that was just verified."""
        if self._max_entries <= 0 or token.expires_at <= self._wall_clock():
            return
        self._entries[digest] = _CacheEntry(token, self._monotonic_clock() + self._max_ttl)
        self._entries.move_to_end(digest)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


class TokenVerifier:
    """Verifies FlowForge credentials: access tokens (signature, `kid`, `alg`, `iss`, `aud`,
    `exp`) and, when given an `api_keys` resolver, API keys. Carrying both lets every service
    that builds its verifier from auth_svc accept both kinds of credential.

    Verified tokens are remembered in `token_cache` (a fresh VerifiedTokenCache when None;
    `VerifiedTokenCache(max_entries=0)` remembers nothing). An access token cannot be revoked
    before its `exp`, and a cache entry ends at that `exp` or when its key leaves the key set,
    so the cache accepts nothing that a fresh verification would refuse."""

    def __init__(
        self,
        keys: JwksKeySource,
        *,
        issuer: str,
        audience: str,
        api_keys: ApiKeyResolver | None = None,
        token_cache: VerifiedTokenCache | None = None,
        leeway_seconds: float = 5.0,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self.api_keys = api_keys
        self.token_cache = token_cache if token_cache is not None else VerifiedTokenCache()

    @property
    def keys(self) -> JwksKeySource:
        """The key source tokens are verified against."""
        return self._keys

    async def verify_api_key(self, key: str) -> Principal:
        """The principal of an API key; UnauthenticatedError when keys are not accepted here."""
        if self.api_keys is None:
            raise UnauthenticatedError("API keys are not accepted by this service")
        return await self.api_keys(key)

    async def verify(self, token: str) -> Principal:
        """The principal the token names; UnauthenticatedError on any defect."""
        digest = self.token_cache.digest(token)
        principal = self.token_cache.get(digest, self._keys.is_current)
        if principal is not None:
            return principal
        verified = await self._verify(token)
        self.token_cache.put(digest, verified)
        return verified.principal

    async def _verify(self, token: str) -> VerifiedToken:
        """Full verification: header, key, signature and claims."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise UnauthenticatedError("malformed access token") from exc
        if header.get("alg") not in ALLOWED_ALGORITHMS:
            raise UnauthenticatedError("access token algorithm is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise UnauthenticatedError("access token has no key id")
        key = await self._keys.key_for(kid)
        if key is None:
            raise UnauthenticatedError("access token is signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALLOWED_ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "tid"]},
                leeway=self._leeway,
            )
        except jwt.ExpiredSignatureError as exc:
            raise UnauthenticatedError("access token has expired") from exc
        except jwt.PyJWTError as exc:
            raise UnauthenticatedError("access token is not valid") from exc
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise UnauthenticatedError("access token is not valid")
        principal = Principal(
            tenant_id=str(claims["tid"]),
            subject=str(claims["sub"]),
            scopes=frozenset(scope.split()),
            role=str(claims.get("role", "")),
            token=token,
        )
        # PyJWT has checked that `exp` is a number.
        return VerifiedToken(principal, kid, key, float(claims["exp"]))


def bearer_token(metadata: Mapping[str, str]) -> str | None:
    """The token of an `authorization: Bearer <token>` metadata entry, if any."""
    value = metadata.get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthenticatedError("authorization must be `Bearer <token>`")
    return token.strip()
