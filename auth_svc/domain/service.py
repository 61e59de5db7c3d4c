"""Use cases of auth_svc's sign-in: signup, login, refresh-token rotation, logout, the
client_credentials grant, who-am-I and the key set. Each owns its transaction."""

from __future__ import annotations

import datetime as dt
from enum import Enum

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from auth_svc.db import repository
from auth_svc.domain import audit
from auth_svc.domain.errors import TenantRequiredError
from auth_svc.domain.models import (
    AccessToken,
    Caller,
    NewAccount,
    RefreshToken,
    Role,
    Tenant,
    TokenPair,
    User,
)
from auth_svc.domain.passwords import Passwords
from auth_svc.domain.secrets import (
    CLIENT_ID_PREFIX,
    CLIENT_SECRET_PREFIX,
    REFRESH_TOKEN_PREFIX,
    hashes_match,
    new_secret,
    secret_hash,
    well_formed,
    well_formed_id,
)
from auth_svc.domain.tokens import TokenIssuer
from auth_svc.domain.validation import MAX_PASSWORD_LENGTH, email_problem, normalise_email, validate_signup
from flowforge_common.auth import ALL_SCOPES, Principal
from flowforge_common.errors import BadRequestError, FieldViolation, PermissionDeniedError, UnauthenticatedError
from flowforge_common.ids import new_id
from flowforge_common.orm import utcnow

# One message for every failed login, so that it never tells which emails have accounts.
INVALID_CREDENTIALS = "invalid email or password"
INVALID_REFRESH_TOKEN = "the refresh token is not valid"
INVALID_CLIENT = "invalid client credentials"
CLIENT_CREDENTIALS = "client_credentials"
DEFAULT_REFRESH_TTL = dt.timedelta(days=30)
# Accounts of one email that a login without `tenant_id` checks the password against, oldest
# first. Signup does not prove the email, so anyone may open tenants under someone else's
# address; the bound keeps that from making each of their logins cost hundreds of hashes (an
# account beyond it signs in with its `tenant_id`).
MAX_LOGIN_CANDIDATES = 20


class _Refresh(Enum):
    INVALID = "invalid"
    REUSED = "reused"


