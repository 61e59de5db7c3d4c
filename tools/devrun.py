"""`make run`: starts auth_svc, workflow_svc, execution_svc and the edge; Ctrl-C stops them all.

Embedded defaults: SQLite files and dev keys under `.flowforge/`, loopback ports, private agent
addresses allowed. Set DATABASE_URL / REDIS_URL to use PostgreSQL / Redis instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = [
    ("auth_svc", "FLOWFORGE_AUTH_PORT", 50051),
    ("workflow_svc", "FLOWFORGE_WORKFLOW_PORT", 50052),
    ("execution_svc", "FLOWFORGE_EXECUTION_PORT", 50053),
    ("edge", "FLOWFORGE_EDGE_PORT", 8080),
]
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("FLOWFORGE_DATA_DIR", str(ROOT / ".flowforge"))
    env.setdefault("FLOWFORGE_AGENT_NETWORK", "allow-private")
    for _, variable, default in SERVICES:
        env.setdefault(variable, str(default))
    env["FLOWFORGE_AUTH_TARGET"] = f"127.0.0.1:{env['FLOWFORGE_AUTH_PORT']}"
    env["FLOWFORGE_WORKFLOW_TARGET"] = f"127.0.0.1:{env['FLOWFORGE_WORKFLOW_PORT']}"
    env["FLOWFORGE_EXECUTION_TARGET"] = f"127.0.0.1:{env['FLOWFORGE_EXECUTION_PORT']}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "generated"), env.get("PYTHONPATH")]))
    return env


def _stop(processes: list[subprocess.Popen[bytes]]) -> int:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return 0


def main() -> int:
    """Starts the four processes, waits for their ports, then for Ctrl-C or a crash."""
    env = _environment()
    busy = [f"{name} port {env[var]}" for name, var, _ in SERVICES if _port_open(int(env[var]))]
    if busy:
        print(f"already in use: {', '.join(busy)}; stop the other instance or set the *_PORT variables")
        return 1
    stopping = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    processes: list[subprocess.Popen[bytes]] = []
    for module, _, _ in SERVICES:
        # Own process group: Ctrl-C reaches only this runner, which stops the children in order.
        processes.append(subprocess.Popen([sys.executable, "-m", module], env=env, cwd=ROOT, start_new_session=True))
    deadline = time.monotonic() + STARTUP_TIMEOUT
    pending = {module: int(env[var]) for module, var, _ in SERVICES}
    while pending and not stopping:
        for module, port in list(pending.items()):
            if _port_open(port):
                del pending[module]
        crashed = [p for p in processes if p.poll() is not None]
        if crashed or time.monotonic() > deadline:
            print("a FlowForge process failed to start; stopping the others")
            return _stop(processes) or 1
        time.sleep(0.1)
    if not stopping:
        edge = f"http://127.0.0.1:{env['FLOWFORGE_EDGE_PORT']}"
        print(
            f"\nFlowForge is up: {edge}  (API docs: {edge}/docs)\n"
            f"Sign up:\n  curl -s -X POST {edge}/api/v1/auth/signup -H 'Content-Type: application/json' \\\n"
            '    -d \'{"email": "me@example.com", "password": "correct-horse-battery", "tenant_name": "acme"}\'\n'
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
    while not stopping:
        if any(p.poll() is not None for p in processes):
            print("a FlowForge process exited; stopping the others")
            _stop(processes)
            return 1
        time.sleep(0.2)
    print("\nstopping FlowForge...", flush=True)
    _stop(processes)
    print("stopped.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
