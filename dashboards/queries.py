"""PromQL, built from the metric catalog: one function per question asked.

Rules and dashboards both read from here, so the alert and the panel that
shows the same condition can never drift apart.  No metric name is typed in
this file: every series comes from `pullwake.catalog` (`prom_name`,
`prom_series`) and every label from `prom_label`.

Per-runner expressions aggregate `by (runner_id)`: the Prometheus reader, the
collector and a compose scrape add different `job`/`instance`/scope labels,
and the alert labels must not depend on the path the metric took.

Two paths, two shapes: scraped `/metrics` has classic histograms (`_bucket`)
and staleness markers; OTLP pushes exponential histograms (native: one series)
and no staleness - a dead runner's last samples stay visible for the lookback
(5 m), longer behind a collector's `prometheus` exporter.  Histogram queries
take the union of both shapes; per-runner alerts are guarded by `fresh`.
"""

from __future__ import annotations

from pullwake.core import catalog as c
from pullwake.core import http_semconv as hs
from pullwake.core.protocol import EndReason, RunnerState, WakeOutcome
from pullwake.dashboards.config import Config, parse_duration

RUNNER: str = c.prom_label(c.RUNNER_ID)
REASON: str = c.prom_label("reason")
STATE_ATTRIBUTE = "state"
STATE: str = c.prom_label(STATE_ATTRIBUTE)
ERROR_TYPE: str = c.prom_label("error.type")
OUTCOME: str = c.prom_label("outcome")
LIVE_MODE: str = c.prom_label("live.mode")
METHOD: str = c.prom_label(hs.HTTP_REQUEST_METHOD)
STATUS: str = c.prom_label(hs.HTTP_RESPONSE_STATUS_CODE)

FAILURE_REASONS: tuple[str, ...] = tuple(r.value for r in EndReason if r.is_failure)
NOT_STREAMING_STATES: tuple[str, ...] = (
    RunnerState.CONNECTING.value,
    RunnerState.RECONNECTING.value,
)


def _regex(values: tuple[str, ...]) -> str:
    return "|".join(v.replace(".", "\\\\.") for v in values)


def series(config: Config, metric: c.Metric, *matchers: str, suffix: str = "") -> str:
    """`name{selector, matchers}`, the selector picked by the metric's component."""
    selector = (
        config.runner_selector
        if metric.component is c.Component.RUNNER
        else (config.server_selector)
    )
    name = metric.prom_name + (f"_{suffix}" if suffix else "")
    if suffix and f"{name}" not in metric.prom_series:
        raise ValueError(f"{metric.name} has no series {name}")
    parts = [p for p in (selector, *matchers) if p]
    return f"{name}{{{', '.join(parts)}}}" if parts else name


def per_runner(config: Config, metric: c.Metric, *matchers: str, agg: str = "max") -> str:
    return f"{agg} by ({RUNNER}) ({series(config, metric, *matchers)})"


def fresh(config: Config, *m: str) -> str:
    """Runners whose newest sample is younger than `runner_stale_after` (its timestamp).

    Scraped series end with a staleness marker when the runner goes; pushed
    ones (OTLP) just stop, and their last value would answer every query for
    the 5 m lookback.  A sample's timestamp is its export time on the push
    path (and its scrape time when scraped), so `and on (runner_id) fresh`
    lets a dead runner's alerts resolve within `runner_stale_after` on both.
    """
    age = config.thresholds.runner_stale_after
    newest = f"max by ({RUNNER}) (timestamp({series(config, c.STREAM_CONNECTED, *m)}))"
    return f"{newest} > time() - {parse_duration(age):g}"


# `fresh` recorded once per evaluation, first in the alerts group (`dashboards.recording`):
# every per-runner alert reads it instead of taking 10,000 runners' timestamps again.
FRESH_RECORD: str = f"{RUNNER}:{c.STREAM_CONNECTED.prom_name}:fresh"


