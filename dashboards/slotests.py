"""`promtool test rules` cases for the stream availability SLO, generated with its rules.

Each case is a fleet of runners, each a timeline of the state a scrape finds
it in (one sample every `STEP_S`, `None` for a scrape that got nothing).  A
small model of the SLI (`Model`) counts the samples in each window exactly as
`sum_over_time` does (both ends inclusive) and plays the alerts' `for:`
forward one evaluation at a time, so every expected alert - labels, value and
rendered description - is derived from the config, and promtool then checks
that the generated rules agree with the model at the interesting moments: the
evaluation before and at each alert's first firing and its resolution, and
fixed checkpoints.  What each case is *for* (this pair pages, that one never
does, rotation never pages) is asserted on the model in
tests/dashboards/test_slo.py, for the default config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pullwake.core import catalog as c
from pullwake.core.protocol import RunnerState
from pullwake.dashboards import queries as q
from pullwake.dashboards import slo
from pullwake.dashboards.config import BurnWindow, Config, format_duration, parse_duration

STEP_S = 15  # scrape interval of every input series (the stack's default)
EVAL_S = 60  # promtool evaluation interval of this file: `for:` is resolved to a minute
ROTATE_S = 60  # the server's default SSE rotation (tests keep them equal)
HEALTHY_RUNNERS = 9  # neighbours of the runner under test in the fleet cases

Sample = RunnerState | None
S, R, C = RunnerState.STREAMING, RunnerState.RECONNECTING, RunnerState.CONNECTING


def samples_for(seconds: float, step_s: int = STEP_S) -> int:
    return round(seconds / step_s)


def steady(state: Sample, seconds: float, step_s: int = STEP_S) -> list[Sample]:
    return [state] * samples_for(seconds, step_s)


def burn(ratio: float, seconds: float, step_s: int = STEP_S) -> list[Sample]:
    """Streaming, with `ratio` of the samples caught reconnecting, spread evenly."""
    n = samples_for(seconds, step_s)
    return [R if math.floor((i + 1) * ratio) > math.floor(i * ratio) else S for i in range(n)]


def flap(up_s: float, down_s: float, seconds: float) -> list[Sample]:
    """Streams `up_s`, loses the stream and spends `down_s` reconnecting, over and over."""
    cycle = steady(S, up_s) + steady(R, down_s)
    return [cycle[i % len(cycle)] for i in range(samples_for(seconds))]


def rotating(gap_s: float, seconds: float, every_s: float = ROTATE_S) -> list[Sample]:
    """The server rotates the SSE session every `every_s`; the runner reconnects in `gap_s`.

    Sampled as a scrape does: a scrape at time t finds the runner reconnecting
    only if t falls in a gap.  A session starts when the previous gap ends, so
    the gap drifts against the scrapes and is caught about once every
    STEP_S / gap_s rotations (never more than once per rotation when short).
    """
    out: list[Sample] = []
    period = every_s + gap_s
    for i in range(samples_for(seconds)):
        # Exact in integer milliseconds: the catch pattern must not depend on rounding.
        t_ms, period_ms, gap_ms = i * STEP_S * 1000, round(period * 1000), round(gap_s * 1000)
        in_gap = (t_ms - round(every_s * 1000)) % period_ms < gap_ms and t_ms >= every_s * 1000
        out.append(R if in_gap else S)
    return out


@dataclass
class Case:
    name: str
    runners: dict[str, list[Sample]]
    checkpoints: tuple[str, ...] = ()  # extra eval times asserted (durations from start)
    end_s: int = 0  # last evaluation; default: the end of the longest timeline
    # Scrape interval of this case's input.  Cases about the long windows use 1m or 5m:
    # the SLI counts samples, so the interval changes nothing but promtool's run time.
    step_s: int = STEP_S
    # Assert every evaluation, not only the transitions: for the cases whose point is
    # that nothing (or nothing more) fires, at any moment.
    dense: bool = False

    def __post_init__(self) -> None:
        longest = max(len(t) for t in self.runners.values()) * self.step_s
        if not self.end_s:
            self.end_s = longest - longest % EVAL_S
        for text in self.checkpoints:
            if parse_duration(text) % EVAL_S:
                raise ValueError(f"{self.name}: checkpoint {text} is not on an evaluation")


@dataclass
class Model:
    """The SLI and burn-rate alerts, computed from the samples the way Prometheus does."""

    config: Config
    case: Case
    _bad: dict[str, list[int]] = field(default_factory=dict)
    _eligible: dict[str, list[int]] = field(default_factory=dict)
    _firing: dict[int, dict[tuple[slo.BurnAlert, str], float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for runner, timeline in self.case.runners.items():
            bad, eligible = [0], [0]
            for s in timeline:
                bad.append(bad[-1] + (s in slo.BAD))
                eligible.append(eligible[-1] + (s in slo.ELIGIBLE))
            self._bad[runner], self._eligible[runner] = bad, eligible
        self._play()

    def _count(self, sums: list[int], t_s: int, window: str) -> int:
        """Samples within `window` at t, as the rules count them.

        A raw window: t - window <= i * STEP <= t (sum_over_time's inclusive
        range).  A bucketed one (slo.bucketed) ends at the last bucket b, the
        last multiple of BUCKET_S (promtool evaluates from 0, so one was recorded
        there): b - window < i * STEP <= b, each bucket holding (b' - 5m, b'].
        """
        step, window_s = self.case.step_s, parse_duration(window)
        if slo.bucketed(window):
            end = t_s - t_s % slo.BUCKET_S
            hi = min(end // step, len(sums) - 2)
            lo = max(math.floor((end - window_s) / step) + 1, 0)
        else:
            hi = min(t_s // step, len(sums) - 2)
            lo = max(math.ceil((t_s - window_s) / step), 0)
        return sums[hi + 1] - sums[lo] if hi >= lo else 0

    def running(self, t_s: int, window: str, runner: str | None = None) -> int:
        """Samples finding one runner (or the fleet: None) running within `window` at t."""
        runners = [runner] if runner else list(self.case.runners)
        return sum(self._count(self._eligible[r], t_s, window) for r in runners)

    def ratio(self, t_s: int, window: str, runner: str | None = None) -> float | None:
        """Error ratio of one runner (or the fleet: None) over `window` at t; None = no series."""
        runners = [runner] if runner else list(self.case.runners)
        bad = sum(self._count(self._bad[r], t_s, window) for r in runners)
        eligible = self.running(t_s, window, runner)
        return bad / eligible if eligible > 0 else None

    def _subjects(self, level: slo.Level) -> list[str]:
        return list(self.case.runners) if level == "runner" else [""]

    def _play(self) -> None:
        """Every evaluation from 0: pending since when, firing from when (`for:` semantics)."""
        active_since: dict[tuple[slo.BurnAlert, str], int] = {}
        for t in range(0, self.case.end_s + 1, EVAL_S):
            now: dict[tuple[slo.BurnAlert, str], float] = {}
            for alert in slo.burn_alerts(self.config):
                thr = slo.threshold_value(self.config, alert.window.factor)
                for who in self._subjects(alert.level):
                    long_ = self.ratio(t, alert.window.long, who or None)
                    short = self.ratio(t, alert.window.short, who or None)
                    key = (alert, who)
                    history = self.running(t, alert.window.long, who or None)
                    recent = self.running(t, alert.window.short, who or None)
                    enough = history >= self.config.slo.min_history * recent
                    if long_ is None or short is None or not (min(long_, short) > thr and enough):
                        active_since.pop(key, None)
                        continue
                    since = active_since.setdefault(key, t)
                    if t - since >= parse_duration(alert.window.for_):
                        now[key] = long_
            self._firing[t] = now

    def firing(self, t_s: int) -> dict[tuple[slo.BurnAlert, str], float]:
        return self._firing[t_s]

    def first_firing(self, alert: slo.BurnAlert, who: str = "") -> int | None:
        for t, now in self._firing.items():
            if (alert, who) in now:
                return t
        return None

    def fired(self) -> set[tuple[slo.BurnAlert, str]]:
        """Every (alert, runner or "" for the fleet) that fires at some evaluation."""
        return {key for now in self._firing.values() for key in now}

    def ever_fires(self, alert: slo.BurnAlert, who: str = "") -> bool:
        return self.first_firing(alert, who) is not None

    def transitions(self) -> list[int]:
        """Evaluations at which some alert starts or stops firing."""
        out: list[int] = []
        before: dict[tuple[slo.BurnAlert, str], float] = {}
        for t, now in self._firing.items():
            if set(now) != set(before):
                out.append(t)
            before = now
        return out


def series_name(runner: str, state: RunnerState) -> str:
    labels = {q.RUNNER: runner, q.STATE: state.value, "job": "pullwake-runner"}
    labels["instance"] = f"{runner}:9464"
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{c.RUNNER_STATE.prom_name}{{{inner}}}"


def encode(values: Sequence[str]) -> str:
    """promtool's expanding notation, run-length: `1x3` is four 1s, `_x3` three gaps."""
    out, i = [], 0
    while i < len(values):
        j = i
        while j < len(values) and values[j] == values[i]:
            j += 1
        n, v = j - i, values[i]
        if v == "_":
            out.append("_" if n == 1 else f"_x{n}")
        else:
            out.append(v if n == 1 else f"{v}x{n - 1}")
        i = j
    return " ".join(out)


