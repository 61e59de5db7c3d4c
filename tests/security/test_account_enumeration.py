"""OWASP API2 (broken authentication), account enumeration: accounts are per tenant, so signup
answers the same whether or not an email is registered; login tells an unknown email from a
wrong password in no way, and asks for a tenant only once the caller proved the password."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import ClientResponse

from tests.fixtures.stack import PASSWORD, Stack

OTHER_PASSWORD = "another-horse-battery"


def fresh_email() -> str:
    return f"acct-{uuid.uuid4().hex[:10]}@example.com"


async def signup(stack: Stack, email: str, password: str = PASSWORD, tenant_name: str = "t") -> dict[str, Any]:
    response = await stack.client.post(
        "/api/v1/auth/signup", json={"email": email, "password": password, "tenant_name": tenant_name}
    )
    assert response.status == 201, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def login(stack: Stack, email: str, password: str = PASSWORD, tenant_id: str | None = None) -> ClientResponse:
    body = {"email": email, "password": password} | ({"tenant_id": tenant_id} if tenant_id is not None else {})
    return await stack.client.post("/api/v1/auth/login", json=body)


async def me(stack: Stack, response: ClientResponse) -> dict[str, Any]:
    assert response.status == 200, await response.text()
    token = (await response.json())["access_token"]
    answer = await stack.client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert answer.status == 200, await answer.text()
    body: dict[str, Any] = await answer.json()
    return body


def shape(document: Any) -> Any:
    """The keys of a JSON document, recursively (values dropped)."""
    if isinstance(document, dict):
        return {key: shape(value) for key, value in document.items()}
    if isinstance(document, list):
        return [shape(item) for item in document]
    return type(document).__name__


def without_request_id(problem: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in problem.items() if key != "request_id"}


async def test_signup_answers_alike_for_registered_and_unregistered_emails(stack: Stack) -> None:
    registered = await stack.member()
    responses = {}
    for label, email in (("registered", registered.email), ("unregistered", fresh_email())):
        response = await stack.client.post(
            "/api/v1/auth/signup", json={"email": email, "password": PASSWORD, "tenant_name": "acme"}
        )
        responses[label] = (response.status, response.headers.get("Location") is not None, await response.json())
    (status_a, location_a, body_a), (status_b, location_b, body_b) = responses.values()
    assert status_a == status_b == 201
    assert location_a == location_b
    assert shape(body_a) == shape(body_b)
    assert body_a["user"]["role"] == body_b["user"]["role"] == "owner"
    # The registered email got a tenant and an account of its own, apart from the first.
    assert body_a["tenant"]["id"] != registered.tenant_id
    assert body_a["user"]["id"] != registered.user_id
    assert body_a["user"]["email"] == registered.email


async def test_each_password_signs_in_to_its_own_tenant(stack: Stack) -> None:
    email = fresh_email()
    first = await signup(stack, email, PASSWORD, "first")
    second = await signup(stack, email.upper(), OTHER_PASSWORD, "second")
    assert first["tenant"]["id"] != second["tenant"]["id"]
    assert (await me(stack, await login(stack, email)))["tenant"]["id"] == first["tenant"]["id"]
    assert (await me(stack, await login(stack, email, OTHER_PASSWORD)))["tenant"]["id"] == second["tenant"]["id"]
    # Naming the tenant that goes with the password changes nothing; the other tenant's is a 401.
    named = await me(stack, await login(stack, email, OTHER_PASSWORD, second["tenant"]["id"]))
    assert named["user"]["id"] == second["user"]["id"]
    mismatched = await login(stack, email, OTHER_PASSWORD, first["tenant"]["id"])
    assert mismatched.status == 401


async def test_one_password_in_two_tenants_needs_a_tenant_id(stack: Stack) -> None:
    email = fresh_email()
    first = await signup(stack, email, tenant_name="first")
    second = await signup(stack, email, tenant_name="second")

    ambiguous = await login(stack, email)
    assert ambiguous.status == 409
    assert ambiguous.content_type == "application/problem+json"
    problem = await ambiguous.json()
    assert problem["type"] == "https://flowforge.dev/problems/tenant-required"
    assert [error["field"] for error in problem["errors"]] == ["tenant_id"]
    # Nothing of either tenant is told: the caller names the tenant it knows.
    text = await ambiguous.text()
    for secret in (first["tenant"]["id"], second["tenant"]["id"], first["user"]["id"], second["user"]["id"]):
        assert secret not in text

    for account in (first, second):
        caller = await me(stack, await login(stack, email, tenant_id=account["tenant"]["id"]))
        assert caller["tenant"]["id"] == account["tenant"]["id"]
        assert caller["user"]["id"] == account["user"]["id"]

    # A wrong password stays a plain 401: only the password's owner learns there are several.
    wrong = await login(stack, email, "not-the-password-at-all")
    assert wrong.status == 401
    # So does a tenant where the email has no account, exactly like an unknown email.
    stranger = await stack.member()
    elsewhere = await login(stack, email, tenant_id=stranger.tenant_id)
    unknown = await login(stack, fresh_email())
    assert elsewhere.status == unknown.status == 401
    assert without_request_id(await elsewhere.json()) == without_request_id(await unknown.json())


async def test_unknown_email_and_wrong_password_get_identical_answers(stack: Stack) -> None:
    member = await stack.member()
    twice = fresh_email()
    await signup(stack, twice)
    await signup(stack, twice)
    answers = [
        await login(stack, member.email, "wrong-password-1"),
        await login(stack, twice, "wrong-password-1"),  # an email with two accounts
        await login(stack, fresh_email(), "wrong-password-1"),
        await login(stack, fresh_email(), "wrong-password-1", tenant_id=member.tenant_id),
        await login(stack, member.email, "wrong-password-1", tenant_id="ten_" + "0" * 26),
        await login(stack, member.email, PASSWORD, tenant_id="not a tenant id\u0000"),
    ]
    assert {answer.status for answer in answers} == {401}
    assert {answer.headers["WWW-Authenticate"] for answer in answers} == {"Bearer"}
    bodies = [without_request_id(await answer.json()) for answer in answers]
    assert all(body == bodies[0] for body in bodies), bodies


async def test_invitations_are_unique_per_tenant_only(stack: Stack) -> None:
    owner, other = await stack.member(), await stack.member()
    # An email with an account elsewhere can be invited: nothing about the other tenant shows.
    invitation = {"email": other.email, "password": OTHER_PASSWORD, "role": "viewer"}
    invited = await stack.client.post("/api/v1/users", json=invitation, headers=owner.headers)
    assert invited.status == 201, await invited.text()
    # The same email twice in one tenant is a conflict, whatever its case.
    again = await stack.client.post(
        "/api/v1/users",
        json={"email": other.email.upper(), "password": OTHER_PASSWORD, "role": "editor"},
        headers=owner.headers,
    )
    assert again.status == 409
    assert (await again.json())["errors"][0]["field"] == "email"
    # The invited account signs in with its own password, to the tenant that invited it.
    caller = await me(stack, await login(stack, other.email, OTHER_PASSWORD))
    assert caller["tenant"]["id"] == owner.tenant_id
    assert caller["role"] == "viewer"
    assert (await me(stack, await login(stack, other.email)))["tenant"]["id"] == other.tenant_id


async def test_credentials_of_one_account_stay_in_its_tenant(stack: Stack) -> None:
    email = fresh_email()
    first = await signup(stack, email, tenant_name="first")
    second = await signup(stack, email, tenant_name="second")
    tokens = await (await login(stack, email, tenant_id=second["tenant"]["id"])).json()

    refreshed = await stack.client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert (await me(stack, refreshed))["tenant"]["id"] == second["tenant"]["id"]

    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    key = await (await stack.client.post("/api/v1/api-keys", json={"name": "k"}, headers=headers)).json()
    via_key = await (await stack.client.get("/api/v1/auth/me", headers={"X-API-Key": key["key"]})).json()
    assert via_key["tenant"]["id"] == second["tenant"]["id"]
    members = await (await stack.client.get("/api/v1/users", headers=headers)).json()
    assert [user["id"] for user in members["items"]] == [second["user"]["id"]]

    # A failed login is audited in every tenant where the email has an account; a success only
    # in the tenant signed in to.
    await login(stack, email, "wrong-password-1")
    first_tokens = await (await login(stack, email, tenant_id=first["tenant"]["id"])).json()
    for account, access in ((first, first_tokens["access_token"]), (second, tokens["access_token"])):
        response = await stack.client.get(
            f"/api/v1/audit-logs?entity_id={account['user']['id']}&limit=100",
            headers={"Authorization": f"Bearer {access}"},
        )
        actions = [entry["action"] for entry in (await response.json())["items"]]
        assert "auth.login_failed" in actions
        assert actions.count("auth.login_succeeded") == 1
