"""auth_svc's own domain errors (the shared hierarchy is in flowforge_common.errors)."""

from __future__ import annotations

from flowforge_common.errors import ConflictError


class TenantRequiredError(ConflictError):
    """The email and password sign in to accounts in several tenants: the caller, who proved
    the password, must name one with `tenant_id` (409)."""

    reason = "TENANT_REQUIRED"
