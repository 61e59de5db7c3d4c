"""ORM tables of auth_svc: tenants and their users."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from auth_svc.domain.models import Role
from flowforge_common.orm import UTCDateTime, make_metadata

# Wide enough for `<prefix>_<26 chars>` with room for longer prefixes.
ID_LENGTH = 40


class Base(DeclarativeBase):
    """Declarative base of auth_svc's tables."""

    metadata = make_metadata()


metadata = Base.metadata


class TenantRow(Base):
    """An organisation; the root every other tenant-owned row points at."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class UserRow(Base):
    """A person who signs in. `email` is unique across every tenant because it names the
    account at login, before any tenant is known; it is stored lower-cased so that the unique
    constraint is case-insensitive on every backend."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(f"role IN ({', '.join(repr(role.value) for role in Role)})", name="role"),
        CheckConstraint("email = lower(email)", name="email_lower_case"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    display_name: Mapped[str] = mapped_column(String(100), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Bumped on every change of the user; its etag is derived from it.
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
