"""Edge authentication: every route that is not public needs a valid bearer token or API key
before anything reaches a service. Services verify the forwarded credentials again; the edge
check stops forged and expired credentials at the door and gives the rate limiter a principal."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from enum import StrEnum

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import AbstractRoute

from edge.problems import ProblemError
from edge.settings import SETTINGS_KEY
from edge.transcoder import TranscodingHandler
from edge.upstream import UPSTREAMS_KEY
from flowforge.auth.v1 import auth_service_pb2
from flowforge_common.auth import Principal, TokenVerifier, bearer_token
from flowforge_common.clients import remote_token_verifier
from flowforge_common.errors import DomainError, UnauthenticatedError

AUTH_SERVICE = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
# The one sign-in that checks a password: also limited per email address (edge/ratelimit.py).
LOGIN_RPC = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].methods_by_name["Login"].full_name
# Hand-written routes anyone may call. Every other hand-written route (the SSE and WebSocket
# relays, /api/v1/status, and whatever is added later) needs credentials: secure by default.
PUBLIC_SYSTEM_PATHS = frozenset(
    {
        "/health",
        "/health/ready",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/docs/",
        "/docs/openapi.json",
        "/docs/swagger-initializer.js",
        "/docs/{asset}",
    }
)
# Browsers cannot set headers on a WebSocket handshake: there the relay may take the token from
# the first message instead (API.md), so an upgrade without credentials passes the edge and the
# handler must call `authenticate_token` before it serves anything.
WEBSOCKET_PATHS = frozenset({"/api/v1/ws"})
AUTH_PATH_PREFIX = "/api/v1/auth/"


class Access(StrEnum):
    """Who may call a route."""

    PUBLIC = "public"
    AUTHENTICATED = "authenticated"
    WEBSOCKET = "websocket"


class RateClass(StrEnum):
    """The rate-limit bucket a route spends from (see edge/ratelimit.py)."""

    NONE = "none"  # system routes and the JWKS: never limited
    AUTH = "auth"  # sign-in endpoints: limited per client IP against brute force
    PUBLIC = "public"  # other unauthenticated entry points (signed inbound hooks): per client IP
    READ = "read"
    WRITE = "write"
    EXECUTE = "execute"  # RPCs that need `runs:execute`: start and control runs


@dataclass(frozen=True)
class RouteAccess:
    """What the authentication and rate-limit middlewares need to know about a route.
    `password_sign_in`: the route checks an email's password, so failures are also limited per
    email address."""

    access: Access
    rate_class: RateClass
    password_sign_in: bool = False


DEFAULT_ACCESS = RouteAccess(Access.AUTHENTICATED, RateClass.READ)
ROUTE_ACCESS_KEY = web.AppKey("route_access", dict[AbstractRoute, RouteAccess])
PRINCIPAL_KEY = web.RequestKey("principal", Principal)


def access_of(route: AbstractRoute) -> RouteAccess:
    """The access rule of one registered route: a transcoded route follows its RPC's policy,
    a hand-written one is public only when listed in PUBLIC_SYSTEM_PATHS."""
    owner = getattr(route.handler, "__self__", None)
    if isinstance(owner, TranscodingHandler):
        binding = owner.binding
        if binding.public:
            if binding.service.full_name == AUTH_SERVICE and binding.template.aiohttp_path().startswith(
                AUTH_PATH_PREFIX
            ):
                login = binding.method.full_name == LOGIN_RPC
                return RouteAccess(Access.PUBLIC, RateClass.AUTH, password_sign_in=login)
            if binding.verb == "GET":
                return RouteAccess(Access.PUBLIC, RateClass.NONE)
            return RouteAccess(Access.PUBLIC, RateClass.PUBLIC)
        # An RPC without a policy is refused by its service; the edge still wants credentials.
        scope = binding.policy.scope if binding.policy is not None else ""
        if scope == "runs:execute":
            return RouteAccess(Access.AUTHENTICATED, RateClass.EXECUTE)
        return RouteAccess(Access.AUTHENTICATED, RateClass.READ if binding.verb == "GET" else RateClass.WRITE)
    canonical = route.resource.canonical if route.resource is not None else ""
    if canonical in PUBLIC_SYSTEM_PATHS:
        return RouteAccess(Access.PUBLIC, RateClass.NONE)
    if canonical in WEBSOCKET_PATHS:
        return RouteAccess(Access.WEBSOCKET, RateClass.READ)
    return RouteAccess(Access.AUTHENTICATED, RateClass.READ if route.method in ("GET", "HEAD") else RateClass.WRITE)


def route_table(app: web.Application) -> dict[AbstractRoute, RouteAccess]:
    """The access rule of every route registered so far (call after the last route is added)."""
    return {route: access_of(route) for route in app.router.routes()}


def request_access(request: web.Request) -> RouteAccess | None:
    """The access rule of the route a request matched; None for unmatched requests (404/405),
    which never reach a service."""
    if request.match_info.http_exception is not None:
        return None
    route = request.match_info.route
    return request.app[ROUTE_ACCESS_KEY].get(route, DEFAULT_ACCESS)


class EdgeAuthenticator:
    """Verifies the credentials of a request: `Authorization: Bearer <jwt>` against auth_svc's
    JWKS (a verified token is remembered until its `exp`, at most a minute: the verifier's
    VerifiedTokenCache), or `X-API-Key` through auth_svc's VerifyApiKey (cached for at most
    5 s)."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    async def authenticate(self, headers: Mapping[str, str]) -> Principal | None:
        """The principal of the request's credentials, None when it carries none;
        ProblemError 401 for bad credentials, 503 when auth_svc cannot be asked."""
        authorization = headers.get(hdrs.AUTHORIZATION)
        api_key = headers.get("X-API-Key")
        try:
            if authorization is not None:
                token = bearer_token({"authorization": authorization})
                if token is None:
                    raise UnauthenticatedError("authorization must be `Bearer <token>`")
                return await self._verifier.verify(token)
            if api_key is not None:
                return await self._verifier.verify_api_key(api_key.strip())
        except UnauthenticatedError as error:
            raise unauthenticated(error.message, presented=True) from error
        except DomainError as error:
            raise ProblemError(503, error.message, error.reason) from error
        return None

    async def authenticate_token(self, token: str) -> Principal:
        """The principal of a bare access token or API key (e.g. a WebSocket's first message)."""
        header = {"X-API-Key": token} if token.startswith("ffk_") else {"Authorization": f"Bearer {token}"}
        principal = await self.authenticate(header)
        if principal is None:  # pragma: no cover - a header was given
            raise unauthenticated("credentials are required", presented=False)
        return principal


