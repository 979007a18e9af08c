"""Reading the generated dashboards back: targets, expressions, Grafana macros."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pullwake.dashboards.build import DASHBOARDS, dashboard_path
from pullwake.dashboards.config import Config


def load(out: Path, config: Config) -> dict[str, dict[str, Any]]:
    return {key: json.loads((out / dashboard_path(config, key)).read_text()) for key in DASHBOARDS}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dashboard.get("panels", []):
        yield p
        yield from p.get("panels", []) or []


def prom_targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every Prometheus query on the dashboard."""
    for p in panels(dashboard):
        for t in p.get("targets") or []:
            if (t.get("datasource") or {}).get("type") == "prometheus":
                yield p["title"], t


def concrete(expr: str, runner_id: str = "r1", rate_interval: str = "1m") -> str:
    """Replace the Grafana variables a panel expression may use."""
    return expr.replace("$runner_id", runner_id).replace("$__rate_interval", rate_interval)
