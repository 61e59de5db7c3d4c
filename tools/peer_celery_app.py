"""The Celery side of `tools/bench_peers.py` (issue 4): the app and the tasks its worker runs.

`bench_peers.py` starts the worker as a child process from tools/:
`celery -A peer_celery_app worker --pool=prefork --concurrency=2`, with the broker and the
result backend (both Redis) in `FLOWFORGE_PEER_REDIS` (default `redis://127.0.0.1:6379/14`).
Needs the `bench` extra (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import requests
from celery import Celery

REDIS_URL = os.environ.get("FLOWFORGE_PEER_REDIS", "redis://127.0.0.1:6379/14")

app = Celery("flowforge_peer", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    broker_connection_timeout=5,
    broker_transport_options={"socket_connect_timeout": 5},
    redis_socket_connect_timeout=5,
    redis_socket_timeout=60,
    result_expires=3600,
    worker_hijack_root_logger=False,
)


# W0's steps call the same test agent as FlowForge's agent steps, when bench.py names it.
AGENT_URL = os.environ.get("FLOWFORGE_PEER_AGENT_URL", "")
_agent = requests.Session() if AGENT_URL else None  # keep-alive, as FlowForge's pool


@app.task(name="peer.step")  # type: ignore[untyped-decorator]
def step(prev: dict[str, Any] | None, i: int, ms: int) -> dict[str, Any]:
    """One step of a chain (W0: `ms`=10, W2: 0); Celery passes the previous step's output first.
    With an agent URL, the step's 10 ms are an HTTP call to the agent; else a sleep."""
    if ms and _agent is not None:
        answer = _agent.post(f"{AGENT_URL}/latency?ms={ms}", json={"input": {"i": i}}, timeout=10)
        answer.raise_for_status()
    elif ms:
        time.sleep(ms / 1000)
    return {"i": i, "prev": None if prev is None else prev["i"]}


@app.task(name="peer.transform")  # type: ignore[untyped-decorator]
def transform(item: int) -> dict[str, Any]:
    """W1's pure transform of one item."""
    return {"n": item}