def unauthenticated(detail: str, *, presented: bool) -> ProblemError:
    """401 with the RFC 6750 challenge; `error="invalid_token"` when credentials were sent."""
    challenge = 'Bearer error="invalid_token"' if presented else "Bearer"
    return ProblemError(401, detail, "UNAUTHENTICATED", headers={"WWW-Authenticate": challenge})


AUTHENTICATOR_KEY = web.AppKey("authenticator", EdgeAuthenticator)


async def authenticator_ctx(app: web.Application, *, verifier: TokenVerifier | None = None) -> AsyncIterator[None]:
    """cleanup_ctx (after the upstream channels open): a verifier over auth_svc's channel,
    unless one is given."""
    if verifier is None:
        settings = app[SETTINGS_KEY]
        channel = app[UPSTREAMS_KEY].channel(AUTH_SERVICE)
        verifier = remote_token_verifier(channel, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    app[AUTHENTICATOR_KEY] = EdgeAuthenticator(verifier)
    yield


def _is_websocket_upgrade(request: web.Request) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


@web.middleware
async def authentication_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuses requests to non-public routes without valid credentials (401 problem+json with
    `WWW-Authenticate: Bearer`), and stores the principal on the request. Credentials stay in
    the headers: the transcoder forwards them and the services check them again."""
    access = request_access(request)
    if access is None or access.access is Access.PUBLIC:
        return await handler(request)
    principal = await request.app[AUTHENTICATOR_KEY].authenticate(request.headers)
    if principal is not None:
        request[PRINCIPAL_KEY] = principal
    elif not (access.access is Access.WEBSOCKET and _is_websocket_upgrade(request)):
        raise unauthenticated(
            "this route needs credentials: `Authorization: Bearer <token>` or `X-API-Key`", presented=False
        )
    return await handler(request)


def request_principal(request: web.Request) -> Principal | None:
    """The principal the authentication middleware found, if any."""
    return request.get(PRINCIPAL_KEY)
