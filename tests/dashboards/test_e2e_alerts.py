"""End to end: the generated rules, through real Prometheus and Alertmanager, to the sink.

Real processes throughout: `pullwake server`, `pullwake run` behind the
fault proxy, Prometheus scraping both, Alertmanager with the generated config,
and `pullwake alerts sink` as its webhook.  Only the config is changed:
`for:` and Alertmanager waits scaled down (`Config.scaled`), the heartbeat
staleness threshold fitted to a 0.5 s heartbeat.

The fault is the seed's: the server dies behind a proxy that keeps the
runner's connections open (`half_open`).  The legacy runner keeps claiming
its stream is connected and the critical alert must reach the webhook, then
resolve once the server is back; the default runner never triggers it and
its heartbeat / not-streaming alerts tell the truth instead.  Third, the
server-side rule: a legacy runner whose stream alone died (heartbeats still
arrive) is caught by the server, and the alert resolves once the runner is
restarted.
"""

from __future__ import annotations

import dataclasses
import functools
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from pullwake.core import catalog
from pullwake.dashboards.config import DEFAULT, BurnWindow, Config, Slo
from tests.dashboards.dashjson import concrete, load, prom_targets
from tests.dashboards.promstack import SinkProcess, write_deploy
from tests.support.procs import RunnerProcess, ServerProcess, http_json, running, wait_until
from tests.support.prometheus import (
    AlertmanagerProcess,
    PrometheusProcess,
    needs_alertmanager,
    needs_prometheus,
)
from tests.support.repo import DEPLOY

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, needs_prometheus, needs_alertmanager]

CRITICAL = "PullWakeStreamConnectedWhileHeartbeatsFailing"
LYING_PANEL = "Stream connected while heartbeats fail"
SERVER_SIDE = "PullWakeServerSeesNoStream"
SERVER_PANEL = "Runners the server sees no stream for"
FAULT_PANELS = ("Heartbeat failure rate by error type",)
TRUTHFUL = ("PullWakeRunnerNotStreaming", "PullWakeHeartbeatsFailing")
OTEL_ON = {"OTEL_SDK_DISABLED": "false"}

faultproxy = pytest.importorskip("pullwake.tools.faultproxy", reason="no fault proxy")


def fast_config(webhook: str, slo: Slo | None = None) -> Config:
    base = dataclasses.replace(
        DEFAULT,
        alertmanager_webhook_url=webhook,
        thresholds=dataclasses.replace(DEFAULT.thresholds, heartbeat_stale_seconds=10.0),
        slo=slo or DEFAULT.slo,
    )
    return base.scaled(0.1, evaluation_interval="1s")


