"""Recording rules for fleet scale: what a fleet panel would otherwise compute live.

`bench/bench_fleet.py` loads 10,000 runners' series into a real Prometheus
and times every dashboard query and rule group; a fleet panel whose range
query reads every runner's raw series over the dashboard's hour (tens of
millions of samples) gets a rule here, recorded once per evaluation, and the
panel reads the few recorded series instead.  The rules form their own group
(`pullwake-fleet`, file `pullwake-fleet.yml`) so their cost shows apart from
the alerts'.  Names follow `level:metric:operation`; `RECORDINGS` keys are
what the dashboards ask for.  `dashboards.recordingtests` checks each rule's
value with `promtool test rules`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pullwake.core import catalog as c
from pullwake.dashboards import queries as q
from pullwake.dashboards.config import Config

GROUP = "pullwake-fleet"
FILE = "pullwake-fleet.yml"


@dataclass(frozen=True)
class Recording:
    key: str  # what the dashboards ask for
    level: str  # the labels that survive (`level:metric:operation`)
    metric: c.Metric
    operation: str
    expr: str
    why: str  # which panel or alert reads it, and what it saves

    @property
    def record(self) -> str:
        return f"{self.level}:{self.metric.prom_name}:{self.operation}"


def recordings(config: Config) -> tuple[Recording, ...]:
    w = config.rate_window
    return (
        Recording(
            "wake_rate",
            q.OUTCOME,
            c.WAKES,
            f"rate{w}",
            q.rate_by(config, c.WAKES, w, (q.OUTCOME,)),
            "fleet 'Wakes by outcome': the range query read every runner's wake counters "
            "(one per outcome seen) over the hour at every step",
        ),
    )


def recording_names(config: Config) -> dict[str, str]:
    """Key -> recorded series name, for the dashboards."""
    return {r.key: r.record for r in recordings(config)}


def recording_rules(config: Config) -> list[dict[str, Any]]:
    return [{"record": r.record, "expr": r.expr} for r in recordings(config)]


def rule_file(config: Config) -> dict[str, Any]:
    """`deploy/prometheus/rules/pullwake-fleet.yml`."""
    return {
        "groups": [
            {
                "name": GROUP,
                "interval": config.rule_evaluation_interval,
                "rules": recording_rules(config),
            }
        ]
    }
