"""PromQL, built from the metric catalog: one function per question asked.

Rules and dashboards both read from here, so the alert and the panel that
shows the same condition can never drift apart.  No metric name is typed in
this file: every series comes from `pullwake.catalog` (`prom_name`,
`prom_series`) and every label from `prom_label`.

Per-runner expressions aggregate `by (runner_id)`: the Prometheus reader, the
collector and a compose scrape add different `job`/`instance`/scope labels,
and the alert labels must not depend on the path the metric took.
"""

from __future__ import annotations

from pullwake.core import catalog as c
from pullwake.core.protocol import CallbackOutcome, EndReason, RunnerState
from pullwake.dashboards.config import Config

RUNNER: str = c.prom_label(c.RUNNER_ID)
REASON: str = c.prom_label("reason")
STATE: str = c.prom_label("state")
ERROR_TYPE: str = c.prom_label("error.type")
OUTCOME: str = c.prom_label("outcome")
LIVE_MODE: str = c.prom_label("live.mode")

FAILURE_REASONS: tuple[str, ...] = tuple(r.value for r in EndReason if r.is_failure)
# Completions the server refused for good: the claim was lost (fenced) or the callback
# was not accepted (rejected).  `failed` (no answer) is retried within the lease.
REFUSED_COMPLETIONS: tuple[str, ...] = (
    CallbackOutcome.FENCED.value,
    CallbackOutcome.REJECTED.value,
)
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
    """The runner's current state as its `STATE_CODES` number (one-hot gauge -> code)."""
    terms = []
    for state, code in STATE_CODES.items():
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


def completions_refused(config: Config, window: str, *m: str) -> str:
    """Done callbacks refused as fenced/rejected per runner: the work is announced again."""
    matcher = f'{OUTCOME}=~"{_regex(REFUSED_COMPLETIONS)}"'
    refused = series(config, c.COMPLETIONS, matcher, *m)
    return f"sum by ({RUNNER}) (increase({refused}[{window}]))"


def telemetry_absent(config: Config) -> str:
    """Runners seen within the lookback that report nothing now."""
    lookback = config.thresholds.telemetry_absent_lookback
    state = series(config, c.RUNNER_STATE)
    return (
        f"max by ({RUNNER}) (max_over_time({state}[{lookback}]))"
        f" unless on ({RUNNER}) max by ({RUNNER}) ({state})"
    )


def quantile(
    config: Config, q: float, metric: c.Metric, window: str, *m: str, by: tuple[str, ...] = ()
) -> str:
    labels = ", ".join(("le", *by))
    buckets = series(config, metric, *m, suffix="bucket")
    return f"histogram_quantile({q:g}, sum by ({labels}) (rate({buckets}[{window}])))"


def wake_latency_p99_by_runner(config: Config) -> str:
    return quantile(config, 0.99, c.WAKE_LATENCY, config.rate_window, by=(RUNNER,))


def rate_by(config: Config, metric: c.Metric, window: str, by: tuple[str, ...], *m: str) -> str:
    labels = ", ".join(by)
    return f"sum by ({labels}) (rate({series(config, metric, *m)}[{window}]))"


def increase_by(config: Config, metric: c.Metric, window: str, by: tuple[str, ...], *m: str) -> str:
    labels = ", ".join(by)
    return f"sum by ({labels}) (increase({series(config, metric, *m)}[{window}]))"


def mean_by(config: Config, metric: c.Metric, window: str, by: tuple[str, ...], *m: str) -> str:
    """Mean of a histogram over the window: rate(_sum) / rate(_count)."""
    labels = ", ".join(by)
    total, count = (series(config, metric, *m, suffix=s) for s in ("sum", "count"))
    return (
        f"sum by ({labels}) (rate({total}[{window}])) / sum by ({labels}) (rate({count}[{window}]))"
    )


# --- server -------------------------------------------------------------------------
def server_sees_no_stream(config: Config, *m: str) -> str:
    return f"{per_runner(config, c.SERVER_STREAM_MISMATCH, *m)} == 1"
