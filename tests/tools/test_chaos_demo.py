"""`pullwake demo --chaos` side by side: a default and a legacy runner against one real
server that is SIGKILLed; the default one is seen reconnecting, the legacy one lying."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pullwake.tools.demo_status import format_status

LINE = re.compile(r"^\[\s*(\d+)s\] (\S+)\s+state=(\S+) connected=(\S+) .*heartbeat=(\S+)")


def test_status_line_names_its_runner_and_calls_the_lie() -> None:
    status = {
        "state": "running.streaming",
        "diagnostics": {"stream_connected": True, "last_heartbeat_ok": False},
    }
    line = format_status(5, status, 3, "DOWN", label="legacy")
    assert line.startswith("[    5s] legacy   state=running.streaming connected=yes")
    assert line.endswith("<- LIE: connected while heartbeats fail")
    honest = {"state": "running.reconnecting", "diagnostics": {"last_heartbeat_ok": False}}
    assert "LIE" not in format_status(5, honest, 3, "DOWN", label="default")
    assert format_status(5, honest, 3, "DOWN").startswith("[    5s] state=")


@pytest.mark.slow
def test_chaos_demo_shows_default_recovering_and_legacy_lying(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "pullwake",
        "demo",
        "--workdir",
        str(tmp_path / "demo"),
        "--chaos",
        "--chaos-interval",
        "3",
        "--chaos-down",
        "4",
        "--duration",
        "11",
        "--heartbeat-interval",
        "0.5",
        "--publish-interval",
        "0.5",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [m.groups() for ln in done.stdout.splitlines() if (m := LINE.match(ln))]
    labels = {r[1] for r in rows}
    assert labels == {"default", "legacy"}, done.stdout
    kill = done.stdout.index("chaos: SIGKILL server")
    during = [
        m.groups()
        for ln in done.stdout[kill:].split("chaos: server restarted")[0].splitlines()
        if (m := LINE.match(ln))
    ]
    assert any(r[1] == "default" and r[2] != "running.streaming" for r in during), done.stdout
    lying = [r for r in during if r[1] == "legacy" and r[3] == "yes" and r[4].startswith("FAIL")]
    assert lying, done.stdout
    assert "<- LIE: connected while heartbeats fail" in done.stdout
    assert (tmp_path / "demo" / "runner-legacy.log").exists()
