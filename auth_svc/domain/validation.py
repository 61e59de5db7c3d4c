"""Checks of what users type at signup; every problem is reported at once, by field."""

from __future__ import annotations

import re

from auth_svc.domain.models import SignupForm
from flowforge_common.errors import BadRequestError, FieldViolation, ValidationError

MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit minus the angle brackets
MAX_LOCAL_PART_LENGTH = 64
MIN_PASSWORD_LENGTH = 12
# Argon2 accepts any length, but hashing megabytes on every login attempt would be a cheap DoS.
MAX_PASSWORD_LENGTH = 1024
MAX_TENANT_NAME_LENGTH = 100
MAX_DISPLAY_NAME_LENGTH = 100

# A deliberately plain subset of RFC 5321: dot-atom local parts and DNS host names. Quoted local
# parts and address literals are legal but are typos far more often than real addresses.
_LOCAL_PART = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


NUL_PROBLEM = "must not contain the NUL character (U+0000)"


def plain_text(text: str) -> bool:
    """False for text no backend can store: PostgreSQL keeps no NUL in text columns."""
    return "\x00" not in text


def normalise_email(email: str) -> str:
    """The form emails are stored and looked up in: trimmed and lower-cased."""
    return email.strip().lower()


def email_problem(email: str) -> str | None:
    """Why a normalised email is not acceptable, or None when it is."""
    if not email:
        return "is required"
    if len(email) > MAX_EMAIL_LENGTH:
        return f"must be at most {MAX_EMAIL_LENGTH} characters"
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain:
        return "must look like name@example.com"
    if len(local) > MAX_LOCAL_PART_LENGTH or not _LOCAL_PART.fullmatch(local):
        return "has an invalid part before the @"
    labels = domain.split(".")
    # A top-level domain is never all digits, which also keeps out bare IP addresses.
    if len(labels) < 2 or labels[-1].isdigit() or not all(_DOMAIN_LABEL.fullmatch(x) for x in labels):
        return "has an invalid domain"
    return None


def password_problem(password: str) -> str | None:
    """Why a new password is not acceptable, or None when it is."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"must be at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"must be at most {MAX_PASSWORD_LENGTH} characters"
    return None


def name_problem(name: str, *, required: bool, max_length: int) -> str | None:
    """Why a (trimmed) name is not acceptable, or None when it is."""
    return _name_problem(name, required=required, max_length=max_length)


def _name_problem(name: str, *, required: bool, max_length: int) -> str | None:
    if required and not name:
        return "is required"
    if not plain_text(name):
        return NUL_PROBLEM
    if len(name) > max_length:
        return f"must be at most {max_length} characters"
    return None


def validate_signup(email: str, password: str, tenant_name: str, display_name: str = "") -> SignupForm:
    """The normalised signup form; ValidationError naming every bad field otherwise."""
    form = SignupForm(
        email=normalise_email(email),
        password=password,
        tenant_name=tenant_name.strip(),
        display_name=display_name.strip(),
    )
    problems = {
        "email": email_problem(form.email),
        "password": password_problem(form.password),
        "tenant_name": _name_problem(form.tenant_name, required=True, max_length=MAX_TENANT_NAME_LENGTH),
        "display_name": _name_problem(form.display_name, required=False, max_length=MAX_DISPLAY_NAME_LENGTH),
    }
    violations = [FieldViolation(path, message) for path, message in problems.items() if message]
    if violations:
        raise ValidationError("the signup form has invalid fields", violations)
    return form


def cursor_id(position: dict[str, object] | None) -> str | None:
    """The `after` id of a decoded page token; BadRequestError for one this API did not make."""
    value = (position or {}).get("after")
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not value.replace("_", "").isalnum() or len(value) > 64:
        raise BadRequestError("page_token is not valid", [FieldViolation("page_token", "not a token from this API")])
    return value
