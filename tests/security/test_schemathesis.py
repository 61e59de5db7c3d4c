"""Property-based fuzzing of the whole REST surface with schemathesis, driven by the edge's own
/openapi.json and an authenticated owner: no request may produce a 5xx (other than 501 for RPCs
of milestones not built yet), and every response must match the documented schema."""

from __future__ import annotations

import asyncio
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import response_schema_conformance

from tests.fixtures.stack import Stack

EXAMPLES_PER_OPERATION = 6
# Failures of other milestones' code that this run found, reported to their owners; listed
# here so that the run stays a gate for everything else. Remove an entry once it is fixed.
KNOWN_ISSUES: set[str] = set()  # routes whose failures are tolerated: none


def not_a_crash(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 5xx is a failure, except 501 (UNIMPLEMENTED is declared, not a crash)."""
    status = response.status_code
    assert status < 500 or status == 501, f"{case.method} {case.path} answered {status}"
    return None


def fuzz(raw_schema: dict[str, Any], base_url: str, headers: dict[str, str]) -> list[str]:
    """Runs every operation's examples against the edge (blocking: call it in a thread)."""
    schema = schemathesis.openapi.from_dict(raw_schema)
    failures: list[str] = []
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.definition.raw.get("x-streaming"):
            continue  # SSE and WebSocket: no single response to check (tests/integration covers them)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            # The same examples every run, so that the suite never fails by chance; drop it
            # locally to explore (it found NUL and lone-surrogate 500s when it was random).
            derandomize=True,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=10)
            try:
                case.validate_response(response, checks=[not_a_crash, response_schema_conformance])
            except Exception as failure:  # schemathesis raises groups of failures
                label = f"{case.method} {case.path}"
                if label not in KNOWN_ISSUES:
                    failures.append(f"{label} ({case.formatted_path}): {str(failure).splitlines()[0][:300]}")

        check()
    return failures


async def test_no_request_crashes_the_api_or_breaks_its_schema(stack: Stack) -> None:
    member = await stack.member()
    raw = await (await stack.client.get("/openapi.json")).json()
    base_url = str(stack.client.make_url("")).rstrip("/")
    failures = await asyncio.to_thread(fuzz, raw, base_url, member.headers)
    assert failures == [], "\n".join(sorted(set(failures)))
