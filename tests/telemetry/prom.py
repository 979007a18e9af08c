"""A real Prometheus (Debian package) scraping test targets on loopback.

Started per test with a temp config and `--storage.tsdb.path` in tmp, a short
scrape interval, and a port from `free_port()`; queried over its HTTP API.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import Proc, free_port, wait_until

PROMETHEUS = shutil.which("prometheus")

needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus not installed (Debian package `prometheus`; .ci/run installs it)",
)


class Prometheus(Proc):
    """`prometheus` scraping `{job: [host:port, ...]}` every `interval`."""

    def __init__(self, tmp: Path, scrape: Mapping[str, Sequence[str]], interval: str = "1s"):
        self.port = free_port()
        jobs = "\n".join(
            f"  - job_name: {json.dumps(job)}\n"
            f"    static_configs:\n      - targets: {json.dumps(list(targets))}"
            for job, targets in scrape.items()
        )
        config = tmp / f"prometheus-{self.port}.yml"
        config.write_text(
            f"global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n"
            f"scrape_configs:\n{jobs}\n"
        )
        assert PROMETHEUS is not None
        super().__init__(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / f'prom-{self.port}'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            tmp / f"prometheus-{self.port}.log",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Prometheus:  # type: ignore[override]
        super().start()

        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"prometheus exited:\n{self.output()}")
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                return bool(r.status == 200)

        wait_until(ready, timeout, interval=0.1, what="prometheus ready")
        return self

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (raises on a PromQL error)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def value(self, promql: str) -> float | None:
        """The single sample of an instant query, None when the vector is empty."""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def names(self, prefix: str = "pullwake_") -> set[str]:
        url = f"{self.url}/api/v1/label/__name__/values"
        with urllib.request.urlopen(url, timeout=5) as r:
            return {n for n in json.load(r)["data"] if n.startswith(prefix)}

    def targets_up(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=5) as r:
            active = json.load(r)["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)
