"""Every panel query is PromQL a real Prometheus accepts, and returns data live.

The first test loads the generated rules into a real Prometheus (which
validates them again) and sends every dashboard expression to
`/api/v1/query`.  The second scrapes a real server and runner and waits until
every panel that must show something on a healthy system does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from pullwake.core import catalog
from pullwake.core.protocol import EndReason
from pullwake.dashboards import queries as q
from pullwake.dashboards import slo
from pullwake.dashboards.config import DEFAULT
from tests.dashboards.dashjson import concrete, load, prom_targets
from tests.dashboards.promstack import write_deploy
from tests.support.procs import (
    RunnerProcess,
    ServerProcess,
    free_port,
    http_json,
    running,
    wait_until,
)
from tests.support.prometheus import PrometheusProcess, needs_prometheus

pytestmark = [pytest.mark.prometheus, needs_prometheus]

# Panels that are empty on a healthy system by design (or until a fault).
EMPTY_WHEN_HEALTHY = {
    "Stream connected while heartbeats fail",  # the seed's case only
    "Runners the server sees no stream for",  # the server-side mismatch only
    "Heartbeat failure rate by error type",  # no heartbeat fails
    "HTTP request duration p50 / p99 (OTLP)",  # OTLP only: not on the scraped /metrics
    "HTTP requests by status (OTLP)",  # OTLP only
    "Runners burning their error budget fast",  # only runners over their error budget
    "Claim lease expiries",  # only when a claim is never completed
    "Runners losing claims",  # only runners whose claims were lost
}
# ...of which these list exactly the faulty runners: asserted empty on a healthy one.
EXACTLY_THE_FAULTY = {
    "Stream connected while heartbeats fail",
    "Runners the server sees no stream for",
    "Runners losing claims",
}
# Windows of a day and more add up 5-minute buckets, the first recorded up to 5 minutes
# after Prometheus starts: their targets (fleet burn rates 1d, 3d) are empty in a short run.
BUCKETED = tuple(
    slo.record_name(level, w)
    for level in slo.LEVELS
    for w in DEFAULT.slo.windows
    if slo.bucketed(w)
)


def _all_targets(out: Path) -> Iterator[tuple[str, str, str]]:
    for key, data in load(out, DEFAULT).items():
        for title, t in prom_targets(data):
            yield key, title, t["expr"]


@pytest.fixture(scope="module")
def deploy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_deploy(
        tmp_path_factory.mktemp("deploy"), DEFAULT.scaled(1, evaluation_interval="1s")
    )


def test_every_panel_query_is_valid_promql(tmp_path: Path, deploy: Path) -> None:
    prom = PrometheusProcess(tmp_path, rules_dir=deploy / "prometheus/rules").start()
    with running(prom):
        targets = list(_all_targets(deploy))
        assert len(targets) > 20
        for key, title, expr in targets:
            answer = prom.query(concrete(expr))
            assert answer["status"] == "success", (key, title, expr, answer)
        # Prometheus loaded every rule (a bad one would have stopped it starting).
        _, _, rules = http_json("GET", f"{prom.url}/api/v1/rules")
        loaded = [r["name"] for g in rules["data"]["groups"] for r in g["rules"]]
        assert len(loaded) >= 17


def _runner_exports_metrics(runner: RunnerProcess) -> bool:
    code, _, body = http_json("GET", f"{runner.status_url}/metrics", timeout=2.0)
    return code == 200 and catalog.STREAM_CONNECTED.prom_name in str(body)


@pytest.mark.slow
def test_panels_return_data_from_a_live_runner_and_server(tmp_path: Path, deploy: Path) -> None:
    """...and the rules, `for:` scaled down, stay silent through its SSE rotations."""
    fast = dataclasses.replace(
        DEFAULT, thresholds=dataclasses.replace(DEFAULT.thresholds, heartbeat_stale_seconds=10.0)
    ).scaled(0.1, evaluation_interval="1s")
    fast_rules = write_deploy(tmp_path / "fast", fast) / "prometheus/rules"
    env = {"OTEL_SDK_DISABLED": "false"}
    server = ServerProcess(tmp_path, keepalive=0.5, extra=["--sse-rotate-seconds", "3"], env=env)
    server.start()
    runner = RunnerProcess(
        tmp_path,
        server.url,
        "r1",
        status_port=free_port(),
        extra=["--heartbeat-interval", "0.5"],
        env=env,
    )
    with running(server, runner):
        runner.start()
        wait_until(lambda: runner.status()["state"] == "running.streaming", 15, what="streaming")
        if not _runner_exports_metrics(runner):
            pytest.skip("the runner's /metrics does not export the catalog metrics yet")
        prom = PrometheusProcess(
            tmp_path,
            rules_dir=fast_rules,
            scrape={
                "pullwake-server": [f"127.0.0.1:{server.port}"],
                "pullwake-runner": [f"127.0.0.1:{runner.status_port}"],
            },
        )
        with running(prom.start()):
            for _ in range(3):
                server.publish("r1", {"subscription_id": "s", "stream": "/x"})
            expected = [
                t
                for t in _all_targets(deploy)
                if t[1] not in EMPTY_WHEN_HEALTHY and not any(n in t[2] for n in BUCKETED)
            ]

            def missing() -> list[tuple[str, str]]:
                out = []
                for key, title, expr in expected:
                    answer = prom.query(concrete(expr, rate_interval="30s"))
                    if not answer["data"]["result"]:
                        out.append((key, title))
                return out

            last: list[tuple[str, str]] = []

            def all_have_data() -> bool:
                nonlocal last
                last = missing()
                return not last

            try:
                wait_until(all_have_data, 45, interval=1.0, what="every panel to have data")
            except AssertionError:
                raise AssertionError(f"panels without data: {last}") from None
            # The panels listing exactly the lying runners list none of a healthy one.
            for key, title, expr in _all_targets(deploy):
                if title in EXACTLY_THE_FAULTY:
                    answer = prom.query(concrete(expr, rate_interval="30s"))
                    assert answer["data"]["result"] == [], (key, title, answer)

            # A healthy default runner rotated every 3 s: no alert may fire.
            rotated = (
                f"sum({catalog.STREAM_RECONNECTS.prom_name}"
                f'{{{q.REASON}="{EndReason.ROTATED.value}"}})'
            )

            def rotations() -> float:
                result = prom.query(rotated)["data"]["result"]
                return float(result[0]["value"][1]) if result else 0.0

            # Four more rotations: longer than any rule's scaled `for:` that one could trip.
            seen = rotations()
            wait_until(lambda: rotations() >= seen + 4, 40, interval=1.0, what="4 rotations")
            firing = prom.query('max_over_time(ALERTS{alertstate="firing"}[10m])')
            assert firing["data"]["result"] == [], firing
            assert [a for a in prom.alerts() if a["state"] == "firing"] == []
