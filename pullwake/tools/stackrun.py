"""Carry out a `pullwake stack up` plan: write configs, start children, watch, stop.

The plan (ports, argv, generated configs) is `pullwake.tools.stackplan`; this
module is the edge that touches files, binaries and processes.  Every file it
needs is written into the run's workdir: the rules, Alertmanager config and
Grafana dashboards straight from the dashboards package (in-process, the same
code as `pullwake dashboards build`), the collector config from package data.
Nothing is read from a checkout, so an installed wheel works from any directory.

Everything runs on one `Supervisor` from the main thread (its parent-death
signal is tied to the thread that starts a child), including chaos kills and
crash restarts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pullwake.core.errors import CLIError
from pullwake.tools import stackoptional as opt
from pullwake.tools import stackplan as sp
from pullwake.tools.supervise import (
    ChildSpec,
    HttpReady,
    PortReady,
    Readiness,
    Supervisor,
    SupervisorError,
)

MAX_CRASH_RESTARTS = 5
# Set in every child's environment so tests (and people) can find all of them.
STACK_ID_ENV = "PULLWAKE_STACK_ID"
GRAFANA_HOMES = (Path("/usr/share/grafana"), Path("/opt/grafana"))
# Banner names of the children that run only when their binaries exist.
OPTIONAL = {"grafana": "Grafana", "otel-collector": "collector"}


def say(line: str) -> None:
    print(f"stack: {line}", flush=True)


def _free_ports(n: int) -> list[int]:
    """n distinct loopback ports the OS just handed out (all held until all are read)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((sp.LOOPBACK, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def find_binary(names: Sequence[str]) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def make_workdir(requested: Path | None) -> tuple[Path, bool]:
    """(workdir, created_by_us): a temporary one is ours to remove."""
    if requested is None:
        return Path(tempfile.mkdtemp(prefix="pullwake-stack-")), True
    requested.mkdir(parents=True, exist_ok=True)
    return requested.resolve(), False


def new_stack_id() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def generate_deploy(out: Path) -> Path:
    """The dashboards package's files (rules, Alertmanager, Grafana) written under `out`."""
    from pullwake.dashboards.build import generate, write
    from pullwake.dashboards.config import DEFAULT

    write(out, generate(DEFAULT))
    return out


def collector_source() -> dict[str, Any]:
    """otel-collector/config.yaml, shipped as package data (pullwake/otel_collector/)."""
    ref = resources.files("pullwake").joinpath("otel_collector", "config.yaml")
    try:
        data = yaml.safe_load(ref.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CLIError(f"cannot read the packaged collector config: {exc}") from None
    if not isinstance(data, dict):
        raise CLIError("the packaged collector config is not a YAML mapping")
    return data


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CLIError(f"{path} is missing (run `pullwake dashboards build`)") from None
    except yaml.YAMLError as exc:
        raise CLIError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise CLIError(f"{path} is not a YAML mapping")
    return data


def _runner_line(r: sp.RunnerPlan) -> str:
    """A banner line; the legacy ones are flagged, they are the ones the seed's alert is about."""
    note = "  (legacy profile: the seed's runner)" if r.profile == "legacy" else ""
    return f"  {r.runner_id:<12} {sp.url(r.port, '/status')}{note}\n"


class StackRun:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deploy = Path()  # set by prepare(): <workdir>/deploy
        self.stack_id = new_stack_id()
        self.crashes: dict[str, int] = {}

    # --- preparing -------------------------------------------------------------------
    def _binaries(self) -> tuple[str, str]:
        prom = find_binary(["prometheus"])
        am = find_binary(["prometheus-alertmanager", "alertmanager"])
        missing = [n for n, b in (("prometheus", prom), ("prometheus-alertmanager", am)) if not b]
        if missing or prom is None or am is None:
            raise CLIError(
                f"{' and '.join(missing)} not found on PATH "
                "(apt-get install --no-install-recommends prometheus prometheus-alertmanager)"
            )
        return prom, am

    def _ports(self) -> sp.Ports:
        n = self.args.runners
        if self.args.base_port:
            return sp.ports_from_base(self.args.base_port, n)
        return sp.ports_from_list(_free_ports(sp.ports_needed(n)), n)

    def prepare(self, workdir: Path) -> list[sp.Step]:
        prom, am = self._binaries()
        self.deploy = generate_deploy(workdir / "deploy")
        ports = self._ports()
        runners = sp.runner_plans(ports, self.args.legacy_runners)
        prom_cfg = sp.prometheus_config(ports, runners, self.deploy / "prometheus" / "rules")
        am_src = _load_yaml(self.deploy / "alertmanager" / "alertmanager.yml")
        try:
            am_cfg = sp.alertmanager_config(am_src, sp.url(ports.sink, "/"))
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        (workdir / "prometheus.yml").write_text(sp.dump_yaml(prom_cfg))
        (workdir / "alertmanager.yml").write_text(sp.dump_yaml(am_cfg))

        collector = find_binary(["otelcol-contrib", "otelcol"])
        otlp = None
        if collector:
            src = collector_source()
            (workdir / "otel-collector.yaml").write_text(
                sp.dump_yaml(opt.collector_config(src, ports))
            )
            otlp = sp.url(ports.otlp_grpc)
        else:
            say(
                "otel-collector: skipped (no otelcol-contrib binary on PATH; `docker compose up` "
                "has it) - metrics are scraped from /metrics, no traces are exported"
            )
        steps = sp.plan_steps(
            ports,
            runners,
            workdir,
            prometheus_bin=prom,
            alertmanager_bin=am,
            otlp_endpoint=otlp,
            publish_every=self.args.publish_every,
        )
        if collector:
            steps.insert(3, opt.collector_step(collector, workdir, ports))
        grafana = self._grafana(workdir, ports)
        if grafana:
            steps.append(grafana)
        self.ports = ports
        self.runners = runners
        return steps

    def _grafana(self, workdir: Path, ports: sp.Ports) -> sp.Step | None:
        binary = find_binary(["grafana", "grafana-server"])
        homes = [Path(os.environ["GRAFANA_HOME"])] if os.environ.get("GRAFANA_HOME") else []
        homes += GRAFANA_HOMES
        home = next((h for h in homes if (h / "conf" / "defaults.ini").exists()), None)
        if not binary or home is None:
            say(
                "grafana: skipped (no grafana binary on PATH with a home in $GRAFANA_HOME or "
                "/usr/share/grafana; `docker compose up` has it) - use Prometheus' own UI below"
            )
            return None
        prov = workdir / "grafana-provisioning"
        for sub in ("datasources", "dashboards", "plugins", "alerting"):
            (prov / sub).mkdir(parents=True, exist_ok=True)
        src = self.deploy / "grafana" / "provisioning"
        ds = opt.grafana_datasources(_load_yaml(src / "datasources" / "datasources.yml"), ports)
        db = opt.grafana_dashboards(
            _load_yaml(src / "dashboards" / "dashboards.yml"),
            self.deploy / "grafana" / "dashboards",
        )
        (prov / "datasources" / "datasources.yml").write_text(sp.dump_yaml(ds))
        (prov / "dashboards" / "dashboards.yml").write_text(sp.dump_yaml(db))
        return opt.grafana_step(
            binary, home, workdir, ports, self.deploy / "grafana" / "dashboards"
        )

    def _spec(self, step: sp.Step, workdir: Path) -> ChildSpec:
        ready: Readiness | None = None
        if step.ready_url:
            ready = HttpReady(step.ready_url)
        elif step.ready_port:
            ready = PortReady(sp.LOOPBACK, step.ready_port)
        env = {**step.env, STACK_ID_ENV: self.stack_id, "PYTHONUNBUFFERED": "1"}
        return ChildSpec(
            step.name, step.argv, env=env, log=workdir / "logs" / f"{step.name}.log", ready=ready
        )

    # --- running -----------------------------------------------------------------------
    def run(self) -> int:
        workdir, ours = make_workdir(self.args.workdir)
        sup = Supervisor(grace=5.0)
        code = None
        try:
            # Signals count from here on: a Ctrl-C while configs are written still stops
            # cleanly, and no child is started after it.
            with sup.handle_signals():
                say(
                    f"stack id {self.stack_id} (in every child's {STACK_ID_ENV}), workdir {workdir}"
                )
                steps = self.prepare(workdir)
                code = self._supervise(sup, steps, workdir)
                return code
        finally:
            # A failed start names a child's log: keep the workdir so that log is there.
            if ours and not self.args.keep and not code:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                say(f"kept {workdir}" + (" (the logs of the failed start)" if code else ""))

    def _supervise(self, sup: Supervisor, steps: list[sp.Step], workdir: Path) -> int:
        try:
            for step in steps:
                if sup.stop_requested:
                    raise SupervisorError("stop requested during start")
                child = sup.start(self._spec(step, workdir), timeout=self.args.ready_timeout)
                say(f"{step.name:<14} pid {child.pid:<7} {step.show or ''}".rstrip())
            self._banner(steps, workdir)
            self._watch(sup)
        except SupervisorError as exc:
            if sup.stop_requested:  # Ctrl-C while a child was getting ready
                code = 0
            else:
                say(f"error: {exc}")
                code = 1
        else:
            code = 0
        finally:
            n = len(sup.pids())
            sup.stop_all()
            say(f"stopped {n} processes")
        return code

    def _banner(self, steps: list[sp.Step], workdir: Path) -> None:
        p = self.ports
        print(
            f"\npullwake stack is up (stack id {self.stack_id}; logs in {workdir / 'logs'})\n"
            f"  Prometheus   {sp.url(p.prometheus)}  (targets: /targets, alerts: /alerts)\n"
            f"  Alertmanager {sp.url(p.alertmanager)}\n"
            f"  alert sink   {sp.url(p.sink)}  (log: {workdir / 'logs' / 'alert-sink.log'})\n"
            f"  server       {sp.url(p.server)}\n"
            + "".join(_runner_line(r) for r in self.runners)
            + "".join(f"  {OPTIONAL[s.name]:<12} {s.show}\n" for s in steps if s.name in OPTIONAL)
            + "Look first at the runners' /status and Prometheus' alerts page.\n"
            + ("Chaos: the server is SIGKILLed on a schedule.\n" if self.args.chaos else "")
            + ("Stops by itself after --duration.\n" if self.args.duration else "")
            + "Ctrl-C stops everything.\n",
            flush=True,
        )

    def _watch(self, sup: Supervisor) -> None:
        start = time.monotonic()
        next_kill = start + self.args.chaos_up if self.args.chaos else None
        restart_at: float | None = None
        while not sup.sleep(0.25):
            now = time.monotonic()
            if self.args.duration and now - start >= self.args.duration:
                say(f"--duration {self.args.duration:g}s reached")
                return
            if next_kill is not None and now >= next_kill:
                code = sup.kill("server")
                say(f"chaos: server SIGKILLed (exit {code}); back in {self.args.chaos_down:g}s")
                next_kill, restart_at = None, now + self.args.chaos_down
            if restart_at is not None and now >= restart_at:
                child = sup.start(sup.child("server").spec, wait=False)
                say(f"chaos: server restarted (pid {child.pid})")
                restart_at, next_kill = None, now + self.args.chaos_up
            self._restart_crashed(sup)

    def _restart_crashed(self, sup: Supervisor) -> None:
        for child in sup.exited():
            n = self.crashes.get(child.name, 0)
            if n >= MAX_CRASH_RESTARTS:
                continue
            self.crashes[child.name] = n + 1
            tail = child.log_tail(5)
            say(
                f"{child.name} exited with {child.returncode}; restarting ({n + 1}/"
                f"{MAX_CRASH_RESTARTS})" + (f"; last output:\n{tail}" if tail else "")
            )
            with contextlib.suppress(SupervisorError):
                sup.start(child.spec, wait=False)
            if self.crashes[child.name] == MAX_CRASH_RESTARTS:
                say(f"{child.name}: giving up after {MAX_CRASH_RESTARTS} restarts")
