"""bench/bench_ds_sidebyside.py runs end to end (pullwake only, tiny sizes): every phase
produces its figures, the table prints, and pullwake refuses and loses no append."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.repo import ROOT


@pytest.mark.slow
def test_sidebyside_quick_on_pullwake(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    cmd = [
        sys.executable, str(ROOT / "bench" / "bench_ds_sidebyside.py"), "--quick",
        "--servers", "pullwake", "--latency-count", "10", "--sequential-count", "20",
        "--clients", "4", "--per-client", "5", "--readers", "20", "--idle-readers", "50",
        "--window", "0.5", "--json", str(out),
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "| append -> SSE delivery p99, 1 reader |" in run.stdout
    data = json.loads(out.read_text())
    for row in data["rows"]:
        assert data["values"][row["key"]]["pullwake"], row["key"]
    tallies = [t["pullwake"] for t in data["tallies"].values()]
    assert sum(t["sent"] for t in tallies) == 10 + 20 + 4 * 5 + 20
    assert all(t["refused"] == 0 and t["lost"] == 0 for t in tallies)
