"""Real Prometheus, Alertmanager and alert-sink processes for the dashboards tests.

Each runs as a plain child process on a loopback port from `free_port()`,
with its storage in the test's tmp directory, and is stopped by `running()`.
"""

from __future__ import annotations

import json
import shutil
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards.build import generate, write
from dashboards.config import Config
from tests.support.procs import Proc, free_port, http_json, wait_until

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
ALERTMANAGER = shutil.which("prometheus-alertmanager")
AMTOOL = shutil.which("amtool")

needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="prometheus/promtool not installed (Debian package `prometheus`; .ci/run installs it)",
)
needs_alertmanager = pytest.mark.skipif(
    ALERTMANAGER is None or AMTOOL is None,
    reason="prometheus-alertmanager/amtool not installed (Debian package "
    "`prometheus-alertmanager`; .ci/run installs it)",
)


def write_deploy(tmp: Path, config: Config) -> Path:
    """Generate the whole deploy/ tree for `config` under tmp/deploy."""
    out = tmp / "deploy"
    write(out, generate(config))
    return out


class PrometheusProcess(Proc):
    def __init__(
        self,
        tmp: Path,
        *,
        rules_dir: Path | None = None,
        scrape: Mapping[str, Sequence[str]] = {},
        alertmanager: str | None = None,
        interval: str = "1s",
    ) -> None:
        self.port = free_port()
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(targets)}]}
                for job, targets in scrape.items()
            ],
        }
        if rules_dir is not None:
            config["rule_files"] = [str(rules_dir / "*.yml")]
        if alertmanager is not None:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]
            }
        path = tmp / f"prometheus-{self.port}.yml"
        path.write_text(yaml.safe_dump(config))
        assert PROMETHEUS is not None
        super().__init__(
            [
                PROMETHEUS,
                f"--config.file={path}",
                f"--storage.tsdb.path={tmp / f'prom-data-{self.port}'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            tmp / f"prometheus-{self.port}.log",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> PrometheusProcess:  # type: ignore[override]
        super().start()
        wait_until(
            lambda: self._get("/-/ready") == 200 or not self.alive(), timeout, what="prometheus"
        )
        assert self.alive(), self.output()
        return self

    def _get(self, path: str) -> int:
        return http_json("GET", self.url + path, timeout=2.0)[0]

    def query(self, expr: str) -> dict[str, Any]:
        """`/api/v1/query`; returns the decoded answer, success or not."""
        qs = urllib.parse.urlencode({"query": expr})
        _, _, body = http_json("GET", f"{self.url}/api/v1/query?{qs}", timeout=10.0)
        assert isinstance(body, dict), body
        return body

    def alerts(self) -> list[dict[str, Any]]:
        _, _, body = http_json("GET", f"{self.url}/api/v1/alerts", timeout=5.0)
        return list(body["data"]["alerts"])


class AlertmanagerProcess(Proc):
    def __init__(self, tmp: Path, config_file: Path) -> None:
        self.port = free_port()
        assert ALERTMANAGER is not None
        super().__init__(
            [
                ALERTMANAGER,
                f"--config.file={config_file}",
                f"--storage.path={tmp / f'am-data-{self.port}'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            tmp / f"alertmanager-{self.port}.log",
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> AlertmanagerProcess:  # type: ignore[override]
        super().start()
        wait_until(
            lambda: (
                http_json("GET", f"http://{self.address}/-/ready", timeout=2.0)[0] == 200
                or not self.alive()
            ),
            timeout,
            what="alertmanager",
        )
        assert self.alive(), self.output()
        return self


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