def guarded(config: Config, expr: str, *m: str) -> str:
    """`expr` (labelled by runner) for fresh runners only.

    Without matchers it reads the recorded freshness (`FRESH_RECORD`, same
    series as `fresh`); a one-runner panel passes its matcher and computes it.
    """
    return f"({expr}) and on ({RUNNER}) ({fresh(config, *m) if m else FRESH_RECORD})"


# --- runner gauges -----------------------------------------------------------------
def connected(config: Config, *m: str) -> str:
    return per_runner(config, c.STREAM_CONNECTED, *m)


def seconds_since_heartbeat_success(config: Config, *m: str) -> str:
    """Only for runners that have had a success (the gauge is 0 before the first)."""
    last = series(config, c.HEARTBEAT_LAST_SUCCESS, *m)
    return f"max by ({RUNNER}) (time() - ({last} > 0))"


def heartbeats_failing(config: Config, *m: str) -> str:
    """Consecutive failures over the threshold, or no success for too long.

    Both are gauges, so the condition is true from the first scrape that sees
    it, whatever the counters did before.
    """
    t = config.thresholds
    failures = per_runner(config, c.HEARTBEAT_CONSECUTIVE_FAILURES, *m)
    return (
        f"{failures} >= {t.heartbeat_failures}"
        f" or on ({RUNNER}) {seconds_since_heartbeat_success(config, *m)}"
        f" > {t.heartbeat_stale_seconds:g}"
    )


def connected_while_heartbeats_failing(config: Config, *m: str) -> str:
    """The seed's picture: the stream says connected, the heartbeats say the server is gone."""
    return f"{connected(config, *m)} == 1 and on ({RUNNER}) ({heartbeats_failing(config, *m)})"


def in_state(config: Config, states: tuple[str, ...], *m: str) -> str:
    matcher = f'{STATE}=~"{_regex(states)}"'
    return f"{per_runner(config, c.RUNNER_STATE, matcher, *m)} == 1"


def not_streaming(config: Config, *m: str) -> str:
    return in_state(config, NOT_STREAMING_STATES, *m)


def current_state(config: Config, *m: str) -> str:
    """One series per runner, labelled with the state it is in now."""
    return f"max by ({RUNNER}, {STATE}) ({series(config, c.RUNNER_STATE, *m)}) == 1"


# One number per runner state, so a state timeline draws one row per runner.
STATE_CODES: dict[str, int] = {s.value: i for i, s in enumerate(RunnerState, start=1)}


def state_code(config: Config, *m: str) -> str:
    """The runner's current state as its `STATE_CODES` number (one-hot gauge -> code).

    Only the states the gauge exports (the running phases): a term on a series
    that does not exist would empty the whole sum.
    """
    exported = c.RUNNER_STATE.allowed_values(STATE_ATTRIBUTE) or ()
    terms = []
    for state, code in STATE_CODES.items():
        if state not in exported:
            continue
        matcher = f'{STATE}="{state}"'
        terms.append(f"{code} * {per_runner(config, c.RUNNER_STATE, matcher, *m)}")
    return " + ".join(terms)


def stream_stale(config: Config, *m: str) -> str:
    """Connected, and no byte for longer than the runner's own idle timeout.

    When the runner's watchdog is off (timeout 0, the legacy profile) the
    configured allowance applies instead.
    """
    idle = per_runner(config, c.STREAM_IDLE, *m)
    timeout = per_runner(config, c.STREAM_IDLE_TIMEOUT, *m)
    allowance = config.thresholds.stream_idle_seconds
    return (
        f"({idle} > on ({RUNNER}) ({timeout} > 0)"
        f" or ({idle} > {allowance:g} and on ({RUNNER}) {timeout} == 0))"
        f" and on ({RUNNER}) {connected(config, *m)} == 1"
    )


def failure_reconnects(config: Config, window: str, *m: str) -> str:
    matcher = f'{REASON}=~"{_regex(FAILURE_REASONS)}"'
    reconnects = series(config, c.STREAM_RECONNECTS, matcher, *m)
    return f"sum by ({RUNNER}) (increase({reconnects}[{window}]))"


