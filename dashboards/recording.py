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
        Recording(
            "server_mismatch_runners",
            "fleet",
            c.SERVER_STREAM_MISMATCH,
            "runners",
            f"count({q.server_sees_no_stream(config)}) or vector(0)",
            "server 'Client says connected, server sees no stream': a stat whose range query "
            "counted every runner's mismatch gauge at every step of the hour",
        ),
    )


# --- rules other groups evaluate first, for their own expressions --------------------
def alert_recordings(config: Config) -> list[dict[str, Any]]:
    """First in the alerts group: what several alerts read, computed once per evaluation.

    In the same group, so every alert reads this evaluation's value (the
    promtool cases see exactly what they saw before): the freshness guard of the
    per-runner alerts, which took all runners' timestamps in each of them.
    """
    return [{"record": q.FRESH_RECORD, "expr": q.fresh(config)}]


def bucket_rate_name(config: Config, metric: c.Metric) -> str:
    """The fleet's per-bucket rate of a classic histogram: `le:<metric>_bucket:rate5m`."""
    return f"le:{metric.prom_name}_bucket:rate{config.rate_window}"


def bucket_rate_rule(config: Config, metric: c.Metric) -> dict[str, Any]:
    """Recorded before the quantiles that read it (p50 and p99 read every bucket once)."""
    return {
        "record": bucket_rate_name(config, metric),
        "expr": q.bucket_rate(config, metric, config.rate_window),
    }


def recording_names(config: Config) -> dict[str, str]:
    """Key -> every recorded series name defined here (the fleet group's, for the
    dashboards, and the ones the alerts and recording groups evaluate first)."""
    out = {r.key: r.record for r in recordings(config)}
    out["fresh"] = q.FRESH_RECORD
    out["wake_latency_bucket_rate"] = bucket_rate_name(config, c.WAKE_LATENCY)
    return out


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