class Stack:
    """Server, proxy, runner, Prometheus, Alertmanager and sink for one profile."""

    def __init__(self, tmp: Path, profile: str, stack: ExitStack, slo: Slo | None = None) -> None:
        self.tmp = tmp
        self.sink = SinkProcess(tmp).start()
        stack.enter_context(running(self.sink))
        deploy = write_deploy(tmp, fast_config(self.sink.url, slo))
        self.server = ServerProcess(tmp, keepalive=0.5, env=OTEL_ON).start()
        stack.callback(lambda: self.server.stop())  # whichever server runs by then
        self.proxy = faultproxy.ThreadedFaultProxy(upstream=("127.0.0.1", self.server.port))
        stack.enter_context(self.proxy)
        self.runner = RunnerProcess(
            tmp,
            self.proxy.url,
            "r1",
            extra=[
                "--profile",
                profile,
                "--heartbeat-interval",
                "0.5",
                "--connect-timeout",
                "1",
                "--backoff-max",
                "2",
            ],
            env=OTEL_ON,
        )
        stack.enter_context(running(self.runner))
        self.runner.start()
        self.am = AlertmanagerProcess(tmp, deploy / "alertmanager/alertmanager.yml").start()
        stack.enter_context(running(self.am))
        self.prom = PrometheusProcess(
            tmp,
            rules_dir=deploy / "prometheus/rules",
            scrape={
                "pullwake-server": [f"127.0.0.1:{self.server.port}"],
                "pullwake-runner": [f"127.0.0.1:{self.runner.status_port}"],
            },
            alertmanager=self.am.address,
        ).start()
        stack.enter_context(running(self.prom))

    def runner_exports_metrics(self) -> bool:
        code, _, body = http_json("GET", f"{self.runner.status_url}/metrics", timeout=2.0)
        return code == 200 and catalog.STREAM_CONNECTED.prom_name in str(body)

    def wait_healthy(self) -> None:
        wait_until(
            lambda: self.runner.status()["state"] == "running.streaming", 20, what="streaming"
        )
        connected = f"{catalog.STREAM_CONNECTED.prom_name} == 1"
        wait_until(
            lambda: self.prom.query(connected)["data"]["result"], 20, what="prometheus scrape"
        )

    def kill_server_behind_half_open_proxy(self) -> None:
        self.proxy.set_mode("half_open")
        self.server.stop(signal.SIGKILL)

    def restore_server(self) -> None:
        self.server = ServerProcess(
            self.tmp, port=self.server.port, db=self.server.db, keepalive=0.5, env=OTEL_ON
        ).start()
        self.proxy.set_mode("pass")

    def fired(self, alertname: str, status: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.sink.received(alertname=alertname, status=status)
            if a["labels"].get("runner_id") == "r1"
        ]

    def panel(self, title: str, dashboard: str = "fleet") -> list[dict[str, str]]:
        """Label sets a panel's queries return now (from the committed dashboard JSON)."""
        data = load(DEPLOY, DEFAULT)[dashboard]
        exprs = [t["expr"] for name, t in prom_targets(data) if name == title]
        assert exprs, title
        answers = [r for e in exprs for r in self.prom.query(concrete(e))["data"]["result"]]
        return [{k: v for k, v in r["metric"].items() if k != "__name__"} for r in answers]

    def lying_runners_panel(self) -> list[dict[str, str]]:
        return self.panel(LYING_PANEL)

    def ever_firing(self, alertname: str) -> list[Any]:
        expr = f'max_over_time(ALERTS{{alertname="{alertname}", alertstate="firing"}}[15m])'
        return list(self.prom.query(expr)["data"]["result"])

    def diagnose(self) -> str:
        return (
            f"sink: {self.sink.received()}\nprometheus alerts: {self.prom.alerts()}\n"
            f"runner status: {self.runner.status()}\nrunner log tail:\n"
            f"{self.runner.output()[-3000:]}"
        )


@pytest.fixture
def stack_for(tmp_path: Path) -> Iterator[Any]:
    with ExitStack() as es:

        def make(profile: str, slo: Slo | None = None) -> Stack:
            s = Stack(tmp_path / profile, profile, es, slo)
            if not s.runner_exports_metrics():
                pytest.skip("the runner's /metrics does not export the catalog metrics yet")
            s.wait_healthy()
            return s

        yield make


