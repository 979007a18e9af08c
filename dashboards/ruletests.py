"""`promtool test rules` cases, generated with the rules they test.

Each alert gets a named positive case (it fires on its condition, with every
label and rendered annotation asserted, and not before its `for:`), and
every alert is asserted silent on the negative cases: a healthy fleet, and a
healthy default-profile runner whose SSE session the server rotates (every
minute as by default, and every 2 minutes with a longer reconnect gap): a
session ending `rotated`, a reconnect at once.

Both export paths: each per-runner alert's positive case is run again with
the runner dying while the alert fires - scraped (its series end with a
staleness marker) and pushed over OTLP (they just stop: the last values stay
visible for the 5 m lookback).  In both the alert resolves within
`runner_stale_after`, and PullWakeRunnerTelemetryAbsent takes over.

Series carry `job`/`instance` labels on purpose: the alerts aggregate
`by (runner_id)`, and the expected labels prove nothing else leaks through.
Eval times and rendered values are derived from the config, so the cases
follow a change of threshold or `for:`.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from pullwake.core import catalog as c
from pullwake.core.protocol import EndReason, RunnerState, WakeOutcome
from pullwake.dashboards import queries as q
from pullwake.dashboards.config import Config, format_duration, parse_duration
from pullwake.dashboards.rules import Alert, alerts, group_order

STEP = 15  # seconds between input samples (and rule evaluations)
SAMPLES = 120  # 30 minutes of data per case
# Every phase of a rotation cycle (60 s = 4 samples; 2 m = 8) is looked at: an
# alert firing only between rotations, or only in the gap, would be seen.
HEALTHY_EVALS = (
    "5m",
    "10m",
    "10m15s",
    "10m30s",
    "10m45s",
    "11m",
    "11m15s",
    "11m30s",
    "11m45s",
    "29m",
)
# Alerts without the freshness guard: the one for a silent runner, and the server's view.
UNGUARDED = ("PullWakeRunnerTelemetryAbsent", "PullWakeServerSeesNoStream")
ROTATE_S = 60  # the server's default --sse-rotate-seconds (a test keeps them equal)
# The states the runner exports (the state gauge covers the running phases only).
RUNNING_STATES = tuple(RunnerState(v) for v in c.RUNNER_STATE.allowed_values("state") or ())


def _series(metric: c.Metric, runner: str, suffix: str = "", **labels: str) -> str:
    component = "runner" if metric.component is c.Component.RUNNER else "server"
    name = metric.prom_name + (f"_{suffix}" if suffix else "")
    all_labels = {q.RUNNER: runner, **labels, "job": f"pullwake-{component}"}
    all_labels["instance"] = f"{runner}:9464" if component == "runner" else "server:8080"
    inner = ", ".join(f'{k}="{v}"' for k, v in all_labels.items())
    return f"{name}{{{inner}}}"


def _const(value: float, n: int = SAMPLES) -> str:
    return f"{value:g}+0x{n}"


def _pattern(cycle: list[float], n: int = SAMPLES) -> str:
    """Repeat `cycle` to n+1 samples."""
    return " ".join(f"{cycle[i % len(cycle)]:g}" for i in range(n + 1))


def _then(first: list[float], rest: str) -> str:
    return " ".join(f"{v:g}" for v in first) + " " + rest


def healthy_runner(runner: str) -> dict[str, str]:
    """A runner streaming happily: heartbeats 10 s old, stream fresh, fast wakes."""
    s: dict[str, str] = {
        _series(c.STREAM_CONNECTED, runner): _const(1),
        _series(c.STREAM_AGE, runner): f"30+{STEP}x{SAMPLES}",
        _series(c.STREAM_IDLE, runner): _const(0.5),
        _series(c.STREAM_IDLE_TIMEOUT, runner): _const(20),
        _series(c.HEARTBEAT_CONSECUTIVE_FAILURES, runner): _const(0),
        _series(c.HEARTBEAT_LAST_SUCCESS, runner): f"-10+{STEP}x{SAMPLES}",
        _series(c.STREAM_RECONNECTS, runner, reason=EndReason.ROTATED.value): _const(3),
        _series(c.WAKE_LATENCY, runner, "bucket", le="0.1"): f"0+1x{SAMPLES}",
        _series(c.WAKE_LATENCY, runner, "bucket", le="1"): f"0+1x{SAMPLES}",
        _series(c.WAKE_LATENCY, runner, "bucket", le="5"): f"0+1x{SAMPLES}",
        _series(c.WAKE_LATENCY, runner, "bucket", le="10"): f"0+1x{SAMPLES}",
        _series(c.WAKE_LATENCY, runner, "bucket", le="+Inf"): f"0+1x{SAMPLES}",
        _series(c.SERVER_STREAM_MISMATCH, runner): _const(0),
        _series(c.WAKES, runner, outcome=WakeOutcome.HANDLED.value): f"0+1x{SAMPLES}",
    }
    for state in RUNNING_STATES:
        value = 1 if state is RunnerState.STREAMING else 0
        s[_series(c.RUNNER_STATE, runner, state=state.value)] = _const(value)
    return s


def rotating_runner(runner: str, every_s: int, gap_s: int) -> dict[str, str]:
    """Default profile, SSE rotated every `every_s`: a `rotated` end, reconnect at once.

    For `gap_s` in every rotation (one or two samples) the scrape catches it
    reconnecting then connecting, with `stream_connected` 0 and the server
    briefly seeing no read of it.
    """
    s = healthy_runner(runner)
    n, gap = every_s // STEP, gap_s // STEP
    cycle_states = ["s"] * (n - gap) + ["r", "c"][:gap]
    for state, tag in (
        (RunnerState.STREAMING, "s"),
        (RunnerState.RECONNECTING, "r"),
        (RunnerState.CONNECTING, "c"),
    ):
        s[_series(c.RUNNER_STATE, runner, state=state.value)] = _pattern(
            [1.0 if x == tag else 0.0 for x in cycle_states]
        )
    streaming = [x == "s" for x in cycle_states]
    s[_series(c.STREAM_CONNECTED, runner)] = _pattern([1.0 if x else 0.0 for x in streaming])
    ages = [STEP * (i + 1) if x else 0.0 for i, x in enumerate(streaming)]
    s[_series(c.STREAM_AGE, runner)] = _pattern(ages)
    s[_series(c.STREAM_IDLE, runner)] = _pattern([0.5 if x else 3.0 for x in streaming])
    mismatch = [0.0] * (n - gap) + [1.0] + [0.0] * (gap - 1)
    s[_series(c.SERVER_STREAM_MISMATCH, runner)] = _pattern(mismatch)
    rotations = " ".join(f"{i // n}" for i in range(SAMPLES + 1))
    s[_series(c.STREAM_RECONNECTS, runner, reason=EndReason.ROTATED.value)] = rotations
    return s


def _when(config: Config, alert: Alert, onset_s: int) -> tuple[str, str]:
    """(an eval time while still pending, an eval time when firing) for an onset."""
    hold = parse_duration(getattr(config.for_, alert.for_field))
    pending = onset_s + max(hold / 2, STEP)
    firing = onset_s + hold + 2 * STEP
    return format_duration(pending - pending % STEP), format_duration(firing - firing % STEP)


def _case(
    config: Config,
    name: str,
    alert: Alert,
    series: dict[str, str],
    onset_s: int,
    value: float = 0.0,
    runner: str = "r1",
    silent: tuple[str, ...] = (),
) -> dict[str, Any]:
    pending, firing = _when(config, alert, onset_s)
    fired = {
        "exp_labels": {q.RUNNER: runner, "severity": alert.severity},
        "exp_annotations": alert.rendered(config, runner, value),
    }
    checks = [
        {"eval_time": pending, "alertname": alert.name, "exp_alerts": []},
        {"eval_time": firing, "alertname": alert.name, "exp_alerts": [fired]},
    ]
    checks += [{"eval_time": firing, "alertname": other, "exp_alerts": []} for other in silent]
    return {
        "name": name,
        "interval": f"{STEP}s",
        "input_series": [{"series": k, "values": v} for k, v in series.items()],
        "alert_rule_test": checks,
    }


def _failing_heartbeats(s: dict[str, str], runner: str, onset_i: int) -> None:
    """From sample onset_i heartbeats fail every sample; the last success stays put."""
    s[_series(c.HEARTBEAT_CONSECUTIVE_FAILURES, runner)] = _then(
        [0] * onset_i, f"1+1x{SAMPLES - onset_i}"
    )
    last = STEP * (onset_i - 1) - 10
    s[_series(c.HEARTBEAT_LAST_SUCCESS, runner)] = _then(
        [STEP * i - 10 for i in range(onset_i)], _const(last, SAMPLES - onset_i)
    )


def _expand(values: str) -> list[str]:
    """promtool's series notation (`a+bxn`, numbers, `stale`) as one value per sample."""
    out: list[str] = []
    for token in values.split():
        m = re.fullmatch(r"(-?[\d.]+)([+-][\d.]+)x(\d+)", token)
        if m is None:
            out.append(token)
            continue
        start, step, n = float(m[1]), float(m[2]), int(m[3])
        out += [f"{start + i * step:g}" for i in range(n + 1)]
    return out


