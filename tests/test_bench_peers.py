"""tools/bench_peers.py: its argument parsing and report shape (`make bench` runs it for real)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "bench_peers.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_peers", module)  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


bench_peers = _load()


def test_names_keep_the_canonical_order_and_reject_unknown_ones() -> None:
    assert bench_peers._names("W2, W0", bench_peers.WORKLOADS) == ["W0", "W2"]
    assert bench_peers._names("", bench_peers.PEERS) == ["celery", "pgqueuer"]
    with pytest.raises(argparse.ArgumentTypeError, match="W9"):
        bench_peers._names("W0,W9", bench_peers.WORKLOADS)


def test_a_failed_workload_is_null_with_an_error_and_measured_ones_stay() -> None:
    result = bench_peers.PeerResult(setup="s")
    result.values["W0"] = 0.5
    result.fail(["W1"], "W1: boom")
    result.fail(["W0", "W1", "W2"], "worker gone")
    assert result.as_json() == {"W0": 0.5, "W1": None, "W2": None, "setup": "s", "error": "W1: boom; worker gone"}
    assert "error" not in bench_peers.PeerResult(values={"W0": 1.0}).as_json()

