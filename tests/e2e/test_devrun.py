"""`make run`'s runner: starts the four processes and Ctrl-C leaves none behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.e2e


def processes_with_data_dir(data_dir: Path) -> list[int]:
    """Pids whose environment names this data dir (ours only: it is unique to the test)."""
    marker = f"FLOWFORGE_DATA_DIR={data_dir}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ports = {key: free_port() for key in ("AUTH", "WORKFLOW", "EXECUTION", "EDGE")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWFORGE_") and k != "DATABASE_URL"}
    env["FLOWFORGE_DATA_DIR"] = str(data_dir)
    env.update({f"FLOWFORGE_{key}_PORT": str(port) for key, port in ports.items()})
    runner = subprocess.Popen(
        [sys.executable, "tools/devrun.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert runner.stdout is not None
        deadline = time.monotonic() + 60
        banner = b""
        while b"Press Ctrl-C to stop." not in banner:
            assert time.monotonic() < deadline, banner.decode()
            line = runner.stdout.readline()
            assert line or runner.poll() is None, banner.decode()
            banner += line
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['EDGE']}/health/ready", timeout=5) as response:
            assert response.status == 200
        assert len(processes_with_data_dir(data_dir)) >= 5  # runner + four services
        runner.send_signal(signal.SIGINT)
        assert runner.wait(timeout=30) == 0
    finally:
        if runner.poll() is None:
            runner.kill()
    time.sleep(0.2)
    assert processes_with_data_dir(data_dir) == []