class AuthService:
    """Identity use cases over storage, password hashing and token signing."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        passwords: Passwords,
        tokens: TokenIssuer,
        *,
        allow_signup: bool,
        refresh_ttl: dt.timedelta = DEFAULT_REFRESH_TTL,
    ) -> None:
        self._sessions = sessions
        self._passwords = passwords
        self._tokens = tokens
        self._allow_signup = allow_signup
        self._refresh_ttl = refresh_ttl
        # Compared against when a client id is unknown, so that a miss costs what a hit does.
        self._dummy_secret_hash = secret_hash(new_secret(CLIENT_SECRET_PREFIX))

    async def signup(self, email: str, password: str, tenant_name: str, display_name: str = "") -> NewAccount:
        """Creates a tenant and its owner in one transaction.

        Accounts are per tenant, so any valid email gets a new tenant and a new account: the
        answer never tells whether the email is registered elsewhere. PermissionDeniedError
        when signup is disabled, ValidationError naming every bad field.
        """
        if not self._allow_signup:
            raise PermissionDeniedError("signup is disabled on this FlowForge")
        form = validate_signup(email, password, tenant_name, display_name)
        # Hashed before the transaction opens so that no connection waits on the hash.
        password_hash = await self._passwords.hash(form.password)
        now = utcnow()
        tenant = Tenant(id=new_id("ten"), name=form.tenant_name, created_at=now)
        user = User(
            id=new_id("usr"),
            tenant_id=tenant.id,
            email=form.email,
            password_hash=password_hash,
            role=Role.OWNER,
            display_name=form.display_name,
            active=True,
            version=1,
            created_at=now,
            updated_at=now,
        )
        async with self._sessions.begin() as session:
            repository.add_tenant(session, tenant)
            await repository.add_user(session, user)
            audit.record(
                session,
                tenant_id=tenant.id,
                actor=user.id,
                action="tenant.created",
                entity_type="tenant",
                entity_id=tenant.id,
                change={"name": tenant.name, "owner": user.id},
                at=now,
            )
        return NewAccount(user=user, tenant=tenant)

    async def login(self, email: str, password: str, tenant_id: str = "") -> TokenPair:
        """An access token and a new refresh-token family for the account with this email and
        password, in `tenant_id` when given.

        The password is checked against every account of the email (in that tenant only when
        `tenant_id` is given), and against a dummy hash when there is none, so that an unknown
        email costs what a known one does. Unknown email, wrong password and disabled account
        all raise the same UnauthenticatedError; failures against real accounts are audited in
        their tenants. When the password opens active accounts in several tenants,
        TenantRequiredError: only a caller who knows the password learns that.
        """
        if len(password) > MAX_PASSWORD_LENGTH:
            # No account can have such a password; refusing before hashing keeps huge inputs cheap.
            raise UnauthenticatedError(INVALID_CREDENTIALS)
        email = normalise_email(email)
        tenant_id = tenant_id.strip()
        candidates: list[User] = []
        if email_problem(email) is None and (not tenant_id or well_formed_id(tenant_id)):
            async with self._sessions() as session:
                candidates = await repository.find_users_by_email(
                    session, email, tenant_id=tenant_id or None, limit=MAX_LOGIN_CANDIDATES
                )
        if not candidates:
            await self._passwords.burn_verification(password)
            raise UnauthenticatedError(INVALID_CREDENTIALS)
        verified = {user.id for user in candidates if await self._passwords.verify(user.password_hash, password)}
        matches = [user for user in candidates if user.id in verified and user.active]
        if not matches:
            async with self._sessions.begin() as session:
                for candidate in candidates:
                    audit.record(
                        session,
                        tenant_id=candidate.tenant_id,
                        actor=candidate.id,
                        action="auth.login_failed",
                        entity_type="user",
                        entity_id=candidate.id,
                        change={"reason": "disabled" if candidate.id in verified else "bad_password"},
                    )
            raise UnauthenticatedError(INVALID_CREDENTIALS)
        if len(matches) > 1:
            raise TenantRequiredError(
                "this email and password sign in to several tenants: name one with tenant_id",
                [FieldViolation("tenant_id", "is required: this email and password sign in to several tenants")],
            )
        user = matches[0]
        if self._passwords.needs_rehash(user.password_hash):
            await self._upgrade_password_hash(user, password)
        now = utcnow()
        async with self._sessions.begin() as session:
            refresh_token = self._new_refresh_token(session, user, family_id=new_id("fam"), now=now)
            audit.record(
                session,
                tenant_id=user.tenant_id,
                actor=user.id,
                action="auth.login_succeeded",
                entity_type="user",
                entity_id=user.id,
                at=now,
            )
        return TokenPair(self._tokens.issue(user, now), refresh_token)

    def _new_refresh_token(self, session: AsyncSession, user: User, *, family_id: str, now: dt.datetime) -> str:
        secret = new_secret(REFRESH_TOKEN_PREFIX)
        stored = RefreshToken(
            id=new_id("rft"),
            tenant_id=user.tenant_id,
            user_id=user.id,
            family_id=family_id,
            created_at=now,
            expires_at=now + self._refresh_ttl,
        )
        repository.add_refresh_token(session, stored, secret_hash(secret))
        return secret

    async def refresh(self, refresh_token: str) -> TokenPair:
        """A new token pair for a fresh refresh token, which becomes used.

        RFC 9700 reuse detection: presenting a token that was already used (a stolen copy, or
        the legitimate client after the thief) revokes its whole family, so both parties must
        sign in again. Unknown, expired and revoked tokens are the same 401.
        """
        if not well_formed(refresh_token, REFRESH_TOKEN_PREFIX):
            raise UnauthenticatedError(INVALID_REFRESH_TOKEN)
        now = utcnow()
        outcome: TokenPair | _Refresh
        # The family revocation must commit, so the refusal is raised after the transaction.
        async with self._sessions.begin() as session:
            stored = await repository.find_refresh_token(session, secret_hash(refresh_token))
            if stored is None or stored.revoked_at is not None or stored.expires_at <= now:
                outcome = _Refresh.INVALID
            elif stored.used_at is not None or not await repository.mark_refresh_token_used(session, stored.id, now):
                await repository.revoke_refresh_family(
                    session, tenant_id=stored.tenant_id, family_id=stored.family_id, now=now
                )
                audit.record(
                    session,
                    tenant_id=stored.tenant_id,
                    actor=stored.user_id,
                    action="auth.refresh_token_reused",
                    entity_type="user",
                    entity_id=stored.user_id,
                    change={"family": stored.family_id},
                    at=now,
                )
                outcome = _Refresh.REUSED
            else:
                user = await repository.get_user(session, tenant_id=stored.tenant_id, user_id=stored.user_id)
                if user is None or not user.active:
                    await repository.revoke_refresh_family(
                        session, tenant_id=stored.tenant_id, family_id=stored.family_id, now=now
                    )
                    outcome = _Refresh.INVALID
                else:
                    next_token = self._new_refresh_token(session, user, family_id=stored.family_id, now=now)
                    outcome = TokenPair(self._tokens.issue(user, now), next_token)
        if isinstance(outcome, _Refresh):
            raise UnauthenticatedError(INVALID_REFRESH_TOKEN, metadata={"cause": outcome.value})
        return outcome

    async def logout(self, refresh_token: str) -> None:
        """Revokes the family of a refresh token. An unknown token is not an error (RFC 7009):
        the answer must not tell a guesser whether a token exists."""
        if not well_formed(refresh_token, REFRESH_TOKEN_PREFIX):
            return
        now = utcnow()
        async with self._sessions.begin() as session:
            stored = await repository.find_refresh_token(session, secret_hash(refresh_token))
            if stored is not None and stored.revoked_at is None:
                await repository.revoke_refresh_family(
                    session, tenant_id=stored.tenant_id, family_id=stored.family_id, now=now
                )
                audit.record(
                    session,
                    tenant_id=stored.tenant_id,
                    actor=stored.user_id,
                    action="auth.logout",
                    entity_type="user",
                    entity_id=stored.user_id,
                    at=now,
                )

    async def issue_client_token(
        self, grant_type: str, client_id: str, client_secret: str, scope: str
    ) -> tuple[AccessToken, tuple[str, ...]]:
        """OAuth 2.0 client_credentials: an access token for a service account, narrowed to
        `scope` when given (which may not exceed the account's scopes)."""
        if grant_type != CLIENT_CREDENTIALS:
            raise BadRequestError(
                "unsupported_grant_type: only client_credentials is supported",
                [FieldViolation("grant_type", "must be client_credentials")],
                metadata={"oauth_error": "unsupported_grant_type"},
            )
        found = None
        if client_id.startswith(CLIENT_ID_PREFIX) and well_formed_id(client_id):
            async with self._sessions() as session:
                found = await repository.find_service_account(session, client_id)
        stored_hash = found[1] if found is not None else self._dummy_secret_hash
        secret_ok = hashes_match(stored_hash, secret_hash(client_secret))
        if found is None or not secret_ok or not found[0].active:
            raise UnauthenticatedError(INVALID_CLIENT, metadata={"oauth_error": "invalid_client"})
        account = found[0]
        requested = tuple(dict.fromkeys(scope.split()))
        if any(item not in account.scopes for item in requested):
            raise BadRequestError(
                "invalid_scope: the account does not hold every requested scope",
                [FieldViolation("scope", "exceeds the service account's scopes")],
                metadata={"oauth_error": "invalid_scope"},
            )
        granted = tuple(item for item in ALL_SCOPES if item in (requested or account.scopes))
        return self._tokens.issue_for(account.id, account.tenant_id, granted, utcnow()), granted

    async def _upgrade_password_hash(self, user: User, password: str) -> None:
        """Re-hashes with the current parameters: the only moment the plain password is known."""
        password_hash = await self._passwords.hash(password)
        async with self._sessions.begin() as session:
            await repository.replace_password_hash(
                session, tenant_id=user.tenant_id, user_id=user.id, password_hash=password_hash
            )

    async def whoami(self, principal: Principal) -> Caller:
        """The caller's user and tenant as stored now, with the scopes its credential carries.
        API keys and service accounts have no user: only the tenant and scopes are reported.

        Everything is read within the principal's tenant, so a token can never show another
        tenant's data. UnauthenticatedError when the account is gone or disabled: the token
        outlived it.
        """
        is_user = principal.subject.startswith("usr_")
        async with self._sessions() as session:
            user = (
                await repository.get_user(session, tenant_id=principal.tenant_id, user_id=principal.subject)
                if is_user
                else None
            )
            tenant = await repository.get_tenant(session, principal.tenant_id)
        if tenant is None or (is_user and (user is None or not user.active)):
            raise UnauthenticatedError("the account of this token no longer exists or is disabled")
        return Caller(user=user, tenant=tenant, scopes=tuple(sorted(principal.scopes)))

    def jwks(self) -> list[dict[str, str]]:
        """The public keys that verify access tokens."""
        return self._tokens.jwks()
