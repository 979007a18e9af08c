"""What `pullwake stack up` runs, as data: ports, child specs and generated configs.

Pure on purpose (no sockets, no processes): the same plan is checked by unit
tests and `promtool`/`amtool` without starting anything, and `pullwake.tools.stackrun`
only carries it out.  The native stack mirrors docker-compose.yml on loopback:
the same rules and Alertmanager routes (with the webhook pointed at the local
sink), but Prometheus scrapes each process's `/metrics` because Debian's
Prometheus has no OTLP receiver.
"""

from __future__ import annotations

import copy
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LOOPBACK = "127.0.0.1"
SCRAPE_INTERVAL = "5s"  # a local stack: fast enough to watch a reconnect happen

# Offsets from --base-port, so a fixed base gives memorable, non-overlapping ports.
_OFFSETS = {
    "server": 0,
    "prometheus": 1,
    "alertmanager": 2,
    "sink": 3,
    "grafana": 4,
    "otlp_grpc": 5,
    "otlp_http": 6,
    "collector_health": 7,
}
_RUNNER_OFFSET = 10


@dataclass(frozen=True)
class Ports:
    server: int
    prometheus: int
    alertmanager: int
    sink: int
    grafana: int
    otlp_grpc: int
    otlp_http: int
    collector_health: int
    runners: tuple[int, ...]

    def all(self) -> list[int]:
        fixed = [getattr(self, name) for name in _OFFSETS]
        return [*fixed, *self.runners]


def ports_from_base(base: int, runners: int) -> Ports:
    """Fixed layout: base+0 server, +1 Prometheus, +2 Alertmanager, +3 sink, ... +10.. runners."""
    top = base + _RUNNER_OFFSET + runners - 1
    if base < 1024 or top > 65535:
        raise ValueError(f"--base-port {base} needs ports {base}..{top} within 1024..65535")
    named = {name: base + off for name, off in _OFFSETS.items()}
    return Ports(**named, runners=tuple(base + _RUNNER_OFFSET + i for i in range(runners)))


def ports_needed(runners: int) -> int:
    return len(_OFFSETS) + runners


def ports_from_list(free: Sequence[int], runners: int) -> Ports:
    """Ports handed out by the OS (bind 0): the first len(_OFFSETS) fixed, the rest runners."""
    n = len(_OFFSETS)
    if len(free) != n + runners:
        raise ValueError(f"need {n + runners} ports, got {len(free)}")
    named = dict(zip(_OFFSETS, free[:n], strict=True))
    return Ports(**named, runners=tuple(free[n:]))


def url(port: int, path: str = "") -> str:
    return f"http://{LOOPBACK}:{port}{path}"


@dataclass(frozen=True)
class RunnerPlan:
    runner_id: str
    port: int
    profile: str  # "default" or "legacy"


def runner_plans(ports: Ports, legacy: int) -> list[RunnerPlan]:
    """runner-1 .. runner-N; the last `legacy` of them run the seed's legacy profile."""
    n = len(ports.runners)
    if not 0 <= legacy <= n:
        raise ValueError(f"--legacy-runners must be between 0 and --runners ({n}), got {legacy}")
    return [
        RunnerPlan(f"runner-{i + 1}", port, "legacy" if i >= n - legacy else "default")
        for i, port in enumerate(ports.runners)
    ]


# --- Prometheus --------------------------------------------------------------------
def prometheus_config(
    ports: Ports, runners: Sequence[RunnerPlan], rules_dir: Path
) -> dict[str, Any]:
    """The loopback twin of deploy/prometheus/prometheus.yml: scrape instead of OTLP."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": "15s"},
        "rule_files": [str(rules_dir / "*.yml")],
        "alerting": {
            "alertmanagers": [
                {"static_configs": [{"targets": [f"{LOOPBACK}:{ports.alertmanager}"]}]}
            ]
        },
        "scrape_configs": [
            _job("prometheus", [ports.prometheus]),
            _job("alertmanager", [ports.alertmanager]),
            _job("pullwake-server", [ports.server]),
            _job("pullwake-runner", [r.port for r in runners]),
        ],
    }


def _job(name: str, ports: Sequence[int]) -> dict[str, Any]:
    return {"job_name": name, "static_configs": [{"targets": [f"{LOOPBACK}:{p}" for p in ports]}]}


def scrape_targets(config: Mapping[str, Any]) -> set[str]:
    """Every `host:port` a Prometheus config scrapes (what /api/v1/targets must show up)."""
    return {
        t
        for job in config.get("scrape_configs", [])
        for sc in job.get("static_configs", [])
        for t in sc.get("targets", [])
    }


# --- Alertmanager ------------------------------------------------------------------
def alertmanager_config(source: Mapping[str, Any], sink_url: str) -> dict[str, Any]:
    """deploy/alertmanager/alertmanager.yml with every webhook pointed at the local sink.

    Only scheme, host and port change; the path each receiver posts to is kept.
    """
    out = copy.deepcopy(dict(source))
    sink = urllib.parse.urlsplit(sink_url)
    found = 0
    for receiver in out.get("receivers") or []:
        for hook in receiver.get("webhook_configs") or []:
            if "url" in hook:
                old = urllib.parse.urlsplit(str(hook["url"]))
                hook["url"] = urllib.parse.urlunsplit(
                    (sink.scheme, sink.netloc, old.path or "/", old.query, "")
                )
                found += 1
    if not found:
        raise ValueError("the Alertmanager config has no webhook_configs url to point at the sink")
    return out


# --- the children --------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One child of the native stack: argv, environment and how to tell it is ready."""

    name: str
    argv: tuple[str, ...]
    ready_url: str | None = None  # GET answers 200
    ready_port: int | None = None  # TCP connect succeeds
    env: Mapping[str, str] = field(default_factory=dict)
    show: str | None = None  # the URL printed for a person


