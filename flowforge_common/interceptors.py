"""The server interceptor every FlowForge service runs: authentication, scopes, error mapping."""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_status import rpc_status
from prometheus_client import Counter, Histogram

from flowforge_common.auth import (
    ApiKeyResolver,
    Principal,
    TokenVerifier,
    bearer_token,
    bind_principal,
    require_scope,
    reset_principal,
)
from flowforge_common.errors import (
    BadRequestError,
    DomainError,
    PermissionDeniedError,
    UnauthenticatedError,
    to_rpc_status,
)
from flowforge_common.policy import MethodPolicy
from flowforge_common.service_identity import SERVICE_TOKEN_HEADER, ServiceCredential

logger = logging.getLogger(__name__)

__all__ = ["ApiKeyResolver", "ServiceInterceptor", "abort_with_domain_error"]


async def abort_with_domain_error(context: grpc.aio.ServicerContext, error: DomainError) -> None:
    """Ends the RPC with the rich status (ErrorInfo, BadRequest) of a domain error."""
    status = rpc_status.to_status(to_rpc_status(error))
    await context.abort(status.code, status.details, status.trailing_metadata)


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates the caller, enforces the RPC's declared scope, binds the principal, and
    turns domain errors into statuses (unknown exceptions: logged once, INTERNAL, no details).

    RPCs outside FlowForge's packages (health, reflection) pass through untouched.
    """

    def __init__(
        self,
        policies: dict[str, MethodPolicy | None],
        verifier: TokenVerifier,
        api_key_resolver: ApiKeyResolver | None = None,
        service_credential: ServiceCredential | None = None,
    ) -> None:
        self._policies = policies
        self._service_credential = service_credential
        self._verifier = verifier
        # Verifiers built from auth_svc carry an API key resolver: every service accepts keys.
        self._api_key_resolver = api_key_resolver or verifier.api_keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith("/flowforge."):
            return handler
        metadata = {k: v for k, v in (handler_call_details.invocation_metadata or ()) if isinstance(v, str)}
        policy = self._policies.get(method)
        authenticate = self._authenticator(method, policy, metadata)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary, authenticate),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, handler.unary_stream, authenticate),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _authenticator(
        self, method: str, policy: MethodPolicy | None, metadata: dict[str, str]
    ) -> Callable[[], Awaitable[Principal | None]]:
        async def authenticate() -> Principal | None:
            if policy is None:
                raise PermissionDeniedError(f"{method} declares no access policy")
            principal = await self._principal(metadata, required=not policy.public)
            if principal is not None and policy.scope:
                require_scope(principal, policy.scope)
            return principal

        return authenticate

    async def _principal(self, metadata: dict[str, str], *, required: bool) -> Principal | None:
        """The caller's principal from `authorization: Bearer` or `x-api-key`. For a public RPC
        (`required` false) bad or unverifiable credentials count as none at all."""
        try:
            return await self._credentials(metadata, required=required)
        except DomainError:
            if required:
                raise
            return None

    async def _credentials(self, metadata: dict[str, str], *, required: bool) -> Principal | None:
        if SERVICE_TOKEN_HEADER in metadata:
            if self._service_credential is None:
                raise UnauthenticatedError("this service does not accept service tokens")
            return self._service_credential.principal(metadata)
        token = bearer_token(metadata)
        if token is not None:
            return await self._verifier.verify(token)
        api_key = metadata.get("x-api-key")
        if api_key:
            if self._api_key_resolver is None:
                raise UnauthenticatedError("API keys are not accepted by this service")
            return await self._api_key_resolver(api_key)
        if required:
            raise UnauthenticatedError("this call needs credentials")
        return None


RPC_HANDLED = Counter(
    "flowforge_grpc_server_handled_total", "RPCs completed, by method and status code.", ["method", "code"]
)
RPC_SECONDS = Histogram(
    "flowforge_grpc_server_handling_seconds",
    "Time to complete an RPC (streams: until the stream ends).",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class _Outcome:
    """Tracks the status code an RPC ends with, for metrics."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.code = grpc.StatusCode.OK
        self.started = time.perf_counter()

    async def abort(self, context: grpc.aio.ServicerContext, error: DomainError) -> None:
        self.code = error.grpc_code
        await abort_with_domain_error(context, error)

    async def abort_plain(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, detail: str) -> None:
        self.code = code
        await context.abort(code, detail)

    def aborted_by_servicer(self, context: grpc.aio.ServicerContext) -> None:
        if self.code == grpc.StatusCode.OK:
            code = context.code()
            self.code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN

    def record(self) -> None:
        RPC_HANDLED.labels(self.method, self.code.name).inc()
        RPC_SECONDS.labels(self.method).observe(time.perf_counter() - self.started)


