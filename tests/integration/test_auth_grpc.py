"""auth_svc over a real gRPC server: signup, login, GetMe and the JWKS, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import argon2
import grpc
import jwt
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import text

from auth_svc.domain.tokens import load_signing_key
from auth_svc.server import create_server
from auth_svc.settings import AuthSettings
from flowforge.auth.v1 import auth_pb2
from flowforge.auth.v1 import auth_service_pb2 as pb
from flowforge.auth.v1 import auth_service_pb2_grpc as pb_grpc
from flowforge_common.auth import ALL_SCOPES, JwksKeySource, TokenVerifier
from flowforge_common.service import RunningService
from tests.fixtures.databases import DatabaseTarget

PASSWORD = "correct-horse-battery"
StartAuth = Callable[..., Awaitable[RunningService]]


@pytest.fixture
async def start_auth(database: DatabaseTarget) -> AsyncIterator[StartAuth]:
    """Starts auth_svc on the test database; `overrides` are AuthSettings fields."""
    started: list[RunningService] = []

    async def start(**overrides: Any) -> RunningService:
        settings = AuthSettings(
            port=0,
            database_url=database.url,
            db_schema=database.schema,
            data_dir=database.data_dir,
            **overrides,
        )
        service = await create_server(settings)
        started.append(service)
        return service

    yield start
    for service in started:
        await service.stop(0)


@pytest.fixture
async def auth(start_auth: StartAuth) -> RunningService:
    return await start_auth()


@pytest.fixture
async def stub(auth: RunningService) -> AsyncIterator[pb_grpc.AuthServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth.port}") as channel:
        yield pb_grpc.AuthServiceStub(channel)


def unique_email() -> str:
    return f"ada-{uuid.uuid4().hex[:8]}@example.com"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def signup(
    stub: pb_grpc.AuthServiceStub, email: str, tenant_name: str = "Analytical Engines"
) -> pb.SignupResponse:
    return await stub.Signup(pb.SignupRequest(email=email, password=PASSWORD, tenant_name=tenant_name))


async def login(stub: pb_grpc.AuthServiceStub, email: str, password: str = PASSWORD) -> pb.LoginResponse:
    return await stub.Login(pb.LoginRequest(email=email, password=password))


async def run_sql(auth: RunningService, sql: str, **params: Any) -> Any:
    """Runs one statement on auth_svc's own database; the first column of its first row, if any."""
    assert auth.engine is not None
    async with auth.engine.begin() as conn:
        result = await conn.execute(text(sql), params)
        return result.scalar() if result.returns_rows else None


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_signup_login_and_get_me(stub: pb_grpc.AuthServiceStub) -> None:
    email = unique_email()
    created = await stub.Signup(
        pb.SignupRequest(email=email.upper(), password=PASSWORD, tenant_name=" Acme ", display_name="Ada")
    )
    assert created.user.email == email
    assert created.user.role == auth_pb2.ROLE_OWNER
    assert created.user.tenant_id == created.tenant.id
    assert created.user.id.startswith("usr_")
    assert created.tenant.id.startswith("ten_")
    assert created.tenant.name == "Acme"
    assert created.user.display_name == "Ada"
    assert created.user.active
    assert created.user.etag

    token = await login(stub, email.upper())
    assert token.token_type == "Bearer"
    assert token.expires_in == 900
    assert token.refresh_token.startswith("ffr_")

    me = await stub.GetMe(pb.GetMeRequest(), metadata=bearer(token.access_token))
    assert me.user == created.user
    assert me.tenant == created.tenant
    assert me.role == auth_pb2.ROLE_OWNER
    assert sorted(me.scopes) == sorted(ALL_SCOPES)


async def test_access_tokens_verify_against_the_published_jwks(stub: pb_grpc.AuthServiceStub) -> None:
    email = unique_email()
    created = await signup(stub, email)
    token = (await login(stub, email)).access_token

    jwks = [json_format.MessageToDict(key) for key in (await stub.GetJwks(pb.GetJwksRequest())).keys]
    assert len(jwks) == 1
    assert {k: v for k, v in jwks[0].items() if k not in {"x", "kid"}} == {
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
    }
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": jwks[0]["kid"], "typ": "JWT"}

    async def fetch() -> list[dict[str, Any]]:
        return jwks

    keys = JwksKeySource(fetch)
    keys.load(jwks)
    principal = await TokenVerifier(keys, issuer="flowforge", audience="flowforge-api").verify(token)
    assert principal.subject == created.user.id
    assert principal.tenant_id == created.tenant.id
    assert principal.role == "owner"
    assert principal.scopes == frozenset(ALL_SCOPES)

    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 900
    assert claims["jti"]


