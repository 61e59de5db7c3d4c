"""Service identity: FlowForge's own services calling each other on a tenant's behalf.

A worker resolving an agent's credentials has no user token to forward, so services present a
shared internal secret (`FLOWFORGE_INTERNAL_TOKEN`) plus the tenant they act for. Such a
caller holds every public scope of that tenant and `internal`, the scope of RPCs that must
never be reachable from outside (decrypted agent credentials); users, API keys and service
accounts never hold `internal`, not even admins.
"""

from __future__ import annotations

import base64
import hmac
import logging
from collections.abc import Mapping

from flowforge_common.auth import ALL_SCOPES, INTERNAL_SCOPE, Principal
from flowforge_common.errors import UnauthenticatedError
from flowforge_common.secrets import development_key
from flowforge_common.settings import CommonSettings

logger = logging.getLogger(__name__)

SERVICE_TOKEN_HEADER = "x-flowforge-service-token"
TENANT_HEADER = "x-flowforge-tenant"
SERVICE_NAME_HEADER = "x-flowforge-service"
DEV_TOKEN_FILE = "internal_token.key"
SERVICE_SCOPES = frozenset({*ALL_SCOPES, INTERNAL_SCOPE})


class ServiceCredential:
    """The shared internal secret: presented by callers, checked (in constant time) by servers."""

    def __init__(self, secret: str, *, service_name: str) -> None:
        if len(secret) < 32:
            raise ValueError("the internal token must be at least 32 characters")
        self._secret = secret.encode()
        self._service_name = service_name

    @classmethod
    def from_settings(cls, settings: CommonSettings, *, service_name: str) -> ServiceCredential:
        """`settings.internal_token`, or in embedded mode a token generated once under the data
        directory and shared by the processes that use it."""
        if settings.internal_token is not None:
            return cls(settings.internal_token.get_secret_value(), service_name=service_name)
        path = settings.data_dir / DEV_TOKEN_FILE
        logger.warning("FLOWFORGE_INTERNAL_TOKEN is not set; using the development token in %s", path)
        secret = base64.urlsafe_b64encode(development_key(path)).decode()
        return cls(secret, service_name=service_name)

    def metadata(self, tenant_id: str) -> list[tuple[str, str]]:
        """gRPC metadata of a call made for `tenant_id`."""
        return [
            (SERVICE_TOKEN_HEADER, self._secret.decode()),
            (TENANT_HEADER, tenant_id),
            (SERVICE_NAME_HEADER, self._service_name),
        ]

    def principal(self, metadata: Mapping[str, str]) -> Principal | None:
        """The service principal a call's metadata proves; None when it presents no service
        token; UnauthenticatedError for a wrong token or a missing tenant."""
        presented = metadata.get(SERVICE_TOKEN_HEADER)
        if presented is None:
            return None
        if not hmac.compare_digest(presented.encode(), self._secret):
            raise UnauthenticatedError("the service token is not valid")
        tenant_id = metadata.get(TENANT_HEADER, "")
        if not tenant_id:
            raise UnauthenticatedError(f"a service call must name its tenant in {TENANT_HEADER}")
        caller = metadata.get(SERVICE_NAME_HEADER) or "unknown"
        return Principal(tenant_id=tenant_id, subject=f"service:{caller}", scopes=SERVICE_SCOPES, role="service")
