"""Real Prometheus and Alertmanager processes for tests (Debian packages).

Each runs as a plain child process on a loopback port from `free_port()`,
with its storage in the test's tmp directory, and is stopped by `running()`.
One wrapper for every test area: the telemetry, dashboards and stack tests
all query the same real binaries the same way.
"""

from __future__ import annotations

import shutil
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

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

    def vector(self, expr: str) -> list[dict[str, Any]]:
        """The result vector of an instant query (fails the test on a PromQL error)."""
        answer = self.query(expr)
        assert answer.get("status") == "success", answer
        return list(answer["data"]["result"])

    def value(self, expr: str) -> float | None:
        """The single sample of an instant query, None when the vector is empty."""
        result = self.vector(expr)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def names(self, prefix: str = "pullwake_") -> set[str]:
        """Metric names Prometheus has stored, starting with `prefix`."""
        _, _, body = http_json("GET", f"{self.url}/api/v1/label/__name__/values", timeout=5.0)
        return {n for n in body["data"] if n.startswith(prefix)}

    def targets_up(self) -> bool:
        """True once every scrape target has been scraped successfully."""
        _, _, body = http_json("GET", f"{self.url}/api/v1/targets", timeout=5.0)
        active = body["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)


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
