"""The one config object every generator reads (kubernetes-mixin's `_config`).

Everything a deployment may want to change lives here: datasource uids,
label selectors, alert thresholds and `for:` durations, dashboard uids, the
runbook base URL and the Alertmanager webhook.  It is frozen and typed; the
generators never read a module global, so a test can build the whole output
from `Config(...)` with durations scaled down (`Config.scaled`).

Durations are Prometheus duration strings ("30s", "2m"); `__post_init__`
checks every field, so a typo fails loudly when the object is made, not when
Prometheus rejects the generated file.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Final, Literal

Severity = Literal["critical", "warning"]

_DURATION_RE: Final = re.compile(r"^(\d+(ms|s|m|h|d))+$")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Prometheus duration -> seconds; ValueError for anything else."""
    if not _DURATION_RE.match(text):
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d)", text))


def format_duration(seconds: float) -> str:
    """Seconds -> the shortest exact Prometheus duration ("90s" -> "1m30s")."""
    ms = round(seconds * 1000)
    if ms <= 0:
        raise ValueError(f"duration must be positive: {seconds}")
    out = ""
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            out += f"{n}{unit}"
    return out


@dataclass(frozen=True)
class Datasources:
    """Fixed Grafana datasource uids (and in-stack URLs for provisioning)."""

    prometheus: str = "prometheus"
    tempo: str = "tempo"
    alertmanager: str = "alertmanager"
    loki: str = "loki"
    prometheus_url: str = "http://prometheus:9090"
    tempo_url: str = "http://tempo:3200"
    alertmanager_url: str = "http://alertmanager:9093"
    loki_url: str = "http://loki:3100"
    # Grafana's alert-groups panel picks its Alertmanager by datasource *name*
    # (not uid), so the provisioned name is fixed here too.
    alertmanager_name: str = "Alertmanager"
    # The span attribute exemplars carry the trace id under (Prometheus reader).
    exemplar_trace_id_label: str = "trace_id"


@dataclass(frozen=True)
class Thresholds:
    """Alert thresholds; see docs/runbooks.md for why each value."""

    # Consecutive heartbeat failures that count as "heartbeats failing".  The
    # default-profile runner resets its stream after 2; the critical alert
    # fires when a runner stays connected past that.
    heartbeat_failures: int = 2
    # Seconds since the last successful heartbeat that count as failing too
    # (covers a runner whose heartbeats hang instead of failing): past the 30 s
    # lease of the runner's 10 s default heartbeat interval, plus a timeout.
    heartbeat_stale_seconds: float = 45.0
    # Idle allowance when the runner's own watchdog is off (legacy profile).
    stream_idle_seconds: float = 60.0
    # Failure reconnects per runner within `reconnect_storm_window`.
    reconnect_storm_count: int = 5
    reconnect_storm_window: str = "10m"
    # p99 wake latency in seconds.
    wake_latency_p99_seconds: float = 5.0
    # How long a silent runner is remembered by PullWakeRunnerTelemetryAbsent.
    telemetry_absent_lookback: str = "1h"
    # PullWakeCompletionsFenced: a refused (fenced/rejected) completion within this
    # window, at every evaluation for the alert's `for:` (one stray fence stays silent).
    completions_fenced_window: str = "5m"
    # A runner whose newest sample is older than this is not alerted on: its alerts
    # resolve and PullWakeRunnerTelemetryAbsent takes over.  Pushed (OTLP) series get
    # no staleness marker, so a dead runner's last values would otherwise keep firing
    # for the 5 m lookback.  Longer than the OTLP export interval
    # (OTEL_METRIC_EXPORT_INTERVAL: 60 s by default, 10 s in compose) and the scrape's.
    runner_stale_after: str = "90s"


@dataclass(frozen=True)
class ForDurations:
    """`for:` of each alert: long enough to ride out a normal SSE rotation."""

    stream_connected_while_heartbeats_failing: str = "1m"
    heartbeats_failing: str = "1m"
    runner_not_streaming: str = "2m"
    reconnect_storm: str = "5m"
    stream_stale: str = "1m"
    telemetry_absent: str = "5m"
    wake_latency_high: str = "10m"
    server_sees_no_stream: str = "2m"
    completions_fenced: str = "15m"