async def test_failed_logins_all_look_the_same(auth: RunningService, stub: pb_grpc.AuthServiceStub) -> None:
    email, disabled = unique_email(), unique_email()
    await signup(stub, email)
    await signup(stub, disabled)
    await run_sql(auth, "UPDATE users SET active = :active WHERE email = :email", active=False, email=disabled)

    failures = [
        await rpc_error(login(stub, email, "wrong-password-123")),
        await rpc_error(login(stub, unique_email())),
        await rpc_error(login(stub, disabled)),
        await rpc_error(login(stub, email, "p" * 5000)),
    ]
    assert {(error.code(), error.details()) for error in failures} == {
        (grpc.StatusCode.UNAUTHENTICATED, "invalid email or password")
    }


async def test_an_email_has_one_account_per_tenant_whatever_its_case(stub: pb_grpc.AuthServiceStub) -> None:
    email = unique_email()
    first = await signup(stub, email)
    # Accounts are per tenant: a second signup is a second tenant, never a conflict.
    second = await signup(stub, email.upper(), tenant_name="Another")
    assert second.tenant.id != first.tenant.id and second.user.email == email
    login = pb.LoginRequest(email=email, password=PASSWORD, tenant_id=first.tenant.id)
    owner = bearer((await stub.Login(login)).access_token)
    invite = pb.CreateUserRequest(email=email.upper(), password=PASSWORD, role=auth_pb2.ROLE_VIEWER)
    error = await rpc_error(stub.CreateUser(invite, metadata=owner))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_validation_names_every_bad_field(stub: pb_grpc.AuthServiceStub) -> None:
    error = await rpc_error(stub.Signup(pb.SignupRequest(email="nope", password="short", tenant_name="")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    info = error_details_pb2.ErrorInfo()
    for detail in status.details:
        if detail.Is(bad_request.DESCRIPTOR):
            detail.Unpack(bad_request)
        elif detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
    assert info.reason == "VALIDATION_FAILED"
    assert [v.field for v in bad_request.field_violations] == ["email", "password", "tenant_name"]
    assert all(v.description for v in bad_request.field_violations)


async def test_signup_can_be_disabled(start_auth: StartAuth) -> None:
    auth = await start_auth(allow_signup=False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth.port}") as channel:
        error = await rpc_error(signup(pb_grpc.AuthServiceStub(channel), unique_email()))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_passwords_are_stored_as_argon2id_hashes(auth: RunningService, stub: pb_grpc.AuthServiceStub) -> None:
    email = unique_email()
    await signup(stub, email)
    stored = await run_sql(auth, "SELECT password_hash FROM users WHERE email = :email", email=email)
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert PASSWORD not in stored


async def test_login_upgrades_hashes_made_with_older_parameters(
    auth: RunningService, stub: pb_grpc.AuthServiceStub
) -> None:
    email = unique_email()
    await signup(stub, email)
    old_hash = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    await run_sql(auth, "UPDATE users SET password_hash = :h WHERE email = :email", h=old_hash, email=email)

    await login(stub, email)

    stored = await run_sql(auth, "SELECT password_hash FROM users WHERE email = :email", email=email)
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert (await login(stub, email)).access_token


async def test_get_me_is_bound_to_the_callers_tenant(database: DatabaseTarget, stub: pb_grpc.AuthServiceStub) -> None:
    first, second = unique_email(), unique_email()
    tenant_a = await signup(stub, first, tenant_name="A")
    tenant_b = await signup(stub, second, tenant_name="B")

    me = await stub.GetMe(pb.GetMeRequest(), metadata=bearer((await login(stub, second)).access_token))
    assert me.tenant.id == tenant_b.tenant.id != tenant_a.tenant.id
    assert me.user.id == tenant_b.user.id

    # A validly signed token that pairs tenant A with B's user: the repository looks the user up
    # within tenant A only, so nothing of either tenant comes back.
    now = int(time.time())
    key = load_signing_key(None, database.data_dir)
    mixed = key.sign(
        {
            "iss": "flowforge",
            "aud": "flowforge-api",
            "sub": tenant_b.user.id,
            "tid": tenant_a.tenant.id,
            "scope": " ".join(ALL_SCOPES),
            "iat": now,
            "exp": now + 60,
        }
    )
    error = await rpc_error(stub.GetMe(pb.GetMeRequest(), metadata=bearer(mixed)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_get_me_needs_a_token(stub: pb_grpc.AuthServiceStub) -> None:
    error = await rpc_error(stub.GetMe(pb.GetMeRequest()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_tokens_survive_a_restart_with_the_dev_key(start_auth: StartAuth) -> None:
    first = await start_auth()
    email = unique_email()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        stub = pb_grpc.AuthServiceStub(channel)
        await signup(stub, email)
        token = (await login(stub, email)).access_token
    await first.stop(0)

    second = await start_auth()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        me = await pb_grpc.AuthServiceStub(channel).GetMe(pb.GetMeRequest(), metadata=bearer(token))
    assert me.user.email == email


async def test_a_made_up_refresh_token_is_unauthenticated(stub: pb_grpc.AuthServiceStub) -> None:
    error = await rpc_error(stub.Refresh(pb.RefreshRequest(refresh_token="x")))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
