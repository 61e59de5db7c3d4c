"""Signing keys (thumbprint kid, storage) and the claims of access tokens."""

from __future__ import annotations

import base64
import datetime as dt
import stat
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr

from auth_svc.domain.models import Role, User
from auth_svc.domain.tokens import DEV_KEY_FILENAME, SigningKey, TokenIssuer, load_signing_key
from flowforge_common.auth import JwksKeySource, TokenVerifier

NOW = dt.datetime(2026, 1, 15, 10, 30, tzinfo=dt.UTC)
# RFC 8037 appendix A.1 (private key) and A.3 (its RFC 7638 thumbprint).
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def make_user(role: Role = Role.EDITOR) -> User:
    return User(
        id="usr_1",
        tenant_id="ten_1",
        email="ada@example.com",
        password_hash="$argon2id$unused",
        role=role,
        display_name="Ada",
        active=True,
        version=1,
        created_at=NOW,
        updated_at=NOW,
    )


def issuer(key: SigningKey | None = None) -> TokenIssuer:
    key = key or SigningKey(Ed25519PrivateKey.generate())
    return TokenIssuer(key, issuer="flowforge", audience="flowforge-api", ttl_seconds=900)


def test_kid_is_the_rfc7638_thumbprint() -> None:
    d = base64.urlsafe_b64decode(RFC8037_D + "=")
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(d))
    assert key.kid == RFC8037_THUMBPRINT
    assert key.public_jwk == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": RFC8037_X,
        "kid": RFC8037_THUMBPRINT,
        "alg": "EdDSA",
        "use": "sig",
    }


def test_claims_name_the_user_its_tenant_and_its_role_scopes() -> None:
    claims = issuer().claims(make_user(Role.OPERATOR), NOW)
    iat = int(NOW.timestamp())
    assert claims == {
        "iss": "flowforge",
        "aud": "flowforge-api",
        "sub": "usr_1",
        "tid": "ten_1",
        "scope": "workflows:read runs:read runs:execute agents:read",
        "role": "operator",
        "iat": iat,
        "exp": iat + 900,
        "jti": claims["jti"],
    }
    assert claims["jti"] != issuer().claims(make_user(), NOW)["jti"]


async def test_issued_tokens_verify_against_the_published_jwks() -> None:
    tokens = issuer()
    now = dt.datetime.now(dt.UTC)
    access = tokens.issue(make_user(Role.VIEWER), now)
    assert access.expires_in == 900
    header = jwt.get_unverified_header(access.token)
    assert header["alg"] == "EdDSA"
    assert header["kid"] == tokens.jwks()[0]["kid"]

    async def fetch() -> list[dict[str, str]]:
        return tokens.jwks()

    keys = JwksKeySource(fetch)
    keys.load(tokens.jwks())
    principal = await TokenVerifier(keys, issuer="flowforge", audience="flowforge-api").verify(access.token)
    assert principal.tenant_id == "ten_1"
    assert principal.subject == "usr_1"
    assert principal.role == "viewer"
    assert principal.scopes == {"workflows:read", "runs:read", "agents:read"}


def test_dev_key_is_created_once_private_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = load_signing_key(None, data_dir)
    path = data_dir / DEV_KEY_FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_signing_key(None, data_dir).kid == first.kid
    assert [p.name for p in data_dir.iterdir()] == [DEV_KEY_FILENAME]


def test_a_configured_key_wins_and_touches_no_file(tmp_path: Path) -> None:
    key = SigningKey(Ed25519PrivateKey.generate())
    loaded = load_signing_key(SecretStr(key.to_pem().decode()), tmp_path)
    assert loaded.kid == key.kid
    assert list(tmp_path.iterdir()) == []


def test_a_configured_key_must_be_ed25519(tmp_path: Path) -> None:
    ec_pem = generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="Ed25519"):
        load_signing_key(SecretStr(ec_pem.decode()), tmp_path)