def input_series(case: Case) -> list[dict[str, str]]:
    out = []
    for runner, timeline in case.runners.items():
        for state in RunnerState:
            values = ["_" if s is None else ("1" if s is state else "0") for s in timeline]
            out.append({"series": series_name(runner, state), "values": encode(values)})
    return out


def expected(config: Config, model: Model, t_s: int, name: str) -> list[dict[str, Any]]:
    alerts = []
    for (alert, who), value in sorted(
        model.firing(t_s).items(), key=lambda kv: (kv[0][1], kv[0][0].window.long)
    ):
        if alert.name != name:
            continue
        labels = dict(alert.labels)
        if who:
            labels[q.RUNNER] = who
        alerts.append({"exp_labels": labels, "exp_annotations": alert.rendered(config, value, who)})
    return alerts


def eval_times(case: Case, model: Model) -> list[int]:
    """Checkpoints, and the evaluation before and at every change of the firing set."""
    if case.dense:
        return list(range(0, case.end_s + 1, EVAL_S))
    times = {parse_duration(t) for t in case.checkpoints}
    for t in model.transitions():
        times |= {t, max(t - EVAL_S, 0)}
    times.add(case.end_s)
    return sorted(int(t) for t in times)


def recorded(config: Config, model: Model, t_s: int) -> list[dict[str, Any]]:
    """Every recorded error ratio at t, per runner and for the fleet, as the model has it."""
    out = []
    for window in config.slo.windows:
        for level in slo.LEVELS:
            name = slo.record_name(level, window)
            exp = []
            for who in model.case.runners if level == "runner" else [None]:
                value = model.ratio(t_s, window, who)
                if value is not None:
                    labels = f'{name}{{{q.RUNNER}="{who}"}}' if who else name
                    exp.append({"labels": labels, "value": value})
            out.append({"expr": name, "eval_time": format_eval(t_s), "exp_samples": exp})
    return out


