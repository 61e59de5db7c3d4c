"""Signup validation: normalisation, limits, and every problem reported at once."""

from __future__ import annotations

import pytest

from auth_svc.domain.validation import email_problem, password_problem, validate_signup
from flowforge_common.errors import ValidationError

GOOD_PASSWORD = "correct-horse-battery"


def test_a_valid_form_is_normalised() -> None:
    form = validate_signup("  Ada.Lovelace+ff@Example.COM ", GOOD_PASSWORD, "  Analytical Engines ", " Ada ")
    assert form.email == "ada.lovelace+ff@example.com"
    assert form.tenant_name == "Analytical Engines"
    assert form.display_name == "Ada"
    assert form.password == GOOD_PASSWORD


def test_every_bad_field_is_reported_at_once() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_signup("not-an-email", "short", "   ", "x" * 101)
    assert [v.field for v in caught.value.violations] == ["email", "password", "tenant_name", "display_name"]
    assert all(v.message for v in caught.value.violations)


@pytest.mark.parametrize(
    "email",
    ["a@example.com", "first.last@sub.example.co.uk", "o'brien+tag@example-mail.io", f"{'a' * 64}@example.com"],
)
def test_acceptable_emails(email: str) -> None:
    assert email_problem(email) is None


@pytest.mark.parametrize(
    "email",
    [
        "",
        "plain",
        "@example.com",
        "ada@",
        "ada@localhost",
        "ada@127.0.0.1",
        "ada@@example.com",
        "ada lovelace@example.com",
        ".ada@example.com",
        "ada..l@example.com",
        "ada@-example.com",
        "ada@example..com",
        "ada@exa_mple.com",
        '"quoted"@example.com',
        "adá@example.com",
        f"{'a' * 65}@example.com",
        f"a@{'b' * 63}.{'c' * 63}.{'d' * 63}.{'e' * 57}.com",
    ],
)
def test_unacceptable_emails(email: str) -> None:
    assert email_problem(email) is not None


def test_email_length_is_capped_at_254() -> None:
    domain = f"{'b' * 63}.{'c' * 63}.{'d' * 63}.com"
    local = "a" * (254 - len(domain) - 1)
    assert len(f"{local}@{domain}") == 254
    assert email_problem(f"{local}@{domain}") is None
    assert email_problem(f"{local}a@{domain}") is not None


@pytest.mark.parametrize(("length", "ok"), [(11, False), (12, True), (1024, True), (1025, False)])
def test_password_length_bounds(length: int, ok: bool) -> None:
    assert (password_problem("p" * length) is None) is ok


@pytest.mark.parametrize(
    ("name", "ok"), [("", False), (" ", False), ("a", True), ("a" * 100, True), ("a" * 101, False)]
)
def test_tenant_name_bounds(name: str, ok: bool) -> None:
    if ok:
        assert validate_signup("a@example.com", GOOD_PASSWORD, name).tenant_name == name
    else:
        with pytest.raises(ValidationError) as caught:
            validate_signup("a@example.com", GOOD_PASSWORD, name)
        assert [v.field for v in caught.value.violations] == ["tenant_name"]
