"""AuthService servicer: proto <-> domain only."""

from __future__ import annotations

from typing import Any

from auth_svc.api.audit_sources import forwarded_credentials
from auth_svc.api.mappers import (
    api_key_to_proto,
    audit_entry_to_proto,
    jwk_to_proto,
    role_from_proto,
    role_to_proto,
    service_account_to_proto,
    tenant_to_proto,
    user_to_proto,
)
from auth_svc.domain.api_keys import ApiKeyService
from auth_svc.domain.audit import AuditLog
from auth_svc.domain.members import MemberService
from auth_svc.domain.models import Role, TokenPair
from auth_svc.domain.service import AuthService
from flowforge.auth.v1 import auth_service_pb2 as pb
from flowforge.auth.v1 import auth_service_pb2_grpc
from flowforge_common.auth import current_principal
from flowforge_common.errors import FieldViolation, ValidationError

TOKEN_TYPE = "Bearer"


class AuthServiceServicer(auth_service_pb2_grpc.AuthServiceServicer):
    """Proto <-> domain translation for AuthService."""

    def __init__(
        self, service: AuthService, api_keys: ApiKeyService, members: MemberService, audit_log: AuditLog
    ) -> None:
        self._service = service
        self._api_keys = api_keys
        self._members = members
        self._audit_log = audit_log

    async def Signup(self, request: pb.SignupRequest, _context: Any) -> pb.SignupResponse:
        """Creates a tenant and its owner."""
        account = await self._service.signup(request.email, request.password, request.tenant_name, request.display_name)
        return pb.SignupResponse(user=user_to_proto(account.user), tenant=tenant_to_proto(account.tenant))

    async def Login(self, request: pb.LoginRequest, _context: Any) -> pb.LoginResponse:
        """Exchanges an email and password (and a tenant id, when the email has accounts in
        several tenants) for an access token and a refresh token."""
        pair = await self._service.login(request.email, request.password, request.tenant_id)
        return pb.LoginResponse(**_pair_fields(pair))

    async def Refresh(self, request: pb.RefreshRequest, _context: Any) -> pb.RefreshResponse:
        """Rotates a refresh token into a new pair."""
        pair = await self._service.refresh(request.refresh_token)
        return pb.RefreshResponse(**_pair_fields(pair))

    async def Logout(self, request: pb.LogoutRequest, _context: Any) -> pb.LogoutResponse:
        """Revokes the refresh token's family."""
        await self._service.logout(request.refresh_token)
        return pb.LogoutResponse()

    async def IssueToken(self, request: pb.IssueTokenRequest, _context: Any) -> pb.IssueTokenResponse:
        """OAuth 2.0 client_credentials grant."""
        token, scopes = await self._service.issue_client_token(
            request.grant_type, request.client_id, request.client_secret, request.scope
        )
        return pb.IssueTokenResponse(
            access_token=token.token, token_type=TOKEN_TYPE, expires_in=token.expires_in, scope=" ".join(scopes)
        )

    async def GetMe(self, _request: pb.GetMeRequest, _context: Any) -> pb.GetMeResponse:
        """The caller's user, tenant, role and scopes."""
        principal = current_principal()
        caller = await self._service.whoami(principal)
        response = pb.GetMeResponse(tenant=tenant_to_proto(caller.tenant), scopes=caller.scopes)
        if caller.user is not None:
            response.user.CopyFrom(user_to_proto(caller.user))
            response.role = role_to_proto(caller.user.role)
        return response

    async def GetJwks(self, _request: pb.GetJwksRequest, _context: Any) -> pb.GetJwksResponse:
        """The public keys that verify access tokens."""
        return pb.GetJwksResponse(keys=[jwk_to_proto(jwk) for jwk in self._service.jwks()])

    async def CreateApiKey(self, request: pb.CreateApiKeyRequest, _context: Any) -> pb.CreateApiKeyResponse:
        """A new API key, its secret shown this once."""
        key = await self._api_keys.create(
            current_principal(), request.name, list(request.scopes), request.expires_in_days
        )
        return pb.CreateApiKeyResponse(api_key=api_key_to_proto(key))

    async def ListApiKeys(self, request: pb.ListApiKeysRequest, _context: Any) -> pb.ListApiKeysResponse:
        """The keys the caller may see, by prefix."""
        page = await self._api_keys.list(current_principal(), limit=request.limit, page_token=request.page_token)
        return pb.ListApiKeysResponse(
            items=[api_key_to_proto(key) for key in page.items], next_page_token=page.next_page_token
        )

    async def GetApiKey(self, request: pb.GetApiKeyRequest, _context: Any) -> pb.GetApiKeyResponse:
        """One key, without its secret."""
        return pb.GetApiKeyResponse(api_key=api_key_to_proto(await self._api_keys.get(current_principal(), request.id)))

    async def DeleteApiKey(self, request: pb.DeleteApiKeyRequest, _context: Any) -> pb.DeleteApiKeyResponse:
        """Revokes a key."""
        await self._api_keys.revoke(current_principal(), request.id)
        return pb.DeleteApiKeyResponse()

    async def VerifyApiKey(self, request: pb.VerifyApiKeyRequest, _context: Any) -> pb.VerifyApiKeyResponse:
        """The principal of an API key (for the edge and the services)."""
        principal = await self._api_keys.verify(request.key)
        return pb.VerifyApiKeyResponse(
            tenant_id=principal.tenant_id, subject=principal.subject, scopes=sorted(principal.scopes)
        )

    async def CreateServiceAccount(
        self, request: pb.CreateServiceAccountRequest, _context: Any
    ) -> pb.CreateServiceAccountResponse:
        """A new service account, its secret shown this once."""
        account = await self._members.create_service_account(current_principal(), request.name, list(request.scopes))
        return pb.CreateServiceAccountResponse(service_account=service_account_to_proto(account))

    async def CreateUser(self, request: pb.CreateUserRequest, _context: Any) -> pb.CreateUserResponse:
        """Adds a member."""
        user = await self._members.create_user(
            current_principal(), request.email, request.password, role_from_proto(request.role), request.display_name
        )
        return pb.CreateUserResponse(user=user_to_proto(user))

    async def ListUsers(self, request: pb.ListUsersRequest, _context: Any) -> pb.ListUsersResponse:
        """The tenant's members."""
        page = await self._members.list_users(current_principal(), limit=request.limit, page_token=request.page_token)
        return pb.ListUsersResponse(items=[user_to_proto(u) for u in page.items], next_page_token=page.next_page_token)

    async def GetUser(self, request: pb.GetUserRequest, _context: Any) -> pb.GetUserResponse:
        """One member."""
        return pb.GetUserResponse(user=user_to_proto(await self._members.get_user(current_principal(), request.id)))

    async def UpdateUser(self, request: pb.UpdateUserRequest, _context: Any) -> pb.UpdateUserResponse:
        """Changes a member's role, name or active flag (only the fields present)."""
        role: Role | None = None
        if request.HasField("role"):
            role = role_from_proto(request.role)
            if role is None:
                raise ValidationError("the user has invalid fields", [FieldViolation("role", "is not a role")])
        user = await self._members.update_user(
            current_principal(),
            request.id,
            role=role,
            display_name=request.display_name if request.HasField("display_name") else None,
            active=request.active if request.HasField("active") else None,
        )
        return pb.UpdateUserResponse(user=user_to_proto(user))

    async def DeleteUser(self, request: pb.DeleteUserRequest, _context: Any) -> pb.DeleteUserResponse:
        """Removes a member."""
        await self._members.delete_user(current_principal(), request.id)
        return pb.DeleteUserResponse()

    async def ListAuditLogs(self, request: pb.ListAuditLogsRequest, context: Any) -> pb.ListAuditLogsResponse:
        """The tenant's audit log (identity events and every audited service's), newest first."""
        page = await self._audit_log.list(
            current_principal(),
            limit=request.limit,
            page_token=request.page_token,
            entity_type=request.entity_type,
            entity_id=request.entity_id,
            actor=request.actor,
            credentials=forwarded_credentials(context.invocation_metadata()),
        )
        return pb.ListAuditLogsResponse(
            items=[audit_entry_to_proto(entry) for entry in page.items], next_page_token=page.next_page_token
        )


def _pair_fields(pair: TokenPair) -> dict[str, Any]:
    return {
        "access_token": pair.access.token,
        "token_type": TOKEN_TYPE,
        "expires_in": pair.access.expires_in,
        "refresh_token": pair.refresh_token,
    }