def test_legacy_runner_fires_the_critical_alert_and_resolves(stack_for: Any) -> None:
    s: Stack = stack_for("legacy")
    assert s.fired(CRITICAL, "firing") == []
    s.kill_server_behind_half_open_proxy()
    try:
        [alert, *_] = wait_until(
            lambda: s.fired(CRITICAL, "firing"),
            60,
            interval=0.5,
            what="critical alert at the webhook",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{s.diagnose()}") from None
    assert alert["labels"] == {"alertname": CRITICAL, "runner_id": "r1", "severity": "critical"}
    assert alert["receiver"] == "pullwake-critical"
    assert alert["annotations"]["runbook_url"].endswith("#" + CRITICAL.lower())
    assert "Runner r1 says its wake stream is connected" in alert["annotations"]["description"]
    # The runner's own view at that moment: the seed's lie.
    assert s.runner.status()["diagnostics"]["stream_connected"] is True
    # The fleet dashboard's panel for this case lists exactly that runner.
    assert s.lying_runners_panel() == [{"runner_id": "r1"}]

    s.restore_server()
    try:
        wait_until(
            lambda: s.fired(CRITICAL, "resolved"),
            60,
            interval=0.5,
            what="critical alert resolved at the webhook",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{s.diagnose()}") from None
    wait_until(lambda: s.lying_runners_panel() == [], 15, what="the lying-runners panel empty")
    print(s.sink.output())  # what the webhook saw, for `pytest -s`


def test_default_runner_tells_the_truth_instead(stack_for: Any) -> None:
    s: Stack = stack_for("default")
    s.kill_server_behind_half_open_proxy()

    def truthful_firing() -> list[str]:
        return [name for name in TRUTHFUL if s.fired(name, "firing")]

    try:
        fired = wait_until(truthful_firing, 60, interval=0.5, what="a truthful alert")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{s.diagnose()}") from None
    assert s.runner.status()["diagnostics"]["stream_connected"] is False
    # The fleet panels that stay empty while all is well show the outage.
    for title in FAULT_PANELS:
        wait_until(functools.partial(s.panel, title), 20, what=f"data on {title!r}")

    s.restore_server()
    try:
        # Every truthful alert that fired, including any that fired after the first, resolves.
        wait_until(
            lambda: all(s.fired(name, "resolved") for name in truthful_firing()),
            60,
            interval=0.5,
            what=f"{fired} resolved at the webhook",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{s.diagnose()}") from None
    assert s.fired(CRITICAL, "firing") == []
    assert s.ever_firing(CRITICAL) == [], "the critical alert fired for the default profile"
    print(s.sink.output())  # what the webhook saw, for `pytest -s`


def test_server_sees_no_stream_the_legacy_runner_claims(stack_for: Any) -> None:
    """The seed seen from the server: heartbeats get through, the stream is dead.

    The proxy drops the live connections once (half-open, then pass again): the
    legacy runner's held long-poll stays dead while new heartbeat connections
    reach the server, which sees no read of the stream the runner calls connected.
    """
    s: Stack = stack_for("legacy")
    s.proxy.set_mode("half_open")
    s.proxy.set_mode("pass")
    try:
        [alert, *_] = wait_until(
            lambda: s.fired(SERVER_SIDE, "firing"), 60, interval=0.5, what="server-side alert"
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{s.diagnose()}") from None
    assert alert["labels"] == {"alertname": SERVER_SIDE, "runner_id": "r1", "severity": "critical"}
    assert alert["receiver"] == "pullwake-critical"
    assert s.runner.status()["diagnostics"]["stream_connected"] is True
    assert s.panel(SERVER_PANEL, "server") == [{"runner_id": "r1"}]

    s.runner.stop()  # a restarted runner opens a fresh stream
    s.runner.start()
    try:
        wait_until(lambda: s.fired(SERVER_SIDE, "resolved"), 60, interval=0.5, what="resolved")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{s.diagnose()}") from None
    assert s.panel(SERVER_PANEL, "server") == []


# The SLO on a seconds scale: the same rules and min_history, windows ~90x shorter than
# the default's 1h/5m page, so a real outage pages within a test.
SECONDS_SLO = Slo(
    period="1h",
    burn_windows=(
        BurnWindow("40s", "10s", 14.4, "critical", "1s"),
        BurnWindow("2m", "20s", 1.0, "warning", "1s"),
    ),
)
BURN = "PullWakeRunnerStreamBudgetBurn"


def test_a_real_outage_burns_the_budget_and_pages(stack_for: Any) -> None:
    """Real runner states through real Prometheus and Alertmanager: the SLO page arrives
    at the webhook with its window labels after the server dies, and resolves after."""
    s: Stack = stack_for("default", SECONDS_SLO)
    record = "runner_id:" + catalog.RUNNER_STATE.prom_name + ":running_samples40s"
    # min_history: the 40s window must hold two 10s windows of samples first.
    wait_until(lambda: (s.prom.value(f'{record}{{runner_id="r1"}}') or 0) >= 25, 60, what="history")
    assert s.fired(BURN, "firing") == []  # streaming (and rotating) burns nothing
    killed = time.monotonic()
    s.kill_server_behind_half_open_proxy()
    try:
        [alert] = wait_until(lambda: s.fired(BURN, "firing"), 90, interval=0.5, what=BURN)[:1]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{s.diagnose()}") from None
    paged_after = time.monotonic() - killed
    assert alert["labels"] == {
        "alertname": BURN,
        "runner_id": "r1",
        "severity": "critical",
        "long_window": "40s",
        "short_window": "10s",
    }
    assert alert["annotations"]["runbook_url"].endswith("#" + BURN.lower())
    s.restore_server()
    back = time.monotonic()
    try:
        wait_until(lambda: s.fired(BURN, "resolved"), 90, interval=0.5, what="resolved")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{s.diagnose()}") from None
    print(
        f"\nSLO page at the webhook {paged_after:.1f} s after the server died "
        f"(40s/10s windows), resolved {time.monotonic() - back:.1f} s after it came back"
    )
