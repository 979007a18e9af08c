"""`pullwake stack up` for real: Debian's Prometheus and Alertmanager, the server,
two runners (one legacy), the publisher and the alert sink as child processes.

Checked from the outside, as a person would: Prometheus' own API shows every
target up and the rules loaded, a published wake is handled by each runner
(seen in Prometheus), a crashed child is restarted, chaos kills and restarts
the server, and SIGINT leaves no process carrying the stack's id behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from pullwake.core import catalog
from pullwake.core.protocol import WakeOutcome
from pullwake.tools.stackrun import STACK_ID_ENV
from tests.support.procs import Proc, http_json, wait_until
from tests.tools.fakes import install_fakes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.prometheus,
    pytest.mark.skipif(
        not (shutil.which("prometheus") and shutil.which("prometheus-alertmanager")),
        reason="prometheus / prometheus-alertmanager not installed (.ci/run installs them)",
    ),
]


def stack_proc(tmp: Path, *extra: str) -> Proc:
    argv = [sys.executable, "-m", "pullwake", "stack", "up", "--workdir", str(tmp / "work")]
    return Proc([*argv, *extra], tmp / "stack.log")


def banner_value(proc: Proc, pattern: str) -> str:
    m = re.search(pattern, proc.output())
    assert m, f"{pattern!r} not in stack output:\n{proc.output()}"
    return m.group(1)


def wait_up(proc: Proc, timeout: float = 60.0) -> None:
    wait_until(
        lambda: "pullwake stack is up" in proc.output() or not proc.alive(),
        timeout,
        what="stack up banner",
    )
    assert proc.alive(), f"stack exited at start:\n{proc.output()}"


def with_output(proc: Proc, cond: Any, timeout: float, what: str) -> Any:
    """wait_until, with the stack's output in the failure message."""
    try:
        return wait_until(cond, timeout, interval=0.2, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nstack output:\n{proc.output()}") from None


def stack_pids(stack_id: str) -> list[int]:
    """Every process whose environment carries this stack's id (children, grandchildren)."""
    needle = f"{STACK_ID_ENV}={stack_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in env.split(b"\0") and state not in ("Z", "X"):
            found.append(int(entry))
    return found


def prom(base: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    status, _, body = http_json("GET", f"{base}{path}{query}", timeout=3.0)
    assert status == 200, body
    return body["data"]


def test_stack_up_targets_up_wakes_flow_restart_and_clean_sigint(tmp_path: Path) -> None:
    proc = stack_proc(tmp_path, "--runners", "2", "--publish-every", "0.5", "--duration", "300")
    proc.start()
    try:
        wait_up(proc)
        prom_url = banner_value(proc, r"Prometheus\s+(http://\S+)")
        sink_url = banner_value(proc, r"alert sink\s+(http://\S+)")
        stack_id = banner_value(proc, r"stack id (\S+) ")
        assert "grafana: skipped" in proc.output() or shutil.which("grafana")
        assert "otel-collector: skipped" in proc.output() or shutil.which("otelcol-contrib")
        # the banner tells the seed's (legacy) runner from the default one
        assert "(legacy" not in banner_value(proc, r"(  runner-1 .*)")
        assert "(legacy profile" in banner_value(proc, r"(  runner-2 .*)")

        # every scrape target up: Prometheus, Alertmanager, server, both runners
        def all_up() -> list[Any] | None:
            targets = prom(prom_url, "/api/v1/targets")["activeTargets"]
            ok = len(targets) == 5 and all(t["health"] == "up" for t in targets)
            return targets if ok else None

        targets = with_output(proc, all_up, 30, "all 5 targets up")
        jobs = sorted(t["labels"]["job"] for t in targets)
        assert jobs == [
            "alertmanager",
            "prometheus",
            "pullwake-runner",
            "pullwake-runner",
            "pullwake-server",
        ]

        # the generated rules are loaded and Alertmanager is wired
        groups = prom(prom_url, "/api/v1/rules")["groups"]
        alerts = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
        assert "PullWakeStreamConnectedWhileHeartbeatsFailing" in alerts
        ams = prom(prom_url, "/api/v1/alertmanagers")["activeAlertmanagers"]
        assert len(ams) == 1
        am_base = ams[0]["url"].split("/api/")[0]
        _, _, am_status = http_json("GET", f"{am_base}/api/v2/status")
        assert f"url: {sink_url}/" in am_status["config"]["original"]

        # a wake flows end to end: publisher -> server -> stream -> claim -> handler,
        # for both runners, as Prometheus saw it on the runners' /metrics
        wakes = catalog.WAKES.prom_name
        rid = catalog.prom_label(catalog.RUNNER_ID)
        query = f'sum by ({rid}) ({wakes}{{outcome="{WakeOutcome.HANDLED}"}}) > 0'

        def handled() -> set[str] | None:
            result = prom(prom_url, "/api/v1/query", query=query)["result"]
            got = {r["metric"][rid] for r in result}
            return got if got == {"runner-1", "runner-2"} else None

        with_output(proc, handled, 30, "handled wakes for both runners")

        # a crashed child is restarted by the stack
        runner_pid = int(banner_value(proc, r"runner-1\s+pid (\d+)"))
        os.kill(runner_pid, signal.SIGKILL)
        wait_until(
            lambda: "runner-1 exited with -9; restarting" in proc.output(),
            15,
            what="crash restart line",
        )
        with_output(proc, lambda: len(stack_pids(stack_id)) == 7, 10, "7 stack processes again")

        # Ctrl-C: everything stops, exit 0, nothing carrying the stack id is left
        proc.signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, proc.output()
        assert "stopped 7 processes" in proc.output()
        assert stack_pids(stack_id) == []
    finally:
        proc.stop(signal.SIGINT, timeout=30)


def test_stack_up_chaos_kills_and_restarts_the_server(tmp_path: Path) -> None:
    proc = stack_proc(
        tmp_path,
        "--runners",
        "1",
        "--legacy-runners",
        "0",
        "--chaos",
        "--chaos-up",
        "6",
        "--chaos-down",
        "1",
        "--duration",
        "120",
    )
    proc.start()
    try:
        wait_up(proc)
        server = banner_value(proc, r"server\s+(http://\S+)")
        stack_id = banner_value(proc, r"stack id (\S+) ")
        with_output(proc, lambda: "chaos: server restarted" in proc.output(), 30, "a chaos cycle")
        assert "chaos: server SIGKILLed (exit -9)" in proc.output()
        # the restarted server serves again (it has --chaos-up seconds before the next kill)
        with_output(
            proc,
            lambda: http_json("GET", f"{server}/healthz", timeout=1.0)[0] == 200,
            15,
            "restarted server healthy",
        )
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.output()
        assert stack_pids(stack_id) == []
    finally:
        proc.stop(signal.SIGINT, timeout=30)


def test_sigint_during_start_stops_what_was_started(tmp_path: Path) -> None:
    proc = stack_proc(tmp_path, "--duration", "120")
    proc.start()
    try:
        wait_until(lambda: "alertmanager   pid" in proc.output(), 30, what="alertmanager started")
        stack_id = banner_value(proc, r"stack id (\S+) ")
        proc.signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, proc.output()
        assert "pullwake stack is up" not in proc.output()
        assert "error" not in proc.output()
        assert stack_pids(stack_id) == []
    finally:
        proc.stop(signal.SIGINT, timeout=30)


def test_grafana_and_collector_join_when_their_binaries_exist(tmp_path: Path) -> None:
    """With (fake) grafana and otelcol-contrib on PATH they start, wired to the stack."""
    out = tmp_path / "fakes"
    out.mkdir()
    home = install_fakes(tmp_path / "bin", out)
    env = {
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "GRAFANA_HOME": str(home),
    }
    argv = [sys.executable, "-m", "pullwake", "stack", "up", "--workdir", str(tmp_path / "w")]
    proc = Proc([*argv, "--runners", "1", "--duration", "120"], tmp_path / "stack.log", env)
    proc.start()
    try:
        wait_up(proc)
        assert "skipped" not in proc.output()
        stack_id = banner_value(proc, r"stack id (\S+) ")
        prom_url = banner_value(proc, r"Prometheus\s+(http://\S+)")
        grafana_url = banner_value(proc, r"  Grafana\s+(http://\S+)")
        assert "otlp grpc 127.0.0.1:" in banner_value(proc, r"  collector\s+(.+)")
        grafana = json.loads((out / "grafana.json").read_text())
        assert grafana_url == f"http://127.0.0.1:{grafana['env']['GF_SERVER_HTTP_PORT']}"
        assert Path(grafana["env"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]).is_file()
        assert grafana["argv"][1:] == ["server", f"--homepath={home}"]
        prov = Path(grafana["env"]["GF_PATHS_PROVISIONING"])
        datasources = yaml.safe_load((prov / "datasources" / "datasources.yml").read_text())
        urls = {d["uid"]: d["url"] for d in datasources["datasources"]}
        assert urls["prometheus"] == prom_url
        providers = yaml.safe_load((prov / "dashboards" / "dashboards.yml").read_text())
        assert all(Path(p["options"]["path"]).is_dir() for p in providers["providers"])
        collector = json.loads((out / "otelcol-contrib.json").read_text())
        grpc = collector["config"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
        # the server and the runner export OTLP to it
        server_pid = int(banner_value(proc, r"server\s+pid (\d+)"))
        environ = Path(f"/proc/{server_pid}/environ").read_bytes().split(b"\0")
        assert f"OTEL_EXPORTER_OTLP_ENDPOINT=http://{grpc}".encode() in environ
        proc.signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, proc.output()
        assert "stopped 8 processes" in proc.output()  # 6 + collector + grafana
        assert stack_pids(stack_id) == []
    finally:
        proc.stop(signal.SIGINT, timeout=30)


def test_failed_start_says_which_child_and_keeps_its_log(tmp_path: Path) -> None:
    """A child that dies at start: one error naming it, its log kept, nothing left running."""
    fake = tmp_path / "bin" / "prometheus"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'listen tcp: bind: address already in use' >&2\nexit 3\n")
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    proc = Proc([sys.executable, "-m", "pullwake", "stack", "up"], tmp_path / "stack.log", env)
    proc.start()
    try:
        assert proc.wait(timeout=60) == 1, proc.output()
    finally:
        proc.stop(signal.SIGINT, timeout=30)
    out = proc.output()
    assert "error: prometheus exited with 3 before ready" in out, out
    assert "address already in use" in out
    log = Path(banner_value(proc, r"log (\S+/prometheus\.log)"))
    assert "address already in use" in log.read_text()
    assert "Traceback" not in out and "pullwake stack is up" not in out
    assert stack_pids(banner_value(proc, r"stack id (\S+) ")) == []