def pullwake_argv(*args: str) -> tuple[str, ...]:
    """Run pullwake with this very interpreter (a venv's `pullwake` may not be on PATH)."""
    return (sys.executable, "-m", "pullwake", *args)


def plan_steps(
    ports: Ports,
    runners: Sequence[RunnerPlan],
    workdir: Path,
    *,
    prometheus_bin: str = "prometheus",
    alertmanager_bin: str = "prometheus-alertmanager",
    otlp_endpoint: str | None = None,
    publish_every: float = 2.0,
) -> list[Step]:
    """Children in start order: sink, Alertmanager, Prometheus, server, runners, publisher."""
    server_url = url(ports.server)
    # Telemetry is the point of this stack: an OTEL_SDK_DISABLED=true inherited from
    # the caller's shell (or a test harness) would leave every /metrics empty.
    otel = {"OTEL_SDK_DISABLED": "false"}
    if otlp_endpoint:
        otel["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
    steps = [
        Step(
            "alert-sink",
            pullwake_argv(
                "alerts",
                "sink",
                "--listen",
                f"{LOOPBACK}:{ports.sink}",
                "--record",
                str(workdir / "alerts.jsonl"),
            ),
            ready_url=url(ports.sink, "/alerts"),
            show=url(ports.sink),
        ),
        Step(
            "alertmanager",
            (
                alertmanager_bin,
                f"--config.file={workdir / 'alertmanager.yml'}",
                f"--storage.path={workdir / 'alertmanager-data'}",
                f"--web.listen-address={LOOPBACK}:{ports.alertmanager}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ),
            ready_url=url(ports.alertmanager, "/-/ready"),
            show=url(ports.alertmanager),
        ),
        Step(
            "prometheus",
            (
                prometheus_bin,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                f"--web.listen-address={LOOPBACK}:{ports.prometheus}",
                "--enable-feature=exemplar-storage",
                "--log.level=warn",
            ),
            ready_url=url(ports.prometheus, "/-/ready"),
            show=url(ports.prometheus),
        ),
        Step(
            "server",
            pullwake_argv(
                "server",
                "--host",
                LOOPBACK,
                "--port",
                str(ports.server),
                "--db",
                str(workdir / "server.db"),
                "--dev",
            ),
            ready_url=url(ports.server, "/healthz"),
            env={**otel, "OTEL_SERVICE_NAME": "pullwake-server"},
            show=server_url,
        ),
    ]
    for r in runners:
        argv = pullwake_argv(
            "run",
            "--server",
            server_url,
            "--runner-id",
            r.runner_id,
            "--status-listen",
            f"{LOOPBACK}:{r.port}",
        )
        if r.profile != "default":
            argv = (*argv, "--profile", r.profile)
        steps.append(
            Step(
                r.runner_id,
                argv,
                ready_url=url(r.port, "/healthz"),
                env={**otel, "OTEL_SERVICE_NAME": "pullwake-runner"},
                show=url(r.port, "/status"),
            )
        )
    trickle = ["stack", "trickle", "--server", server_url, "--every", f"{publish_every:g}"]
    for r in runners:
        trickle += ["--runner-id", r.runner_id]
    steps.append(Step("publisher", pullwake_argv(*trickle)))
    return steps


def dump_yaml(data: Mapping[str, Any]) -> str:
    header = "# Generated by `pullwake stack up` for this run; do not edit.\n"
    return header + yaml.safe_dump(dict(data), sort_keys=False)