@dataclass(frozen=True)
class AlertmanagerTiming:
    group_wait: str = "10s"
    group_interval: str = "1m"
    repeat_interval: str = "4h"
    resolve_timeout: str = "5m"


@dataclass(frozen=True)
class DashboardUids:
    fleet: str = "pullwake-fleet"
    runner: str = "pullwake-runner"
    server: str = "pullwake-server"


@dataclass(frozen=True)
class BurnWindow:
    """One multi-window burn-rate alert (Google SRE workbook, "Alerting on SLOs").

    It fires while the error ratio over *both* windows exceeds `factor` times
    the error budget: the long window proves the burn is significant, the
    short one that it is still going on (so the alert resets soon after a
    recovery).  `critical` pages, `warning` is a ticket.
    """

    long: str
    short: str
    factor: float
    severity: Severity
    # Rides out one odd evaluation; the short window already does the real filtering.
    for_: str


@dataclass(frozen=True)
class Slo:
    """Stream availability: the share of a running runner's time spent streaming.

    See docs/slo.md for the exact definition (which states count, what
    happens to `stopping`, scrape gaps and absent runners).
    """

    objective: float = 0.995
    period: str = "28d"
    burn_windows: tuple[BurnWindow, ...] = (
        BurnWindow("1h", "5m", 14.4, "critical", "1m"),
        BurnWindow("6h", "30m", 6.0, "critical", "1m"),
        BurnWindow("1d", "2h", 3.0, "warning", "15m"),
        BurnWindow("3d", "6h", 1.0, "warning", "15m"),
    )
    # A pair fires only once its long window holds at least this many short windows'
    # worth of running samples.  Without it, one unlucky scrape in the first minutes of
    # a runner (or of Prometheus, or after a laptop slept) is a large share of a nearly
    # empty window and pages.  The workbook's answer for low traffic, in samples.
    min_history: float = 2.0

    @property
    def budget(self) -> float:
        """The error budget as a ratio (0.005 for 99.5 %)."""
        return 1 - self.objective

    @property
    def windows(self) -> tuple[str, ...]:
        """Every window the burn-rate alerts read, shortest first (one recording rule each)."""
        seen = {w for b in self.burn_windows for w in (b.long, b.short)}
        return tuple(sorted(seen, key=parse_duration))

    def check(self) -> None:
        if not 0 < self.objective < 1:
            raise ValueError(f"Config.slo.objective must be in (0, 1), got {self.objective!r}")
        parse_duration(self.period)
        if not self.min_history >= 1:
            raise ValueError(f"Config.slo.min_history must be at least 1, got {self.min_history}")
        if not self.burn_windows:
            raise ValueError("Config.slo.burn_windows must not be empty")
        where = "Config.slo.burn_windows"
        for b in self.burn_windows:
            for text in (b.long, b.short, b.for_):
                parse_duration(text)
            if not parse_duration(b.short) < parse_duration(b.long):
                raise ValueError(f"{where}: short {b.short} not below long {b.long}")
            if parse_duration(b.long) > parse_duration(self.period):
                raise ValueError(f"{where}: {b.long} is longer than the period")
            if not b.factor > 0:
                raise ValueError(f"{where}: factor must be positive, got {b.factor}")
            if b.severity not in ("critical", "warning"):
                raise ValueError(f"{where}: unknown severity {b.severity!r}")
        pairs = [(b.long, b.short) for b in self.burn_windows]
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"{where}: a window pair appears twice: {pairs}")


