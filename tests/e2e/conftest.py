"""End-to-end fixtures: the four FlowForge processes started for real, as `make run` does."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.ports import free_port
from tests.fixtures.processes import MODULES, ROOT, stack_environment


@dataclass
class Stack:
    """Running FlowForge processes and where to reach them."""

    ports: dict[str, int]
    processes: dict[str, subprocess.Popen[bytes]]
    env: dict[str, str]

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['edge']}"

    def grpc_target(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"


def _wait_ready(stack: Stack, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for name, process in stack.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(stack.edge_url + "/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"stack not ready in {timeout}s: {last}")


def start_stack(data_dir: Path, database_url: str | None) -> Stack:
    """Starts auth, workflow, execution and edge as separate processes on free ports."""
    ports = {name: free_port() for name in MODULES}
    env = stack_environment(data_dir, database_url, ports)
    processes = {
        name: subprocess.Popen([sys.executable, "-m", module], env=env, cwd=ROOT, start_new_session=True)
        for name, module in MODULES.items()
    }
    stack = Stack(ports=ports, processes=processes, env=env)
    try:
        _wait_ready(stack)
    except BaseException:
        stop_stack(stack)
        raise
    return stack


def stop_stack(stack: Stack) -> None:
    """SIGTERM every process and wait; SIGKILL what does not stop in time."""
    for process in stack.processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in stack.processes.values():
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """The whole product on SQLite files or on a fresh PostgreSQL database."""
    url = request.getfixturevalue("postgres_database") if request.param == "postgresql" else None
    running = start_stack(tmp_path / "data", url)
    yield running
    stop_stack(running)
