"""Keyed `concurrency` limits: at most `limit` running attempts per key value across all runs
of the tenant, enforced when workers claim, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

from execution_svc.domain.models import RunStatus
from tests.execution_svc.conftest import Harness


def keyed_call(limit: int) -> dict[str, Any]:
    return {
        "id": "wf_keyed",
        "name": "keyed",
        "version": 1,
        "steps": [
            {
                "id": "call",
                "agent": "slow",
                "input": {"customer": "{{ input.customer }}"},
                "concurrency": {"key": "{{ input.customer }}", "limit": limit},
            }
        ],
        "output": "{{ steps.call.output }}",
    }


async def test_runs_sharing_a_key_never_exceed_its_limit(harness: Harness) -> None:
    harness.register("slow", "/latency", ms=300)
    await harness.start_workers(2)
    runs = [await harness.run(keyed_call(limit=2), {"customer": "acme"}) for _ in range(6)]
    finished = await asyncio.gather(*[harness.wait(run.id, within=20) for run in runs])
    assert all(run.status is RunStatus.SUCCEEDED for run in finished)
    assert harness.agent.max_in_flight["/latency"] == 2
    assert len(harness.agent.received("/latency")) == 6


async def test_each_key_value_has_its_own_slots(harness: Harness) -> None:
    harness.register("slow", "/latency", ms=300)
    await harness.start_workers(1)
    customers = ["acme", "acme", "globex", "globex"]
    runs = [await harness.run(keyed_call(limit=1), {"customer": customer}) for customer in customers]
    finished = await asyncio.gather(*[harness.wait(run.id, within=20) for run in runs])
    assert all(run.status is RunStatus.SUCCEEDED for run in finished)
    assert harness.agent.max_in_flight["/latency"] == 2  # one per customer at a time


async def test_for_each_items_are_keyed_by_their_item(harness: Harness) -> None:
    harness.register("slow", "/latency", ms=200)
    await harness.start_workers(1)
    workflow = {
        "id": "wf_items",
        "name": "items",
        "version": 1,
        "steps": [
            {
                "id": "each",
                "agent": "slow",
                "for_each": "{{ input.regions }}",
                "max_concurrency": 10,
                "input": {"region": "{{ item }}"},
                "concurrency": {"key": "{{ item }}", "limit": 1},
            }
        ],
        "output": "{{ steps.each.output }}",
    }
    run = await harness.run(workflow, {"regions": ["eu", "eu", "eu", "us", "us", "us"]})
    finished = await harness.wait(run.id, within=20)
    assert finished.status is RunStatus.SUCCEEDED
    assert finished.output == [{"region": r} for r in ["eu", "eu", "eu", "us", "us", "us"]]
    assert harness.agent.max_in_flight["/latency"] == 2  # one per region


async def test_a_key_that_cannot_be_evaluated_fails_the_step(harness: Harness) -> None:
    harness.register("slow", "/latency", ms=1)
    await harness.start_workers(1)
    workflow = keyed_call(limit=1)
    workflow["steps"][0]["concurrency"]["key"] = "{{ input.customer[ }}"
    run = await harness.wait((await harness.run(workflow, {"customer": "acme"})).id)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and "concurrency.key" in run.error.message
    assert harness.agent.received("/latency") == []