UNSTORABLE_TEXT = "text must not contain the NUL character (U+0000) or invalid Unicode"
# PostgreSQL's SQLSTATEs for text it cannot store: character_not_in_repertoire (NUL bytes,
# lone surrogates) and untranslatable_character.
_UNSTORABLE_TEXT_STATES = frozenset({"22021", "22P05"})


def _is_unstorable_text(error: BaseException) -> bool:
    """Whether PostgreSQL refused a parameter's text (e.g. a NUL in an id someone looked up):
    the caller's input, so a 400, not an internal error. Walks the driver's exception chain."""
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return False
        for candidate in (seen, getattr(seen, "orig", None)):
            if getattr(candidate, "sqlstate", None) in _UNSTORABLE_TEXT_STATES:
                return True
        seen = seen.__cause__ or getattr(seen, "orig", None)
    return False


def _wrap_unary(
    method: str,
    behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    authenticate: Callable[[], Awaitable[Principal | None]],
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        outcome = _Outcome(method)
        token = None
        try:
            try:
                principal = await authenticate()
            except DomainError as error:
                await outcome.abort(context, error)
            token = bind_principal(principal)
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        except NotImplementedError:
            # The generated base servicer: the RPC belongs to a later milestone.
            await outcome.abort_plain(context, grpc.StatusCode.UNIMPLEMENTED, "this method is not implemented yet")
        except DomainError as error:
            await outcome.abort(context, error)
        except (grpc.aio.AbortError, grpc.RpcError):
            outcome.aborted_by_servicer(context)
            raise
        except Exception as error:
            if _is_unstorable_text(error):
                await outcome.abort(context, BadRequestError(UNSTORABLE_TEXT))
            else:
                logger.exception("unhandled error in RPC", extra={"method": method})
                await outcome.abort_plain(context, grpc.StatusCode.INTERNAL, "internal error")
        finally:
            if token is not None:
                reset_principal(token)
            outcome.record()
        return None

    return wrapper


def _wrap_stream(
    method: str,
    behavior: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
    authenticate: Callable[[], Awaitable[Principal | None]],
) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        outcome = _Outcome(method)
        token = None
        try:
            try:
                principal = await authenticate()
            except DomainError as error:
                await outcome.abort(context, error)
            token = bind_principal(principal)
            stream = behavior(request, context)
            if not hasattr(stream, "__aiter__"):
                raise NotImplementedError
            async for item in stream:
                yield item
        except NotImplementedError:
            await outcome.abort_plain(context, grpc.StatusCode.UNIMPLEMENTED, "this method is not implemented yet")
        except DomainError as error:
            await outcome.abort(context, error)
        except (grpc.aio.AbortError, grpc.RpcError):
            outcome.aborted_by_servicer(context)
            raise
        except Exception:
            logger.exception("unhandled error in streaming RPC", extra={"method": method})
            await outcome.abort_plain(context, grpc.StatusCode.INTERNAL, "internal error")
        finally:
            if token is not None:
                # A cancelled stream is finalised from another context, where the token does
                # not belong; the principal dies with that context anyway.
                with contextlib.suppress(ValueError):
                    reset_principal(token)
            outcome.record()

    return wrapper
