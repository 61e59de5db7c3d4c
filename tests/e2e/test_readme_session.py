"""The README's curl walk-through, run verbatim against real processes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, Stack

pytestmark = pytest.mark.e2e


def readme_walkthrough() -> str:
    """The shell block between the walk-through markers of README.md."""
    text = (ROOT / "README.md").read_text()
    section = text.split("<!-- walkthrough:start -->", 1)[1].split("<!-- walkthrough:end -->", 1)[0]
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", section, flags=re.S)
    assert blocks, "README has no walk-through shell block"
    return "\n".join(blocks)


def test_readme_walkthrough_runs_verbatim(stack: Stack, tmp_path: Path) -> None:
    script = readme_walkthrough().replace("localhost:8080", f"localhost:{stack.ports['edge']}")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    out = result.stdout
    assert '"tenant"' in out and '"owner"' in out  # signup answered the user and tenant
    assert '"token_type": "Bearer"' in out or '"token_type":"Bearer"' in out
    assert '"has_credentials": true' in out or '"has_credentials":true' in out
    assert "s3cr3t" not in out  # agent credentials are write-only
    assert '"next_page_token"' in out
    assert '"plan": [["fetch"], ["summarize", "classify"], ["notify"]]' in out  # dry-run validation
    assert "cycle: a -> b -> a" in out and '"field": "steps[1].input"' in out
    assert "PUT -> 200" in out and '"status": 412' in out
    assert '"version": 2' in out and '"version": 1' in out
    assert "digest version 1 ['process', 'combine']" in out
    assert '"status": "succeeded", "output": {"n": 3}' in out
