"""Prometheus alerting and recording rules, as plain data ready for YAML.

Alerts are declared as `Alert` values (expression, severity, `for:` field,
static summary, description); `alert_rules` adds `for`, `severity`,
`summary`, `description` and `runbook_url` to every one of them in one place.
Descriptions are written once with `{runner}` and `{value}` placeholders:
`Alert.annotations` renders them as Go templates for Prometheus, and
`Alert.rendered` renders them as Prometheus would for a given label set, so
the generated `promtool test rules` cases can assert exact annotations.

Recording rules follow `level:metric:operation`; the dashboards read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pullwake.core import catalog as c
from pullwake.dashboards import queries as q
from pullwake.dashboards import recording, slo
from pullwake.dashboards.config import Config

Severity = Literal["critical", "warning"]

# Alert groups (all in pullwake-alerts.yml).  Prometheus evaluates groups
# concurrently; at 10,000 runners one group of every alert took 1.3-2.2 s per
# evaluation (bench/bench_fleet.py), so the per-runner joins are spread over four,
# each well under a second.  The freshness guard is recorded first in ALERTS; the
# other groups read its latest value (one evaluation interval old at most, next to
# the guard's 90 s), and promtool evaluates ALERTS first (`group_order`).
ALERTS = "pullwake-alerts"  # the guard, heartbeats, the server's view
STREAM_ALERTS = "pullwake-alerts-stream"  # not streaming, stale, reconnect storms
WAKE_ALERTS = "pullwake-alerts-wakes"  # wake latency (every runner's buckets), lost claims
ABSENT_ALERTS = "pullwake-alerts-absent"  # telemetry absent (every runner over the lookback)
ALERT_GROUPS = (ALERTS, STREAM_ALERTS, WAKE_ALERTS, ABSENT_ALERTS)
# The same for the recording rules (pullwake-recording.yml), by what they read.
RECORDING = "pullwake-recording"  # heartbeats
RECONNECT_RECORDING = "pullwake-recording-reconnects"
LATENCY_RECORDING = "pullwake-recording-latency"  # the fleet's latency buckets, quantiles
RECORDING_GROUPS = (RECORDING, RECONNECT_RECORDING, LATENCY_RECORDING)


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    severity: Severity
    for_field: str  # attribute of `ForDurations`
    summary: str
    description: str  # `{runner}` and `{value}` placeholders
    group: str = ALERTS

    def annotations(self, config: Config) -> dict[str, str]:
        return {
            "summary": self.summary,
            "description": self.description.format(
                runner="{{ $labels." + q.RUNNER + " }}", value="{{ $value | humanize }}"
            ),
            "runbook_url": config.runbook_url(self.name),
        }

    def rendered(self, config: Config, runner: str, value: float = 0.0) -> dict[str, str]:
        """The annotations Prometheus will render for this runner and value."""
        out = self.annotations(config)
        out["description"] = self.description.format(runner=runner, value=humanize(value))
        return out


def humanize(value: float) -> str:
    """Go template `humanize` for the plain range tests use (1 <= |v| < 1000, or 0)."""
    if value != 0 and not 1 <= abs(value) < 1000:
        raise ValueError(f"humanize() here covers 1..1000 only, got {value}")
    return f"{value:.4g}"


def alerts(config: Config) -> tuple[Alert, ...]:
    """Every alert; the per-runner ones only while the runner's samples are fresh.

    `q.guarded`: pushed (OTLP) series carry no staleness marker, so without it a
    dead runner's last values would keep its alerts firing for the lookback;
    PullWakeRunnerTelemetryAbsent is the alert for a runner gone silent.
    """
    t = config.thresholds

    def g(expr: str) -> str:
        return q.guarded(config, expr)

    return (
        Alert(
            "PullWakeStreamConnectedWhileHeartbeatsFailing",
            g(q.connected_while_heartbeats_failing(config)),
            "critical",
            "stream_connected_while_heartbeats_failing",
            "A runner reports its wake stream connected while its heartbeats fail.",
            "Runner {runner} says its wake stream is connected, but its heartbeats have "
            f"failed {t.heartbeat_failures} or more times in a row (or none succeeded for "
            f"{t.heartbeat_stale_seconds:g}s): the stream is almost certainly dead and wakes "
            "are not being delivered.",
        ),
        Alert(
            "PullWakeHeartbeatsFailing",
            g(q.heartbeats_failing(config)),
            "warning",
            "heartbeats_failing",
            "A runner's heartbeats are failing.",
            f"Runner {{runner}} has failed {t.heartbeat_failures} or more heartbeats in a row "
            f"(or none succeeded for {t.heartbeat_stale_seconds:g}s); its lease will expire.",
        ),
        Alert(
            "PullWakeRunnerNotStreaming",
            g(q.not_streaming(config)),
            "warning",
            "runner_not_streaming",
            "A runner is stuck connecting or reconnecting.",
            "Runner {runner} has been connecting or reconnecting to its wake stream without "
            "getting through; it receives no wakes.",
            STREAM_ALERTS,
        ),
        Alert(
            "PullWakeReconnectStorm",
            g(
                f"{q.failure_reconnects(config, t.reconnect_storm_window)}"
                f" >= {t.reconnect_storm_count}"
            ),
            "warning",
            "reconnect_storm",
            "A runner's wake stream keeps failing and reconnecting.",
            "Runner {runner} reconnected {value} times after failures in the last "
            f"{t.reconnect_storm_window} (planned rotations not counted).",
            STREAM_ALERTS,
        ),
        Alert(
            "PullWakeStreamStale",
            g(q.stream_stale(config)),
            "warning",
            "stream_stale",
            "A runner's connected wake stream has gone silent.",
            "Runner {runner} reports its wake stream connected but has read no byte for "
            "{value}s, longer than the keepalive allows.",
            STREAM_ALERTS,
        ),
        Alert(
            "PullWakeRunnerTelemetryAbsent",
            q.telemetry_absent(config),
            "warning",
            "telemetry_absent",
            "A runner stopped reporting metrics.",
            f"Runner {{runner}} reported metrics within the last "
            f"{t.telemetry_absent_lookback} but reports none now.",
            ABSENT_ALERTS,
        ),
        Alert(
            "PullWakeWakeLatencyHigh",
            g(f"{q.wake_latency_p99_by_runner(config)} > {t.wake_latency_p99_seconds:g}"),
            "warning",
            "wake_latency_high",
            "Wakes take too long to reach their runner's handler.",
            "p99 wake latency of runner {runner} is {value}s "
            f"(threshold {t.wake_latency_p99_seconds:g}s).",
            WAKE_ALERTS,
        ),
        Alert(
            "PullWakeServerSeesNoStream",
            q.server_sees_no_stream(config),
            "critical",
            "server_sees_no_stream",
            "A runner says its stream is connected but the server has no open read.",
            "The server holds no open read of runner {runner}'s wake stream although the "
            "runner's last diagnostics say stream_connected: wakes published now wait.",
        ),
        Alert(
            "PullWakeCompletionsFenced",
            g(f"{q.claims_lost(config, t.completions_fenced_window)} > 0"),
            "warning",
            "completions_fenced",
            "A runner keeps losing its claims: completions or lease heartbeats refused.",
            "Runner {runner} lost {value} claims (completion or lease heartbeat refused as "
            f"fenced or rejected) in the last {t.completions_fenced_window}, and has for a "
            "while: its handlers outlive their 30 s claim lease, so the server announces the "
            "work again and it is done twice.",
            WAKE_ALERTS,
        ),
    )


def _alert_rule(config: Config, a: Alert) -> dict[str, Any]:
    return {
        "alert": a.name,
        "expr": a.expr,
        "for": getattr(config.for_, a.for_field),
        "labels": {"severity": a.severity},
        "annotations": a.annotations(config),
    }


def alert_rules(config: Config) -> list[dict[str, Any]]:
    """Every alert with for/severity/annotations added in exactly one place."""
    return [_alert_rule(config, a) for a in alerts(config)]


def alert_groups(config: Config) -> list[dict[str, Any]]:
    """ALERTS (the freshness guard first), then the others."""
    interval = config.rule_evaluation_interval
    out = []
    for name in ALERT_GROUPS:
        first = recording.alert_recordings(config) if name == ALERTS else []
        rules = [_alert_rule(config, a) for a in alerts(config) if a.group == name]
        out.append({"name": name, "interval": interval, "rules": first + rules})
    return out


def group_order(config: Config) -> list[str]:
    """The alert groups in the order a promtool case evaluates them (`group_eval_order`):
    the guard's group first, so every alert sees this evaluation's guard, as in one group."""
    return [g["name"] for g in alert_groups(config)]


# --- recording rules (level:metric:operation) ---------------------------------------
def _rec(level: str, metric: c.Metric, operation: str) -> str:
    return f"{level}:{metric.prom_name}:{operation}"


def recording_names(config: Config) -> dict[str, str]:
    """Short keys -> recorded series names, for the dashboards."""
    w = config.rate_window
    return {
        "reconnect_rate": _rec(q.REASON, c.STREAM_RECONNECTS, f"rate{w}"),
        "reconnects_1h": _rec(q.RUNNER, c.STREAM_RECONNECTS, "increase1h"),
        "heartbeat_failure_rate": _rec(q.ERROR_TYPE, c.HEARTBEAT_FAILURES, f"rate{w}"),
        "wake_latency_quantile": _rec("quantile", c.WAKE_LATENCY, f"histogram_quantile{w}"),
        "heartbeat_age": _rec(q.RUNNER, c.HEARTBEAT_LAST_SUCCESS, "age"),
        "connected_while_failing": _rec(q.RUNNER, c.STREAM_CONNECTED, "heartbeats_failing"),
    }


def recording_rules(config: Config) -> list[dict[str, Any]]:
    """Every recording rule of pullwake-recording.yml (every group, in order)."""
    return [r for g in recording_groups(config) for r in g["rules"]]


def recording_groups(config: Config) -> list[dict[str, Any]]:
    interval = config.rule_evaluation_interval
    return [
        {"name": name, "interval": interval, "rules": rules}
        for name, rules in (
            (RECORDING, heartbeat_recording_rules(config)),
            (RECONNECT_RECORDING, reconnect_recording_rules(config)),
            (LATENCY_RECORDING, latency_recording_rules(config)),
        )
    ]


def reconnect_recording_rules(config: Config) -> list[dict[str, Any]]:
    w = config.rate_window
    n = recording_names(config)
    return [
        {
            "record": n["reconnect_rate"],
            "expr": q.rate_by(config, c.STREAM_RECONNECTS, w, (q.REASON,)),
        },
        {
            "record": n["reconnects_1h"],
            "expr": q.increase_by(config, c.STREAM_RECONNECTS, "1h", (q.RUNNER,)),
        },
    ]


def heartbeat_recording_rules(config: Config) -> list[dict[str, Any]]:
    w = config.rate_window
    n = recording_names(config)
    rules: list[dict[str, Any]] = [
        {
            "record": n["heartbeat_failure_rate"],
            "expr": q.rate_by(config, c.HEARTBEAT_FAILURES, w, (q.ERROR_TYPE,)),
        },
        {"record": n["heartbeat_age"], "expr": q.seconds_since_heartbeat_success(config)},
        {
            "record": n["connected_while_failing"],
            # the critical alert's condition, freshness guard included
            "expr": q.guarded(config, q.connected_while_heartbeats_failing(config)),
        },
    ]
    return rules


def latency_recording_rules(config: Config) -> list[dict[str, Any]]:
    """Every bucket of the fleet's wake latency once, then the quantiles from it."""
    w = config.rate_window
    n = recording_names(config)
    rules: list[dict[str, Any]] = []
    for key, metric in (("wake_latency_quantile", c.WAKE_LATENCY),):
        # every bucket's rate once, then the quantiles from it (dashboards.recording)
        rules.append(recording.bucket_rate_rule(config, metric))
        for quant in (0.5, 0.99):
            rate = recording.bucket_rate_name(config, metric)
            rules.append(
                {
                    "record": n[key],
                    "expr": q.quantile(config, quant, metric, w, classic_rate=rate),
                    "labels": {"quantile": f"{quant:g}"},
                }
            )
    return rules


def rule_files(config: Config) -> dict[str, dict[str, Any]]:
    """File name -> rule file content (`deploy/prometheus/rules/`)."""
    return {
        "pullwake-alerts.yml": {"groups": alert_groups(config)},
        "pullwake-recording.yml": {"groups": recording_groups(config)},
        "pullwake-slo.yml": slo.rule_file(config),
    }
