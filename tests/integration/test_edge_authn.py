"""The edge verifies credentials before any service sees the request: forged, expired and
misdirected tokens are a 401 problem+json with a Bearer challenge, and the backend records no
call. Public routes stay open; stream routes need credentials like every other route."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytest_aiohttp import AiohttpClient

from auth_svc.domain.tokens import DEV_KEY_FILENAME
from edge.app import create_app
from tests.edge.support import EchoBackend, edge_settings
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.stack import Stack
from tests.fixtures.tokens import AUDIENCE, ISSUER, TokenFactory

Client = TestClient[Any, Any]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A compact JWS with whatever header and signature the test asks for."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "usr_x", "tid": "ten_x", "scope": "agents:read", "iat": now}
    return {**base, "exp": now + 300, **overrides}


def hs256_with_public_key(encoding: serialization.Encoding) -> Callable[[Ed25519PrivateKey, str], str]:
    def make(key: Ed25519PrivateKey, kid: str) -> str:
        public = key.public_key()
        secret = (
            public.public_bytes(encoding, serialization.PublicFormat.Raw)
            if encoding is serialization.Encoding.Raw
            else public.public_bytes(encoding, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        header = {"alg": "HS256", "typ": "JWT", "kid": kid}
        return compact(header, claims(), lambda data: hmac.new(secret, data, hashlib.sha256).digest())

    return make


def eddsa(key: Ed25519PrivateKey, kid: str, **overrides: Any) -> str:
    return compact({"alg": "EdDSA", "typ": "JWT", "kid": kid}, claims(**overrides), key.sign)


BAD_TOKENS: dict[str, Callable[[Ed25519PrivateKey, str], str]] = {
    "expired": lambda k, kid: eddsa(k, kid, iat=int(time.time()) - 1000, exp=int(time.time()) - 60),
    "wrong audience": lambda k, kid: eddsa(k, kid, aud="another-api"),
    "wrong issuer": lambda k, kid: eddsa(k, kid, iss="https://evil.example.com"),
    "alg none": lambda _k, kid: compact({"alg": "none", "typ": "JWT", "kid": kid}, claims(), lambda _: b""),
    "HS256 keyed with the raw public key": hs256_with_public_key(serialization.Encoding.Raw),
    "HS256 keyed with the PEM public key": hs256_with_public_key(serialization.Encoding.PEM),
    "unknown kid": lambda k, _kid: eddsa(k, "not-a-known-key"),
    "another key claiming the kid": lambda _k, kid: eddsa(Ed25519PrivateKey.generate(), kid),
    "not a JWT": lambda _k, _kid: "not-a-jwt",
}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, backend: EchoBackend) -> Client:
    return await aiohttp_client(create_app(edge_settings(backend.target)))


async def assert_401(response: Any, *, presented: bool) -> dict[str, Any]:
    assert response.status == 401, await response.text()
    assert response.content_type == "application/problem+json"
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer")
    assert ('error="invalid_token"' in challenge) is presented
    body: dict[str, Any] = await response.json()
    assert body["type"] == "https://flowforge.dev/problems/unauthenticated"
    return body


@pytest.mark.parametrize("make_token", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
async def test_bad_tokens_are_refused_at_the_edge(
    client: Client, backend: EchoBackend, tokens: TokenFactory, make_token: Callable[[Ed25519PrivateKey, str], str]
) -> None:
    token = make_token(tokens.key, tokens.kid)
    response = await client.get("/api/v1/agents/agt_1", headers={"Authorization": f"Bearer {token}"})
    await assert_401(response, presented=True)
    assert backend.recorder.calls == [], "the service was reached"


async def test_the_genuine_token_passes_and_is_forwarded(
    client: Client, backend: EchoBackend, tokens: TokenFactory
) -> None:
    token = tokens.mint()
    response = await client.get("/api/v1/agents/agt_1", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200, await response.text()
    assert backend.recorder.last("GetAgent").metadata["authorization"] == f"Bearer {token}"


async def test_tampered_copies_of_a_cached_token_are_refused(
    client: Client, backend: EchoBackend, tokens: TokenFactory
) -> None:
    """The edge remembers verified tokens by a hash of the whole token: a copy with other claims
    or another signature is verified afresh, and refused."""
    token = tokens.mint(tenant_id="ten_a", scopes=("agents:read",))
    for _ in range(2):  # the second request is answered from the cache
        response = await client.get("/api/v1/agents/agt_1", headers=bearer(token))
        assert response.status == 200, await response.text()
    calls = len(backend.recorder.calls)
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    admin = b64url(json.dumps({**decoded, "tid": "ten_b", "scope": "admin"}).encode())
    other_signature = tokens.mint(tenant_id="ten_b", scopes=("admin",)).rsplit(".", 1)[1]
    for forged in (f"{header}.{admin}.{signature}", f"{header}.{payload}.{other_signature}"):
        await assert_401(await client.get("/api/v1/agents/agt_1", headers=bearer(forged)), presented=True)
    assert len(backend.recorder.calls) == calls, "a forged token reached the service"


async def test_missing_or_non_bearer_credentials_are_refused(client: Client, backend: EchoBackend) -> None:
    await assert_401(await client.get("/api/v1/agents"), presented=False)
    basic = base64.b64encode(b"a@example.com:password").decode()
    await assert_401(await client.get("/api/v1/agents", headers={"Authorization": f"Basic {basic}"}), presented=True)
    await assert_401(await client.get("/api/v1/agents", headers={"Authorization": "Bearer "}), presented=True)
    assert backend.recorder.calls == []


async def test_stream_and_status_routes_need_credentials(client: Client, tokens: TokenFactory) -> None:
    for path in ("/api/v1/runs/run_1/events", "/api/v1/events", "/api/v1/ws", "/api/v1/status"):
        await assert_401(await client.get(path), presented=False)
    auth = {"Authorization": f"Bearer {tokens.mint()}"}
    for path in ("/api/v1/runs/run_1/events", "/api/v1/events"):
        assert (await client.get(path, headers=auth)).status != 401


async def test_a_websocket_upgrade_may_authenticate_in_its_first_message(client: Client) -> None:
    """Browsers cannot set headers on the handshake: the relay authenticates the first message."""
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
    response = await client.get("/api/v1/ws", headers={**upgrade, "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert response.status != 401
    bad = await client.get("/api/v1/ws", headers={**upgrade, "Authorization": "Bearer forged"})
    await assert_401(bad, presented=True)


async def test_public_routes_need_no_credentials_and_ignore_bad_ones(client: Client, backend: EchoBackend) -> None:
    for path in ("/health", "/metrics", "/openapi.json", "/docs", "/.well-known/jwks.json"):
        response = await client.get(path, headers={"Authorization": "Bearer forged"})
        assert response.status == 200, path
    body = {"email": "a@example.com", "password": "correct-horse-battery", "tenant_name": "x"}
    response = await client.post("/api/v1/auth/signup", json=body, headers={"Authorization": "Bearer forged"})
    assert response.status == 201
    assert backend.recorder.last("Signup").request.email == "a@example.com"


async def test_unknown_routes_stay_404_without_credentials(client: Client) -> None:
    assert (await client.get("/api/v1/nothing-here")).status == 404
    assert (await client.put("/api/v1/agents/agt_1")).status == 405


async def test_auth_svc_down_is_503_not_401(
    aiohttp_client: AiohttpClient, backend: EchoBackend, tokens: TokenFactory
) -> None:
    client = await aiohttp_client(create_app(edge_settings(backend.target, auth_target="127.0.0.1:1")))
    response = await client.get("/api/v1/agents", headers={"Authorization": f"Bearer {tokens.mint()}"})
    assert response.status == 503
    assert response.content_type == "application/problem+json"


async def test_the_real_stack_refuses_tokens_signed_right_but_wrong(stack: Stack, database: DatabaseTarget) -> None:
    member = await stack.member()
    me = await stack.client.get("/api/v1/auth/me", headers=member.headers)
    assert me.status == 200
    pem = (database.data_dir / DEV_KEY_FILENAME).read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    kid = json.loads(base64.urlsafe_b64decode(member.token.split(".")[0] + "=="))["kid"]
    real = {"sub": member.user_id, "tid": member.tenant_id}
    assert (await stack.client.get("/api/v1/auth/me", headers=bearer(eddsa(key, kid, **real)))).status == 200
    for token in (
        eddsa(key, kid, **real, exp=int(time.time()) - 60),
        eddsa(key, kid, **real, aud="another-api"),
        eddsa(key, "kid-of-nobody", **real),
        compact({"alg": "none", "kid": kid}, claims(**real), lambda _: b""),
    ):
        await assert_401(await stack.client.get("/api/v1/agents", headers=bearer(token)), presented=True)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
