"""Caller identity for every service: JWT verification against JWKS and the principal context."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import time
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
        """Replaces the key set with the given JWKs."""
        keys: dict[str, Any] = {}
        for jwk in jwks:
            try:
                keys[str(jwk["kid"])] = jwt.PyJWK(jwk).key
            except (KeyError, jwt.PyJWKError):
                logger.warning("ignoring an unusable JWK", extra={"kid": jwk.get("kid")})
        self._keys = keys
        self._jwks = [dict(jwk) for jwk in jwks]
        self._fetched_at = time.monotonic()

    @property
    def jwks(self) -> list[dict[str, Any]]:
        """The JWKs last loaded (public keys only), e.g. to serve them again."""
        return [dict(jwk) for jwk in self._jwks]

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


class TokenVerifier:
    """Verifies FlowForge credentials: access tokens (signature, `kid`, `alg`, `iss`, `aud`,
    `exp`) and, when given an `api_keys` resolver, API keys. Carrying both lets every service
    that builds its verifier from auth_svc accept both kinds of credential."""

    def __init__(
        self, keys: JwksKeySource, *, issuer: str, audience: str, api_keys: ApiKeyResolver | None = None
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self.api_keys = api_keys

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
                leeway=5,
            )
        except jwt.ExpiredSignatureError as exc:
            raise UnauthenticatedError("access token has expired") from exc
        except jwt.PyJWTError as exc:
            raise UnauthenticatedError("access token is not valid") from exc
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise UnauthenticatedError("access token is not valid")
        return Principal(
            tenant_id=str(claims["tid"]),
            subject=str(claims["sub"]),
            scopes=frozenset(scope.split()),
            role=str(claims.get("role", "")),
            token=token,
        )


def bearer_token(metadata: Mapping[str, str]) -> str | None:
    """The token of an `authorization: Bearer <token>` metadata entry, if any."""
    value = metadata.get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthenticatedError("authorization must be `Bearer <token>`")
    return token.strip()