def _die(s: dict[str, str], runner: str, last_i: int, *, pushed: bool) -> None:
    """The runner's own series end after sample `last_i`.

    Scraped: a staleness marker follows.  Pushed (OTLP): nothing follows - the
    last sample stays visible for the lookback, as when an OTLP sender dies.
    """
    for key, values in s.items():
        if f'{q.RUNNER}="{runner}"' in key and 'job="pullwake-runner"' in key:
            kept = _expand(values)[: last_i + 1]
            s[key] = " ".join(kept if pushed else [*kept, "stale"])


def _dies_while_firing(
    config: Config, case: dict[str, Any], alert: Alert, *, pushed: bool
) -> dict[str, Any]:
    """`case` again with r1 dying at the sample its alert is seen firing.

    Scraped, the alert is gone at the next evaluation; pushed, within
    `runner_stale_after` - well inside the lookback that would otherwise keep
    the dead runner's last values (and the alert) for 5 m.
    """
    firing = case["alert_rule_test"][1]
    fired_s = int(parse_duration(firing["eval_time"]))
    series = {x["series"]: x["values"] for x in case["input_series"]}
    _die(series, "r1", fired_s // STEP, pushed=pushed)
    stale_s = int(parse_duration(config.thresholds.runner_stale_after))
    gone_s = fired_s + (stale_s // STEP * STEP + STEP if pushed else STEP)
    how = "pushed over OTLP, no staleness marker" if pushed else "scraped, staleness marker"
    return {
        "name": f"{case['name']}: the runner dies while it fires ({how})",
        "interval": f"{STEP}s",
        "input_series": [{"series": k, "values": v} for k, v in series.items()],
        "alert_rule_test": [
            {
                "eval_time": firing["eval_time"],
                "alertname": alert.name,
                "exp_alerts": copy.deepcopy(firing["exp_alerts"]),
            },
            {"eval_time": format_duration(gone_s), "alertname": alert.name, "exp_alerts": []},
        ],
    }


def _pushed_sparsely(config: Config, alert: Alert, every_s: int = 60) -> dict[str, Any]:
    """The seed's case (connected while heartbeats fail) with samples only every `every_s`."""
    t = config.thresholds
    n = SAMPLES * STEP // every_s
    series: dict[str, str] = {}
    for runner, failing in (("r1", True), ("r2", False)):
        series[_series(c.STREAM_CONNECTED, runner)] = f"1+0x{n}"
        failures = f"0 0 {t.heartbeat_failures}+1x{n - 2}" if failing else f"0+0x{n}"
        series[_series(c.HEARTBEAT_CONSECUTIVE_FAILURES, runner)] = failures
        last = f"-10 {every_s - 10} {every_s - 10}+0x{n - 2}" if failing else f"-10+{every_s}x{n}"
        series[_series(c.HEARTBEAT_LAST_SUCCESS, runner)] = last
    hold = parse_duration(getattr(config.for_, alert.for_field))
    onset = 2 * every_s
    pending = onset + max(hold / 2, STEP)
    firing = onset + hold + every_s + 45  # 45 s after a sample: between two of them
    fired = {
        "exp_labels": {q.RUNNER: "r1", "severity": alert.severity},
        "exp_annotations": alert.rendered(config, "r1"),
    }
    return {
        "name": f"seed, pushed every {every_s}s (the SDK's default export interval)",
        "interval": f"{every_s}s",
        "input_series": [{"series": k, "values": v} for k, v in series.items()],
        "alert_rule_test": [
            {
                "eval_time": format_duration(pending - pending % STEP),
                "alertname": alert.name,
                "exp_alerts": [],
            },
            *(
                {
                    "eval_time": format_duration(when),
                    "alertname": alert.name,
                    "exp_alerts": [copy.deepcopy(fired)],
                }
                for when in (firing, firing + 2 * every_s)
            ),
        ],
    }


def _state_from(s: dict[str, str], runner: str, onset_i: int, state: RunnerState) -> None:
    for st in RUNNING_STATES:
        before = 1 if st is RunnerState.STREAMING else 0
        after = 1 if st is state else 0
        s[_series(c.RUNNER_STATE, runner, state=st.value)] = _then(
            [before] * onset_i, _const(after, SAMPLES - onset_i)
        )


def cases(config: Config) -> list[dict[str, Any]]:
    a = {al.name: al for al in alerts(config)}
    t = config.thresholds
    out = []
    fleet = healthy_runner("r2")  # every case has a healthy neighbour that must stay silent

    # The seed: legacy profile, the stream stays "connected" while heartbeats fail.
    s = {**fleet, **healthy_runner("r1")}
    _failing_heartbeats(s, "r1", 4)
    onset = STEP * (4 + t.heartbeat_failures - 1)
    crit = a["PullWakeStreamConnectedWhileHeartbeatsFailing"]
    out.append(_case(config, "seed: connected while heartbeats fail (legacy)", crit, s, onset))

    # Heartbeats hang instead of failing: no failure counted, the last success ages.
    s = {**fleet, **healthy_runner("r1")}
    s[_series(c.HEARTBEAT_LAST_SUCCESS, "r1")] = _then([-10, 5], _const(5, SAMPLES - 2))
    onset = int(5 + t.heartbeat_stale_seconds) // STEP * STEP + STEP
    out.append(_case(config, "seed: connected, heartbeats hang (legacy)", crit, s, onset))

    # Default profile: the runner drops the stream after K failures and says so.
    s = {**fleet, **healthy_runner("r1")}
    _failing_heartbeats(s, "r1", 4)
    drop = 4 + t.heartbeat_failures
    s[_series(c.STREAM_CONNECTED, "r1")] = _then([1] * drop, _const(0, SAMPLES - drop))
    _state_from(s, "r1", drop, RunnerState.RECONNECTING)
    onset = STEP * (4 + t.heartbeat_failures - 1)
    out.append(
        _case(
            config,
            "heartbeats failing, stream dropped (default profile)",
            a["PullWakeHeartbeatsFailing"],
            s,
            onset,
            silent=(crit.name,),
        )
    )
    out.append(
        _case(
            config,
            "stuck reconnecting (default profile)",
            a["PullWakeRunnerNotStreaming"],
            s,
            STEP * drop,
            silent=(crit.name,),
        )
    )

    # Failure reconnects every 15 s: a storm.  Rotations alone never are (see negatives).
    s = {**fleet, **healthy_runner("r1")}
    s[_series(c.STREAM_RECONNECTS, "r1", reason=EndReason.ERROR.value)] = f"0+1x{SAMPLES}"
    window = parse_duration(t.reconnect_storm_window)
    storm = a["PullWakeReconnectStorm"]
    case = _case(config, "reconnect storm", storm, s, STEP * t.reconnect_storm_count)
    # Evaluate once the window is full, so the value is exactly window / STEP.
    firing = max(window, parse_duration(case["alert_rule_test"][1]["eval_time"])) + 2 * STEP
    case["alert_rule_test"][1]["eval_time"] = format_duration(firing)
    case["alert_rule_test"][1]["exp_alerts"][0]["exp_annotations"] = storm.rendered(
        config, "r1", window / STEP
    )
    out.append(case)

    # Connected, watchdog limit 20 s, but idle climbs: the watchdog itself failed.
    stale = a["PullWakeStreamStale"]
    for label, timeout, limit in (
        ("watchdog on", 20.0, 20.0),
        ("legacy, watchdog off", 0.0, t.stream_idle_seconds),
    ):
        s = {**fleet, **healthy_runner("r1")}
        s[_series(c.STREAM_IDLE, "r1")] = f"0+{STEP}x{SAMPLES}"
        s[_series(c.STREAM_IDLE_TIMEOUT, "r1")] = _const(timeout)
        onset = int(limit) // STEP * STEP + STEP
        firing = parse_duration(_when(config, stale, onset)[1])
        out.append(_case(config, f"stream stale ({label})", stale, s, onset, value=firing))

    # r1 stops reporting after 10 samples (scraped: its series go stale).
    s = {**fleet, **healthy_runner("r1")}
    _die(s, "r1", 10, pushed=False)
    absent = a["PullWakeRunnerTelemetryAbsent"]
    out.append(_case(config, "runner telemetry absent (scraped)", absent, s, STEP * 11))
    # Pushed: the series just stop; the runner counts as gone once its newest sample
    # is older than runner_stale_after.
    s = {**fleet, **healthy_runner("r1")}
    _die(s, "r1", 10, pushed=True)
    gone = STEP * 10 + int(parse_duration(t.runner_stale_after)) // STEP * STEP + STEP
    out.append(_case(config, "runner telemetry absent (pushed over OTLP)", absent, s, gone))

    # Every wake lands between 5 s and 10 s: p99 interpolates to 9.95 s.
    s = {**fleet, **healthy_runner("r1")}
    for le in ("0.1", "1", "5"):
        s[_series(c.WAKE_LATENCY, "r1", "bucket", le=le)] = _const(0)
    out.append(
        _case(config, "wake latency high", a["PullWakeWakeLatencyHigh"], s, 2 * STEP, value=9.95)
    )

    # The server sees no read of r1's stream while r1 says connected.
    s = {**fleet, **healthy_runner("r1")}
    s[_series(c.SERVER_STREAM_MISMATCH, "r1")] = _then([0] * 4, _const(1, SAMPLES - 4))
    out.append(_case(config, "server sees no stream", a["PullWakeServerSeesNoStream"], s, 4 * STEP))

    # Every claim of r1 lost from sample 4 on (completion or lease heartbeat refused,
    # fenced or rejected: the wake ends `fenced`): handlers outlive their lease.
    fenced = a["PullWakeCompletionsFenced"]
    fenced_window = parse_duration(t.completions_fenced_window)
    s = {**fleet, **healthy_runner("r1")}
    s[_series(c.WAKES, "r1", outcome=WakeOutcome.FENCED.value)] = _then(
        [0] * 4, f"1+1x{SAMPLES - 4}"
    )
    case = _case(
        config, "claims lost (completions or lease heartbeats refused)", fenced, s, 4 * STEP
    )
    # Evaluate once the window holds only refusals, so the value is exactly window / STEP.
    firing = max(
        4 * STEP + fenced_window + 2 * STEP,
        parse_duration(case["alert_rule_test"][1]["eval_time"]),
    )
    case["alert_rule_test"][1]["eval_time"] = format_duration(firing)
    case["alert_rule_test"][1]["exp_alerts"][0]["exp_annotations"] = fenced.rendered(
        config, "r1", fenced_window / STEP
    )
    out.append(case)

    # Handlers that fail (nothing acked, the lease runs out) all along, and - when
    # the alert's `for:` outlasts its window, as by default - a stray fence every two
    # windows: no sustained loss.
    stray = {**fleet, **healthy_runner("r1")}
    stray[_series(c.WAKES, "r1", outcome=WakeOutcome.FAILED.value)] = f"0+1x{SAMPLES}"
    stray_name = "failed handlers all along: no alert"
    if parse_duration(getattr(config.for_, fenced.for_field)) > fenced_window + STEP:
        every = int(2 * fenced_window) // STEP
        stray[_series(c.WAKES, "r1", outcome=WakeOutcome.FENCED.value)] = " ".join(
            f"{(i + every - 4) // every}" for i in range(SAMPLES + 1)
        )
        stray_name = f"a stray fence every {format_duration(2 * fenced_window)}, " + stray_name

    # Pushed at the SDK's default export interval (60 s): sparse samples stay fresh
    # (runner_stale_after outlasts the interval), so the seed's alert fires and holds
    # between samples; the healthy neighbour, pushed alike, stays silent.
    out.append(_pushed_sparsely(config, crit))

    # Both paths: each per-runner alert's first case, the runner dying while it fires.
    for al in alerts(config):
        if al.name in UNGUARDED:
            continue
        first = next(x for x in out if x["alert_rule_test"][1]["alertname"] == al.name)
        for pushed in (False, True):
            out.append(_dies_while_firing(config, first, al, pushed=pushed))

    # Negatives: every alert silent on a healthy fleet and through SSE rotations.
    for name, series in (
        ("healthy fleet: no alert", {**fleet, **healthy_runner("r1")}),
        (stray_name, stray),
        (
            f"default profile SSE rotation every {ROTATE_S}s (server default): no alert",
            {**fleet, **rotating_runner("r1", ROTATE_S, STEP)},
        ),
        (
            "SSE rotation every 2m, caught reconnecting for 30s: no alert",
            {**fleet, **rotating_runner("r1", 120, 2 * STEP)},
        ),
    ):
        out.append(
            {
                "name": name,
                "interval": f"{STEP}s",
                "input_series": [{"series": k, "values": v} for k, v in series.items()],
                "alert_rule_test": [
                    {"eval_time": when, "alertname": al.name, "exp_alerts": []}
                    for al in alerts(config)
                    for when in HEALTHY_EVALS
                ],
            }
        )
    return out


def test_file(config: Config) -> dict[str, Any]:
    return {
        "rule_files": ["../rules/pullwake-alerts.yml"],
        "evaluation_interval": f"{STEP}s",
        "group_eval_order": group_order(config),
        "tests": cases(config),
    }
