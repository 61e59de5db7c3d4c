"""A running auth_svc refuses every malformed, forged or misdirected access token on GetMe.

Tokens are assembled by hand (header.payload.signature) so that the test can build the ones
pyjwt refuses to make: `alg: none` and HS256 keyed with the public key (key confusion).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr

from auth_svc.server import create_server
from auth_svc.settings import AuthSettings
from flowforge.auth.v1 import auth_service_pb2 as pb
from flowforge.auth.v1 import auth_service_pb2_grpc as pb_grpc
from tests.fixtures.databases import DatabaseTarget

EMAIL = "grace@example.com"
PASSWORD = "correct-horse-battery"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A compact JWS with whatever header and signature the test asks for."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


@dataclass
class Session:
    """A signed-in user of a running auth_svc whose signing key the test holds."""

    stub: pb_grpc.AuthServiceStub
    key: Ed25519PrivateKey
    kid: str
    token: str
    claims: dict[str, Any]

    def resign(self, header: dict[str, Any] | None = None, **claims: Any) -> str:
        """The session's claims (with `claims` replaced), properly signed with the service key."""
        return compact(
            header if header is not None else {"alg": "EdDSA", "typ": "JWT", "kid": self.kid},
            {**self.claims, **claims},
            self.key.sign,
        )

    def public_key_bytes(self, encoding: serialization.Encoding) -> bytes:
        public = self.key.public_key()
        if encoding is serialization.Encoding.Raw:
            return public.public_bytes(encoding, serialization.PublicFormat.Raw)
        return public.public_bytes(encoding, serialization.PublicFormat.SubjectPublicKeyInfo)

    async def get_me(self, authorization: str) -> pb.GetMeResponse:
        return await self.stub.GetMe(pb.GetMeRequest(), metadata=[("authorization", authorization)])


@pytest.fixture
async def session(database: DatabaseTarget) -> AsyncIterator[Session]:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    settings = AuthSettings(
        port=0,
        database_url=database.url,
        db_schema=database.schema,
        data_dir=database.data_dir,
        signing_key=SecretStr(pem),
    )
    auth = await create_server(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{auth.port}") as channel:
            stub = pb_grpc.AuthServiceStub(channel)
            await stub.Signup(pb.SignupRequest(email=EMAIL, password=PASSWORD, tenant_name="Navy"))
            token = (await stub.Login(pb.LoginRequest(email=EMAIL, password=PASSWORD))).access_token
            jwks = await stub.GetJwks(pb.GetJwksRequest())
            yield Session(
                stub=stub,
                key=key,
                kid=jwks.keys[0]["kid"],
                token=token,
                claims=jwt.decode(token, options={"verify_signature": False}),
            )
    finally:
        await auth.stop(0)


def tampered(session: Session) -> str:
    header, _, signature = session.token.split(".")
    payload = b64url(json.dumps({**session.claims, "tid": "ten_someone_else"}).encode())
    return f"{header}.{payload}.{signature}"


def hs256_keyed_with(encoding: serialization.Encoding) -> Callable[[Session], str]:
    def token(session: Session) -> str:
        secret = session.public_key_bytes(encoding)
        header = {"alg": "HS256", "typ": "JWT", "kid": session.kid}
        return compact(header, session.claims, lambda data: hmac.new(secret, data, hashlib.sha256).digest())

    return token


BEARER_TOKENS: dict[str, Callable[[Session], str]] = {
    "expired": lambda s: s.resign(iat=int(time.time()) - 1000, exp=int(time.time()) - 60),
    "wrong audience": lambda s: s.resign(aud="another-api"),
    "wrong issuer": lambda s: s.resign(iss="https://evil.example.com"),
    "alg none": lambda s: compact({"alg": "none", "typ": "JWT", "kid": s.kid}, s.claims, lambda _: b""),
    "HS256 keyed with the raw public key": hs256_keyed_with(serialization.Encoding.Raw),
    "HS256 keyed with the PEM public key": hs256_keyed_with(serialization.Encoding.PEM),
    "unknown kid": lambda s: s.resign({"alg": "EdDSA", "typ": "JWT", "kid": "not-a-known-key"}),
    "missing kid": lambda s: s.resign({"alg": "EdDSA", "typ": "JWT"}),
    "another key claiming the kid": lambda s: compact(
        {"alg": "EdDSA", "typ": "JWT", "kid": s.kid}, s.claims, Ed25519PrivateKey.generate().sign
    ),
    "tampered payload": tampered,
    "not a JWT": lambda _: "not-a-jwt",
    "empty": lambda _: "",
}


async def test_the_genuine_token_and_a_faithful_copy_are_accepted(session: Session) -> None:
    """The control: what the rejections below change is the only thing wrong with them."""
    for token in (session.token, session.resign()):
        me = await session.get_me(f"Bearer {token}")
        assert me.user.email == EMAIL


@pytest.mark.parametrize("make_token", BEARER_TOKENS.values(), ids=BEARER_TOKENS.keys())
async def test_bad_bearer_tokens_are_refused(session: Session, make_token: Callable[[Session], str]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await session.get_me(f"Bearer {make_token(session)}")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_basic_credentials_are_refused(session: Session) -> None:
    basic = base64.b64encode(f"{EMAIL}:{PASSWORD}".encode()).decode()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await session.get_me(f"Basic {basic}")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
