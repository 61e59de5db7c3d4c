"""Checks of requested scopes against what the caller may grant."""

from __future__ import annotations

from collections.abc import Iterable

from auth_svc.domain.models import Role, scopes_for_role
from flowforge_common.auth import ALL_SCOPES, Principal
from flowforge_common.errors import FieldViolation, PermissionDeniedError, ValidationError


def grantable_scopes(principal: Principal, requested: Iterable[str], *, field: str = "scopes") -> tuple[str, ...]:
    """The requested scopes in canonical order, or the caller's own when none are requested.

    ValidationError for an unknown scope; PermissionDeniedError for one the caller does not
    hold: a credential never carries more than the principal who made it.
    """
    wanted = list(dict.fromkeys(scope.strip() for scope in requested if scope.strip()))
    unknown = [scope for scope in wanted if scope not in ALL_SCOPES]
    if unknown:
        raise ValidationError(
            "unknown scopes", [FieldViolation(field, f"unknown scope {scope!r}") for scope in unknown]
        )
    held = [scope for scope in ALL_SCOPES if scope in principal.scopes]
    if not wanted:
        return tuple(held)
    beyond = [scope for scope in wanted if not principal.has_scope(scope)]
    if beyond:
        raise PermissionDeniedError(f"you cannot grant scopes you do not hold: {', '.join(beyond)}")
    return tuple(scope for scope in ALL_SCOPES if scope in wanted)


def clamp_to_role(scopes: Iterable[str], role: Role) -> tuple[str, ...]:
    """`scopes` limited to what `role` grants now (a demoted creator's keys shrink with it)."""
    allowed = set(scopes_for_role(role))
    return tuple(scope for scope in scopes if scope in allowed)
