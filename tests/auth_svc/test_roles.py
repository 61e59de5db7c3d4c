"""Roles grant the scopes API.md promises, and nothing more."""

from __future__ import annotations

from auth_svc.domain.models import Role, scopes_for_role
from flowforge_common.auth import ALL_SCOPES

READS = {"workflows:read", "runs:read", "agents:read"}


def test_viewer_reads_everything_and_changes_nothing() -> None:
    assert set(scopes_for_role(Role.VIEWER)) == READS


def test_operator_adds_running_workflows() -> None:
    assert set(scopes_for_role(Role.OPERATOR)) == READS | {"runs:execute"}


def test_editor_adds_every_write_scope_but_not_admin() -> None:
    assert set(scopes_for_role(Role.EDITOR)) == READS | {"runs:execute", "workflows:write", "agents:write"}


def test_admin_and_owner_hold_every_scope() -> None:
    assert scopes_for_role(Role.ADMIN) == ALL_SCOPES
    assert scopes_for_role(Role.OWNER) == ALL_SCOPES


def test_scopes_follow_the_canonical_order() -> None:
    for role in Role:
        scopes = scopes_for_role(role)
        assert list(scopes) == sorted(scopes, key=ALL_SCOPES.index)
