"""Caller identity for every service: JWT verification against JWKS and the principal context."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from flowforge_common.errors import PermissionDeniedError, UnauthenticatedError

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


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant, the subject (user, key or service account) and its scopes."""

    tenant_id: str
    subject: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    role: str = ""
    token: str = ""

    def has_scope(self, scope: str) -> bool:
        """`admin` implies every scope."""
        return scope in self.scopes or "admin" in self.scopes


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


class JwksKeySource:
    """Public verification keys by `kid`, fetched from a JWKS and refreshed on an unknown kid.

    Refreshes are rate-limited so that tokens with made-up `kid`s cannot hammer auth_svc.
    """

    def __init__(self, fetch: KeyFetcher, *, min_refresh_interval: float = 10.0) -> None:
        self._fetch = fetch
        self._keys: dict[str, Any] = {}
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
        self._fetched_at = time.monotonic()

    async def key_for(self, kid: str) -> Any | None:
        """The key with this `kid`, refreshing the set once if it is unknown."""
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._lock:
            key = self._keys.get(kid)
            if key is None and time.monotonic() - self._fetched_at >= self._min_interval:
                try:
                    self.load(await self._fetch())
                except Exception:
                    logger.exception("could not fetch the JWKS")
                    self._fetched_at = time.monotonic()
                key = self._keys.get(kid)
        return key


class TokenVerifier:
    """Verifies FlowForge access tokens: signature, `kid`, `alg`, `iss`, `aud`, `exp`."""

    def __init__(self, keys: JwksKeySource, *, issuer: str, audience: str) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience

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
