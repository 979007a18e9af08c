"""Real Prometheus, Alertmanager and alert-sink processes for the dashboards tests.

Each runs as a plain child process on a loopback port from `free_port()`,
with its storage in the test's tmp directory, and is stopped by `running()`.
"""

from __future__ import annotations

import json
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from pullwake.dashboards.build import generate, write
from pullwake.dashboards.config import Config
from tests.support.procs import Proc, free_port, http_json, wait_until


def write_deploy(tmp: Path, config: Config) -> Path:
    """Generate the whole deploy/ tree for `config` under tmp/deploy."""
    out = tmp / "deploy"
    write(out, generate(config))
    return out


class SinkProcess(Proc):
    """`pullwake alerts sink` on a free port, recording to a JSON lines file."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.record = tmp / f"alerts-{self.port}.jsonl"
        super().__init__(
            [
                sys.executable,
                "-m",
                "pullwake",
                "alerts",
                "sink",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--record",
                str(self.record),
            ],
            tmp / f"sink-{self.port}.log",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 15.0) -> SinkProcess:  # type: ignore[override]
        super().start()
        wait_until(
            lambda: (
                http_json("GET", self.url + "healthz", timeout=1.0)[0] == 200 or not self.alive()
            ),
            timeout,
            what="alert sink",
        )
        assert self.alive(), self.output()
        return self

    def received(self, alertname: str | None = None, status: str | None = None) -> list[Any]:
        params = {k: v for k, v in (("alertname", alertname), ("status", status)) if v}
        qs = urllib.parse.urlencode(params)
        _, _, body = http_json("GET", f"{self.url}alerts?{qs}", timeout=2.0)
        return list(body)

    def recorded(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line]
