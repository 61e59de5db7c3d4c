"""Access tokens: the Ed25519 signing key, its JWK, and the claims auth_svc signs."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr

from auth_svc.domain.models import AccessToken, User, scopes_for_role

DEV_KEY_FILENAME = "auth_signing_key.pem"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SigningKey:
    """The Ed25519 key that signs access tokens. Its `kid` is the RFC 7638 thumbprint of the
    public key: stable across restarts and replicas that share the key, and different for any
    other key, so verifiers can hold several keys during a rotation."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        public = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        x = _b64url(public)
        # RFC 7638: the required members only, in lexicographic order, without whitespace.
        required = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
        self.kid = _b64url(hashlib.sha256(required.encode("ascii")).digest())
        self.public_jwk: dict[str, str] = {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": x,
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        """Loads a PKCS#8 PEM private key; ValueError unless it is an unencrypted Ed25519 key."""
        private_key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(private_key, Ed25519PrivateKey):
            raise ValueError("the signing key must be an Ed25519 private key")
        return cls(private_key)

    def to_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self._private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS of `claims`, EdDSA-signed, with this key's `kid` in the header."""
        return jwt.encode(claims, self._private_key, algorithm="EdDSA", headers={"kid": self.kid})


def load_signing_key(configured: SecretStr | None, data_dir: Path) -> SigningKey:
    """The key that signs access tokens.

    Production sets FLOWFORGE_SIGNING_KEY (`configured`) to an Ed25519 PEM shared by every
    auth_svc replica. Without it, a dev key is generated on first start and kept in
    `data_dir` (mode 0600), so that restarting `make run` does not sign everyone out.
    """
    if configured is not None:
        return SigningKey.from_pem(configured.get_secret_value().encode())
    path = data_dir / DEV_KEY_FILENAME
    if not path.exists():
        _create_dev_key(path)
    return SigningKey.from_pem(path.read_bytes())


def _create_dev_key(path: Path) -> None:
    """Writes a new key to `path` unless another process got there first.

    The PEM goes to a private temporary file that is then hard-linked into place: the link
    either creates a complete file or fails because one exists, so a concurrent starter never
    reads half a key and every process ends up with the same key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(SigningKey(Ed25519PrivateKey.generate()).to_pem())
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink()


class TokenIssuer:
    """Mints access tokens for users: who (`sub`, `tid`, `role`), what (`scope`), for whom
    (`iss`, `aud`) and until when (`iat`, `exp`), with a unique `jti` for later revocation."""

    def __init__(self, key: SigningKey, *, issuer: str, audience: str, ttl_seconds: int) -> None:
        self._key = key
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl_seconds

    def claims(self, user: User, now: dt.datetime) -> dict[str, Any]:
        """The claims of an access token for `user` issued at `now`: its role's scopes."""
        return self.subject_claims(user.id, user.tenant_id, scopes_for_role(user.role), user.role.value, now)

    def subject_claims(
        self, subject: str, tenant_id: str, scopes: tuple[str, ...], role: str, now: dt.datetime
    ) -> dict[str, Any]:
        """The claims of an access token for any subject (user or service account)."""
        issued_at = int(now.timestamp())
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": subject,
            "tid": tenant_id,
            "scope": " ".join(scopes),
            "iat": issued_at,
            "exp": issued_at + self._ttl,
            "jti": uuid.uuid4().hex,
        }
        if role:
            claims["role"] = role
        return claims

    def issue(self, user: User, now: dt.datetime) -> AccessToken:
        """A signed access token for `user`."""
        return AccessToken(token=self._key.sign(self.claims(user, now)), expires_in=self._ttl)

    def issue_for(self, subject: str, tenant_id: str, scopes: tuple[str, ...], now: dt.datetime) -> AccessToken:
        """A signed access token for a non-user subject (a service account)."""
        claims = self.subject_claims(subject, tenant_id, scopes, "", now)
        return AccessToken(token=self._key.sign(claims), expires_in=self._ttl)

    def jwks(self) -> list[dict[str, str]]:
        """The public keys that verify the tokens this issuer signs, newest first."""
        return [dict(self._key.public_jwk)]
