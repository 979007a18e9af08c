"""The optional pieces of `pullwake stack up`: Grafana and the OpenTelemetry Collector.

They join the native stack only when their binaries are on this machine (no
registry here provides them).  Pure like `pullwake.tools.stackplan`: generated
configs and child specs, nothing started.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pullwake.tools.stackplan import LOOPBACK, Ports, Step, url


def collector_config(source: Mapping[str, Any], ports: Ports) -> dict[str, Any]:
    """otel-collector/config.yaml moved to loopback, exporting to `debug`.

    Natively there is no trace store and Debian's Prometheus has no OTLP receiver,
    so the collector only proves the OTLP path (`debug` logs what arrives).
    """
    out = copy.deepcopy(dict(source))
    out["extensions"] = {"health_check": {"endpoint": f"{LOOPBACK}:{ports.collector_health}"}}
    out["receivers"] = {
        "otlp": {
            "protocols": {
                "grpc": {"endpoint": f"{LOOPBACK}:{ports.otlp_grpc}"},
                "http": {"endpoint": f"{LOOPBACK}:{ports.otlp_http}"},
            }
        }
    }
    out["exporters"] = {"debug": {"verbosity": "basic"}}
    service = dict(out.get("service") or {})
    service["extensions"] = ["health_check"]
    service["telemetry"] = {"metrics": {"level": "none"}}
    pipelines = {}
    for name, pipe in (service.get("pipelines") or {}).items():
        pipelines[name] = {**pipe, "receivers": ["otlp"], "exporters": ["debug"]}
    service["pipelines"] = pipelines
    out["service"] = service
    return out


def collector_step(binary: str, workdir: Path, ports: Ports) -> Step:
    return Step(
        "otel-collector",
        (binary, f"--config={workdir / 'otel-collector.yaml'}"),
        ready_url=url(ports.collector_health, "/"),
        show=f"otlp grpc {LOOPBACK}:{ports.otlp_grpc}, http {LOOPBACK}:{ports.otlp_http}",
    )


def grafana_datasources(source: Mapping[str, Any], ports: Ports) -> dict[str, Any]:
    """The generated datasources on loopback; Tempo is dropped (no trace store natively)."""
    out = copy.deepcopy(dict(source))
    kept = []
    for ds in out.get("datasources") or []:
        if ds.get("type") == "prometheus":
            ds["url"] = url(ports.prometheus)
            (ds.get("jsonData") or {}).pop("exemplarTraceIdDestinations", None)
        elif ds.get("type") == "alertmanager":
            ds["url"] = url(ports.alertmanager)
        else:
            continue
        kept.append(ds)
    out["datasources"] = kept
    return out


def grafana_dashboards(source: Mapping[str, Any], dashboards_dir: Path) -> dict[str, Any]:
    """The dashboard provider pointed at the checkout's generated dashboards."""
    out = copy.deepcopy(dict(source))
    for provider in out.get("providers") or []:
        provider.setdefault("options", {})["path"] = str(dashboards_dir)
    return out


HOME_DASHBOARD = "pullwake-fleet.json"  # as GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH in compose


def grafana_step(
    binary: str, homepath: Path, workdir: Path, ports: Ports, dashboards_dir: Path | None = None
) -> Step:
    """Grafana set up as in docker-compose.yml: anonymous viewers, no sign-up, the fleet
    dashboard as home.  The admin password is Grafana's own unless GF_SECURITY_ADMIN_PASSWORD
    is in the caller's environment (children inherit it)."""
    argv: tuple[str, ...] = (binary, f"--homepath={homepath}")
    if Path(binary).name == "grafana":  # the new single binary: `grafana server`
        argv = (binary, "server", f"--homepath={homepath}")
    env = {
        "GF_SERVER_HTTP_ADDR": LOOPBACK,
        "GF_SERVER_HTTP_PORT": str(ports.grafana),
        "GF_PATHS_DATA": str(workdir / "grafana-data"),
        "GF_PATHS_LOGS": str(workdir / "grafana-data" / "log"),
        "GF_PATHS_PROVISIONING": str(workdir / "grafana-provisioning"),
        "GF_AUTH_ANONYMOUS_ENABLED": "true",
        "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
        "GF_USERS_ALLOW_SIGN_UP": "false",
        "GF_ANALYTICS_REPORTING_ENABLED": "false",
        "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
    }
    if dashboards_dir is not None and (dashboards_dir / HOME_DASHBOARD).is_file():
        env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] = str(dashboards_dir / HOME_DASHBOARD)
    return Step(
        "grafana",
        argv,
        ready_url=url(ports.grafana, "/api/health"),
        env=env,
        show=url(ports.grafana),
    )