def claims_lost(config: Config, window: str, *m: str) -> str:
    """Wakes whose claim was lost per runner (completion or lease heartbeat refused:
    fenced or rejected): the server announces the work again."""
    matcher = f'{OUTCOME}="{WakeOutcome.FENCED.value}"'
    fenced = series(config, c.WAKES, matcher, *m)
    return f"sum by ({RUNNER}) (increase({fenced}[{window}]))"


def telemetry_absent(config: Config) -> str:
    """Runners seen within the lookback that report nothing fresh now.

    Scraped: the series went stale.  Pushed: the newest sample is older than
    `runner_stale_after` (it would stay visible for the lookback otherwise).
    """
    lookback = config.thresholds.telemetry_absent_lookback
    seen = series(config, c.STREAM_CONNECTED)
    return (
        f"max by ({RUNNER}) (max_over_time({seen}[{lookback}])) unless on ({RUNNER}) {FRESH_RECORD}"
    )


def _sum_by(by: tuple[str, ...], expr: str) -> str:
    return f"sum by ({', '.join(by)}) ({expr})" if by else f"sum({expr})"


def quantile(
    config: Config,
    q: float,
    metric: c.Metric,
    window: str,
    *m: str,
    by: tuple[str, ...] = (),
    classic_rate: str = "",
) -> str:
    """A quantile of a histogram, classic (`/metrics`) or native (OTLP exponential).

    Each path has only one of the two shapes, so the union is the one there is.
    `classic_rate`: a recorded `sum by (le, *by) (rate(_bucket[window]))` to read
    instead of the raw buckets (several quantiles of one histogram share it).
    """
    native = series(config, metric, *m)
    classic = classic_rate or bucket_rate(config, metric, window, *m, by=by)
    return f"histogram_quantile({q:g}, {classic} or {_sum_by(by, f'rate({native}[{window}])')})"


def bucket_rate(
    config: Config, metric: c.Metric, window: str, *m: str, by: tuple[str, ...] = ()
) -> str:
    """Per-bucket rate of a classic histogram, summed by `le` (and `by`)."""
    buckets = series(config, metric, *m, suffix="bucket")
    return _sum_by(("le", *by), f"rate({buckets}[{window}])")


def wake_latency_p99_by_runner(config: Config) -> str:
    return quantile(config, 0.99, c.WAKE_LATENCY, config.rate_window, by=(RUNNER,))


def rate_by(config: Config, metric: c.Metric, window: str, by: tuple[str, ...], *m: str) -> str:
    labels = ", ".join(by)
    return f"sum by ({labels}) (rate({series(config, metric, *m)}[{window}]))"


def increase_by(config: Config, metric: c.Metric, window: str, by: tuple[str, ...], *m: str) -> str:
    labels = ", ".join(by)
    return f"sum by ({labels}) (increase({series(config, metric, *m)}[{window}]))"


def count_rate_by(
    config: Config, metric: c.Metric, window: str, by: tuple[str, ...], *m: str
) -> str:
    """Observations per second of a histogram (requests of a duration), classic or native."""
    count = series(config, metric, *m, suffix="count")
    native = series(config, metric, *m)
    return (
        f"{_sum_by(by, f'rate({count}[{window}])')}"
        f" or {_sum_by(by, f'histogram_count(rate({native}[{window}]))')}"
    )


def mean_by(config: Config, metric: c.Metric, window: str, by: tuple[str, ...], *m: str) -> str:
    """Mean of a histogram over the window: rate(_sum) / rate(_count), classic or native."""
    total, count = (series(config, metric, *m, suffix=s) for s in ("sum", "count"))
    native = f"rate({series(config, metric, *m)}[{window}])"
    classic = (
        f"{_sum_by(by, f'rate({total}[{window}])')} / {_sum_by(by, f'rate({count}[{window}])')}"
    )
    return (
        f"{classic} or {_sum_by(by, f'histogram_sum({native})')}"
        f" / {_sum_by(by, f'histogram_count({native})')}"
    )


# --- server -------------------------------------------------------------------------
def server_sees_no_stream(config: Config, *m: str) -> str:
    return f"{per_runner(config, c.SERVER_STREAM_MISMATCH, *m)} == 1"