@dataclass(frozen=True)
class Config:
    datasources: Datasources = field(default_factory=Datasources)
    # Extra matchers put on every runner / server metric (e.g. 'job="runner"').
    runner_selector: str = ""
    server_selector: str = ""
    thresholds: Thresholds = field(default_factory=Thresholds)
    for_: ForDurations = field(default_factory=ForDurations)
    alertmanager: AlertmanagerTiming = field(default_factory=AlertmanagerTiming)
    dashboard_uids: DashboardUids = field(default_factory=DashboardUids)
    slo: Slo = field(default_factory=Slo)
    # Window of the rate() recording rules the dashboards read.
    rate_window: str = "5m"
    rule_evaluation_interval: str = "15s"
    runbook_base_url: str = "https://github.com/pullwake/pullwake/blob/main/docs/runbooks.md"
    alertmanager_webhook_url: str = "http://alert-sink:9095/"
    # Where Grafana (in its container) reads the dashboards JSON from.
    grafana_dashboards_path: str = "/var/lib/grafana/dashboards"
    dashboard_refresh: str = "30s"

    def __post_init__(self) -> None:
        durations = [
            ("rate_window", self.rate_window),
            ("rule_evaluation_interval", self.rule_evaluation_interval),
            ("thresholds.reconnect_storm_window", self.thresholds.reconnect_storm_window),
            ("thresholds.telemetry_absent_lookback", self.thresholds.telemetry_absent_lookback),
            ("thresholds.completions_fenced_window", self.thresholds.completions_fenced_window),
            ("thresholds.runner_stale_after", self.thresholds.runner_stale_after),
        ]
        durations += [(f"for_.{f.name}", getattr(self.for_, f.name)) for f in _fields(self.for_)]
        durations += [
            (f"alertmanager.{f.name}", getattr(self.alertmanager, f.name))
            for f in _fields(self.alertmanager)
        ]
        for name, value in durations:
            try:
                parse_duration(value)
            except ValueError as exc:
                raise ValueError(f"Config.{name}: {exc}") from None
        try:
            self.slo.check()
        except ValueError as exc:
            msg = str(exc)
            raise ValueError(msg if msg.startswith("Config.") else f"Config.slo: {msg}") from None
        t = self.thresholds
        for name, number in (
            ("heartbeat_failures", t.heartbeat_failures),
            ("heartbeat_stale_seconds", t.heartbeat_stale_seconds),
            ("stream_idle_seconds", t.stream_idle_seconds),
            ("reconnect_storm_count", t.reconnect_storm_count),
            ("wake_latency_p99_seconds", t.wake_latency_p99_seconds),
        ):
            # 0 would make `>= threshold` true for every healthy runner.
            if not number > 0:
                raise ValueError(f"Config.thresholds.{name} must be positive, got {number!r}")
        for name, value in (
            ("runbook_base_url", self.runbook_base_url),
            ("alertmanager_webhook_url", self.alertmanager_webhook_url),
        ):
            if not value.startswith(("http://", "https://")):
                raise ValueError(f"Config.{name} must be an http(s) URL, got {value!r}")
        ds = self.datasources
        ds_uids = [ds.prometheus, ds.tempo, ds.alertmanager, ds.loki]
        if len(set(ds_uids)) != len(ds_uids) or not all(ds_uids):
            raise ValueError(f"Config.datasources uids must be distinct and non-empty: {ds_uids}")
        uids = list(dataclasses.astuple(self.dashboard_uids))
        if len(set(uids)) != len(uids) or not all(uids):
            raise ValueError(f"Config.dashboard_uids must be distinct and non-empty: {uids}")

    def runbook_url(self, alertname: str) -> str:
        """Each alert links to its own section: the anchor is the lowercased name."""
        return f"{self.runbook_base_url}#{alertname.lower()}"

    def scaled(self, factor: float, *, evaluation_interval: str = "1s") -> Config:
        """The same config with every `for:` and Alertmanager wait times `factor`.

        End-to-end tests run the real rules in seconds instead of minutes.
        Thresholds stay as they are: tests pass their own when they need to.  So does
        `slo`: its windows and `for:` are the objective's definition, and its
        `min_history` keeps it quiet in a test that runs for minutes.
        """

        def scale(text: str) -> str:
            return format_duration(max(parse_duration(text) * factor, 1.0))

        fors = ForDurations(
            **{f.name: scale(getattr(self.for_, f.name)) for f in _fields(self.for_)}
        )
        am = AlertmanagerTiming(
            **{
                f.name: scale(getattr(self.alertmanager, f.name))
                for f in _fields(self.alertmanager)
            }
        )
        return dataclasses.replace(
            self, for_=fors, alertmanager=am, rule_evaluation_interval=evaluation_interval
        )


def _fields(obj: object) -> tuple[dataclasses.Field[object], ...]:
    return dataclasses.fields(obj)  # type: ignore[arg-type]


DEFAULT: Final = Config()
