"""AuthService servicer: proto <-> domain only. RPCs of later issues (refresh tokens, API keys,
service accounts, user management, audit log) are not overridden, so the generated base answers
them and the interceptor turns that into UNIMPLEMENTED."""

from __future__ import annotations

from typing import Any

from auth_svc.api.mappers import jwk_to_proto, role_to_proto, tenant_to_proto, user_to_proto
from auth_svc.domain.service import AuthService
from flowforge.auth.v1 import auth_service_pb2 as pb
from flowforge.auth.v1 import auth_service_pb2_grpc
from flowforge_common.auth import current_principal

TOKEN_TYPE = "Bearer"


class AuthServiceServicer(auth_service_pb2_grpc.AuthServiceServicer):
    """Proto <-> domain translation for AuthService."""

    def __init__(self, service: AuthService) -> None:
        self._service = service

    async def Signup(self, request: pb.SignupRequest, _context: Any) -> pb.SignupResponse:
        """Creates a tenant and its owner."""
        account = await self._service.signup(request.email, request.password, request.tenant_name, request.display_name)
        return pb.SignupResponse(user=user_to_proto(account.user), tenant=tenant_to_proto(account.tenant))

    async def Login(self, request: pb.LoginRequest, _context: Any) -> pb.LoginResponse:
        """Exchanges an email and password for an access token."""
        token = await self._service.login(request.email, request.password)
        # Refresh tokens arrive with token families in a later issue; until then the field is empty.
        return pb.LoginResponse(access_token=token.token, token_type=TOKEN_TYPE, expires_in=token.expires_in)

    async def GetMe(self, _request: pb.GetMeRequest, _context: Any) -> pb.GetMeResponse:
        """The caller's user, tenant, role and scopes."""
        caller = await self._service.whoami(current_principal())
        return pb.GetMeResponse(
            user=user_to_proto(caller.user),
            tenant=tenant_to_proto(caller.tenant),
            role=role_to_proto(caller.user.role),
            scopes=caller.scopes,
        )

    async def GetJwks(self, _request: pb.GetJwksRequest, _context: Any) -> pb.GetJwksResponse:
        """The public keys that verify access tokens."""
        return pb.GetJwksResponse(keys=[jwk_to_proto(jwk) for jwk in self._service.jwks()])