def test_group(config: Config, case: Case) -> dict[str, Any]:
    model = Model(config, case)
    names = sorted(set(slo.ALERT_NAMES.values()))
    checkpoints = sorted(int(parse_duration(t)) for t in case.checkpoints)
    return {
        "name": case.name,
        "interval": f"{case.step_s}s",
        "input_series": input_series(case),
        "alert_rule_test": [
            {
                "eval_time": format_eval(t),
                "alertname": name,
                "exp_alerts": expected(config, model, t, name),
            }
            for t in eval_times(case, model)
            for name in names
        ],
        "promql_expr_test": [x for t in checkpoints for x in recorded(config, model, t)],
    }


def format_eval(t_s: int) -> str:
    return format_duration(t_s) if t_s else "0s"


# --- the cases -----------------------------------------------------------------------
def healthy(n: int, seconds: float, first: int = 2) -> dict[str, list[Sample]]:
    return {f"r{i}": steady(S, seconds) for i in range(first, first + n)}


def pair_burn_ratio(config: Config, window: BurnWindow) -> float:
    """An error ratio this pair must catch and every faster-burning pair must not.

    Three quarters of the way from this pair's factor to the next higher one
    (twice the factor for the highest), as an error ratio.
    """
    higher = sorted(b.factor for b in config.slo.burn_windows if b.factor > window.factor)
    factor = window.factor + 0.75 * (higher[0] - window.factor) if higher else 2 * window.factor
    return factor * config.slo.budget


