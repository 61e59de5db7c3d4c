"""Service identity: the shared internal token, checked in constant time, never implied by admin."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from flowforge_common.auth import INTERNAL_SCOPE, Principal
from flowforge_common.errors import UnauthenticatedError
from flowforge_common.service_identity import SERVICE_TOKEN_HEADER, TENANT_HEADER, ServiceCredential
from flowforge_common.settings import CommonSettings

SECRET = "s" * 40


def test_a_caller_and_a_server_with_the_same_secret_agree() -> None:
    caller = ServiceCredential(SECRET, service_name="execution")
    server = ServiceCredential(SECRET, service_name="workflow")
    principal = server.principal(dict(caller.metadata("ten_a")))
    assert principal is not None
    assert (principal.tenant_id, principal.subject) == ("ten_a", "service:execution")
    assert principal.has_scope(INTERNAL_SCOPE) and principal.has_scope("agents:read")


def test_no_service_token_is_no_service_principal() -> None:
    assert ServiceCredential(SECRET, service_name="w").principal({"authorization": "Bearer x"}) is None


@pytest.mark.parametrize(
    "metadata",
    [
        {SERVICE_TOKEN_HEADER: "t" * 40, TENANT_HEADER: "ten_a"},  # wrong secret
        {SERVICE_TOKEN_HEADER: SECRET[:-1], TENANT_HEADER: "ten_a"},  # a prefix is not the secret
        {SERVICE_TOKEN_HEADER: SECRET},  # no tenant named
    ],
)
def test_wrong_or_incomplete_service_calls_are_refused(metadata: dict[str, str]) -> None:
    with pytest.raises(UnauthenticatedError):
        ServiceCredential(SECRET, service_name="w").principal(metadata)


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        ServiceCredential("short", service_name="w")


def test_admin_holds_every_public_scope_but_not_internal() -> None:
    admin = Principal(tenant_id="ten_a", subject="usr", scopes=frozenset({"admin"}))
    assert admin.has_scope("workflows:write") and admin.has_scope("runs:execute")
    assert not admin.has_scope(INTERNAL_SCOPE)


def test_embedded_mode_shares_one_generated_token_per_data_dir(tmp_path: Path) -> None:
    settings = CommonSettings(data_dir=tmp_path)
    first = ServiceCredential.from_settings(settings, service_name="execution")
    second = ServiceCredential.from_settings(settings, service_name="workflow")
    assert second.principal(dict(first.metadata("ten_a"))) is not None
    assert stat.S_IMODE((tmp_path / "internal_token.key").stat().st_mode) == 0o600
    other = ServiceCredential.from_settings(CommonSettings(data_dir=tmp_path / "other"), service_name="w")
    with pytest.raises(UnauthenticatedError):
        other.principal(dict(first.metadata("ten_a")))
