"""Use cases of auth_svc: signup, login, who-am-I and the key set. Each owns its transaction."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from auth_svc.db import repository
from auth_svc.domain.models import AccessToken, Caller, NewAccount, Role, Tenant, User
from auth_svc.domain.passwords import Passwords
from auth_svc.domain.tokens import TokenIssuer
from auth_svc.domain.validation import MAX_PASSWORD_LENGTH, normalise_email, validate_signup
from flowforge_common.auth import Principal
from flowforge_common.errors import PermissionDeniedError, UnauthenticatedError
from flowforge_common.ids import new_id
from flowforge_common.orm import utcnow

# One message for every failed login, so that it never tells which emails have accounts.
INVALID_CREDENTIALS = "invalid email or password"


class AuthService:
    """Identity use cases over storage, password hashing and token signing."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        passwords: Passwords,
        tokens: TokenIssuer,
        *,
        allow_signup: bool,
    ) -> None:
        self._sessions = sessions
        self._passwords = passwords
        self._tokens = tokens
        self._allow_signup = allow_signup

    async def signup(self, email: str, password: str, tenant_name: str, display_name: str = "") -> NewAccount:
        """Creates a tenant and its owner in one transaction.

        PermissionDeniedError when signup is disabled, ValidationError naming every bad field,
        AlreadyExistsError when the email has an account.
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
        return NewAccount(user=user, tenant=tenant)

    async def login(self, email: str, password: str) -> AccessToken:
        """An access token for the user with this email and password.

        Unknown email, wrong password and disabled user all raise the same UnauthenticatedError,
        after the same amount of hashing work.
        """
        if len(password) > MAX_PASSWORD_LENGTH:
            # No account can have such a password; refusing before hashing keeps huge inputs cheap.
            raise UnauthenticatedError(INVALID_CREDENTIALS)
        async with self._sessions() as session:
            user = await repository.find_user_by_email(session, normalise_email(email))
        if user is None:
            await self._passwords.burn_verification(password)
            raise UnauthenticatedError(INVALID_CREDENTIALS)
        if not await self._passwords.verify(user.password_hash, password) or not user.active:
            raise UnauthenticatedError(INVALID_CREDENTIALS)
        if self._passwords.needs_rehash(user.password_hash):
            await self._upgrade_password_hash(user, password)
        return self._tokens.issue(user, utcnow())

    async def _upgrade_password_hash(self, user: User, password: str) -> None:
        """Re-hashes with the current parameters: the only moment the plain password is known."""
        password_hash = await self._passwords.hash(password)
        async with self._sessions.begin() as session:
            await repository.replace_password_hash(
                session, tenant_id=user.tenant_id, user_id=user.id, password_hash=password_hash
            )

    async def whoami(self, principal: Principal) -> Caller:
        """The caller's user and tenant as stored now, with the scopes its credential carries.

        Everything is read within the principal's tenant, so a token can never show another
        tenant's data. UnauthenticatedError when the account is gone or disabled: the token
        outlived it.
        """
        async with self._sessions() as session:
            user = await repository.get_user(session, tenant_id=principal.tenant_id, user_id=principal.subject)
            tenant = await repository.get_tenant(session, principal.tenant_id)
        if user is None or tenant is None or not user.active:
            raise UnauthenticatedError("the account of this token no longer exists or is disabled")
        return Caller(user=user, tenant=tenant, scopes=tuple(sorted(principal.scopes)))

    def jwks(self) -> list[dict[str, str]]:
        """The public keys that verify access tokens."""
        return self._tokens.jwks()