def pair_case(config: Config, window: BurnWindow) -> Case:
    """Clean history (the long window, at most 2h), then a steady burn, then recovery.

    The burn lasts until the long window must have crossed the threshold,
    plus `for:` and the short window, then stops: the alert resolves once
    the short window is clean, long before the long window is.
    """
    long_s, short_s = parse_duration(window.long), parse_duration(window.short)
    step = STEP_S if short_s <= 1800 else 60
    history = min(long_s, 2 * 3600)
    ratio = pair_burn_ratio(config, window)
    thr = window.factor * config.slo.budget
    # ratio * T / min(history + T, long) > thr; burn twice that long to be well over.
    cross = thr * history / (ratio - thr)
    if history + cross > long_s:
        cross = thr * long_s / ratio
    # ...and not before the long window holds enough history (Slo.min_history).
    needed = config.slo.min_history * short_s - history
    burning = max(2 * cross, needed) + parse_duration(window.for_) + min(short_s, 3600)
    r1 = steady(S, history, step) + burn(ratio, burning, step) + steady(S, short_s, step)
    early = history + max(cross, needed) / 2  # burning: the short window is over, not the long
    return Case(
        f"{window.factor:g}x over {window.long} and {window.short}: a {ratio * 100:.3g}% burn",
        {"r1": r1},
        checkpoints=(format_eval(int(early - early % EVAL_S)),),
        step_s=step,
    )


def outage_case(config: Config) -> Case:
    """6h of clean history, then r1 stuck reconnecting for 30 min, then back."""
    runners = {"r1": steady(S, 6 * 3600) + steady(R, 1800) + steady(S, 3600)}
    runners.update(healthy(1, 6 * 3600 + 1800 + 3600))
    return Case("full outage of one runner for 30m, after 6h of streaming", runners)


def rotation_case(gap_s: float) -> Case:
    hours = 4
    runners = {"r1": rotating(gap_s, hours * 3600)}
    runners.update(healthy(1, hours * 3600))
    checkpoints = tuple(f"{h}h" for h in range(1, hours))
    return Case(
        f"SSE rotation every {ROTATE_S}s, reconnected in {gap_s:g}s: caught by a scrape "
        f"once every {STEP_S / gap_s:g} rotations",
        runners,
        checkpoints,
        dense=True,
    )


def flapping_case() -> Case:
    """r1 keeps losing its stream (45 s up, 15 s reconnecting) among 9 healthy runners."""
    history, flapping = 3600, 3600
    runners = {"r1": steady(S, history) + flap(45, 15, flapping)}
    runners.update(healthy(HEALTHY_RUNNERS, history + flapping))
    return Case(f"one flapping runner among {HEALTHY_RUNNERS} healthy ones", runners)


def fleet_case() -> Case:
    """A healthy fleet: streaming, one runner stopped for an hour, a scrape gap."""
    runners = healthy(3, 3 * 3600, first=1)
    r3 = steady(S, 3600) + steady(RunnerState.STOPPING, 30) + steady(RunnerState.STOPPED, 3600)
    r3 += steady(C, 15) + steady(S, 3600)
    runners["r3"] = r3
    runners["r2"] = steady(S, 3600) + steady(None, 600) + steady(S, 2 * 3600)
    name = "healthy fleet: one runner stopped for 1h, one scrape gap"
    return Case(name, runners, ("1h", "2h"), dense=True)


# Rotation gaps: a TLS reconnect over a WAN (0.4% of the time, within the budget) and a
# slow 1 s one (1.6%: over the budget, a ticket at most, once 1d/2h has the history).
ROTATION_GAPS_S = (0.25, 1.0)


def cases(config: Config) -> list[Case]:
    out = [fleet_case(), outage_case(config)]
    out += [rotation_case(g) for g in ROTATION_GAPS_S]
    out.append(flapping_case())
    out += [pair_case(config, b) for b in config.slo.burn_windows]
    return out


def test_file(config: Config) -> dict[str, Any]:
    return {
        "rule_files": ["../rules/pullwake-slo.yml"],
        "evaluation_interval": f"{EVAL_S}s",
        # recordings before the alerts that read them, as one group would (slo.rule_file)
        "group_eval_order": slo.group_order(config),
        "tests": [test_group(config, case) for case in cases(config)],
    }
