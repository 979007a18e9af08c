"""Stream availability SLO: the SLI, its recording rules and the burn-rate alerts.

SLI, per runner: of the scrapes that find the runner *running*
(`running.connecting`, `running.streaming`, `running.reconnecting`), the
share that find it `running.streaming`.  The error ratio is the rest:

    sum_over_time(state{connecting|reconnecting}[W]) / sum_over_time(state{running.*}[W])

The state gauge is one-hot and sampled at every scrape, so with a regular
scrape interval a count of samples is a measure of time.  `stopped` and
`stopping` are neither good nor bad (a runner asked to stop is not
unavailable); a failed scrape and an absent runner give no sample at all and
count neither way (PullWakeRunnerTelemetryAbsent covers the vanished
runner).  The fleet SLI pools every runner's samples: a runner-minute is a
runner-minute whichever runner it belongs to.

Recording rules follow `level:metric:operation`, one per window the alerts
read; the fleet level is spelt `fleet` (no label survives the aggregation).
The raw gauge is read once per window and runner, into two disjoint counts
(not streaming, streaming); the running counts, the ratios and the whole
fleet level add those recorded counts up, so a fleet of 10,000 runners pays
for its raw samples once, not four times (bench/bench_fleet.py).  Windows of a
day and more add up recorded 5-minute buckets instead of raw samples
(`bucket_rules`): 30x fewer samples over 3 days, ending up to 5 minutes back.
The alerts follow the SRE workbook's multi-window, multi-burn-rate table,
taken from `Config.slo.burn_windows`, plus one condition: the long window
must hold `Config.slo.min_history` short windows' worth of running samples,
so one unlucky scrape in a nearly empty window (a runner, a Prometheus or a
laptop just started) cannot page.  docs/slo.md has the whole definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from pullwake.core import catalog as c
from pullwake.core.protocol import RunnerState
from pullwake.dashboards import queries as q
from pullwake.dashboards.config import BurnWindow, Config, format_duration, parse_duration

Level = Literal["runner", "fleet"]
LEVELS: Final[tuple[Level, ...]] = ("runner", "fleet")

# Every runner state, classified on purpose: adding a state to RunnerState
# fails a test until it is placed here.
GOOD: Final = (RunnerState.STREAMING,)
BAD: Final = (RunnerState.CONNECTING, RunnerState.RECONNECTING)
EXCLUDED: Final = (RunnerState.STOPPED, RunnerState.STOPPING)
ELIGIBLE: Final = (*BAD, *GOOD)

ALERT_NAMES: Final[dict[Level, str]] = {
    "runner": "PullWakeRunnerStreamBudgetBurn",
    "fleet": "PullWakeFleetStreamBudgetBurn",
}


def _states(states: tuple[RunnerState, ...]) -> str:
    # In a PromQL string literal a regex backslash is itself escaped: "running\\.streaming".
    return "|".join(s.value.replace(".", "\\\\.") for s in states)


def _by(level: Level) -> str:
    return f"sum by ({q.RUNNER}) " if level == "runner" else "sum "


def samples(config: Config, states: tuple[RunnerState, ...], window: str, level: Level) -> str:
    """How many scrapes within `window` found the runner(s) in one of `states` (raw)."""
    sel = q.series(config, c.RUNNER_STATE, f'{q.STATE}=~"{_states(states)}"')
    return f"{_by(level)}(sum_over_time({sel}[{window}]))"


def error_ratio(config: Config, window: str, level: Level) -> str:
    """Share of running samples not streaming; no series where nothing was running.

    Reads the recorded per-runner counts of the same window (the window's
    count group, `rule_file`); the fleet sums them.
    """
    bad = _recorded_sum(_count_name(BAD_KIND, window), level)
    return f"{bad} / ({running_name(level, window)} > 0)"


def _level(level: Level) -> str:
    return q.RUNNER if level == "runner" else "fleet"


def record_name(level: Level, window: str) -> str:
    """The recorded error ratio (the SLI's complement) of `level` over `window`."""
    return f"{_level(level)}:{c.RUNNER_STATE.prom_name}:error_ratio{window}"


def running_name(level: Level, window: str) -> str:
    """The recorded count of samples that found the runner(s) running."""
    return f"{_level(level)}:{c.RUNNER_STATE.prom_name}:running_samples{window}"


# The raw state gauge is read once per window and runner, for two disjoint counts
# (not streaming, streaming); everything else adds recorded counts up.  At fleet scale
# reading the raw samples is the whole cost (runners x states x window / scrape).
BAD_KIND: Final = "bad"
GOOD_KIND: Final = "good"
_KIND_STATES: Final = {BAD_KIND: BAD, GOOD_KIND: GOOD}


def _count_name(kind: str, window: str) -> str:
    """Per-runner count of `kind` samples (not streaming / streaming) within `window`."""
    return f"{q.RUNNER}:{c.RUNNER_STATE.prom_name}:{kind}_samples{window}"


def _recorded_sum(name: str, level: Level) -> str:
    return name if level == "runner" else f"sum({name})"


def running(config: Config, window: str, level: Level) -> str:
    """Running samples: the runner's bad + good counts (either may be absent), or their sum."""
    both = "|".join(_count_name(k, window) for k in _KIND_STATES)
    per_runner = f'sum by ({q.RUNNER}) ({{__name__=~"{both}"}})'
    return per_runner if level == "runner" else f"sum({running_name('runner', window)})"


# Long windows add up recorded 5-minute buckets instead of reading the raw gauge:
# over 3 days at 10,000 runners the raw read would take ~20 s per evaluation
# (bench/bench_fleet.py, docs/slo.md).  Per runner, a bucket holds the bad and good
# samples of the 5 minutes before it; it is recorded at one evaluation in
# 300 s / interval (`time() % 300 < interval`, which also holds under promtool,
# which evaluates every group at every step).  Both ranges end 1 ms short: Prometheus
# 2.x range selectors include their left edge, so a sample (or bucket) on a boundary
# would count twice.  A bucketed window ends at its last bucket, up to 5 minutes
# behind; windows shorter than BUCKETED_FROM (every page's short window) stay raw.
BUCKET: Final = "5m"
BUCKET_S: Final = 300
BUCKETED_FROM: Final = "6h"


def bucketed(window: str) -> bool:
    """Whether `window` is summed from recorded 5-minute buckets (else read raw)."""
    return parse_duration(window) >= parse_duration(BUCKETED_FROM)


def _just_under(window: str) -> str:
    """`window` minus 1 ms: a range that excludes its left edge in Prometheus 2.x too."""
    return format_duration(parse_duration(window) - 0.001)


def bucket_name(kind: str) -> str:
    """Per-runner count of `kind` samples in the 5 minutes up to the bucket's time."""
    return f"{q.RUNNER}:{c.RUNNER_STATE.prom_name}:{kind}_samples_bucket{BUCKET}"


def bucket_rules(config: Config) -> list[dict[str, Any]]:
    """The 5-minute buckets per runner, recorded once every BUCKET_S (nothing in between)."""
    every = parse_duration(config.rule_evaluation_interval)
    once = f" and on () vector(time() % {BUCKET_S}) < {every:g}"
    return [
        {
            "record": bucket_name(kind),
            "expr": samples(config, states, _just_under(BUCKET), "runner") + once,
        }
        for kind, states in _KIND_STATES.items()
    ]


def recording_names(config: Config) -> dict[str, str]:
    """`<kind>_<level>_<window>` -> recorded series, e.g. "ratio_fleet_1h"."""
    out = {}
    if any(bucketed(w) for w in config.slo.windows):
        for kind in _KIND_STATES:
            out[f"{kind}_runner_bucket"] = bucket_name(kind)
    for w in config.slo.windows:
        for kind in _KIND_STATES:
            out[f"{kind}_runner_{w}"] = _count_name(kind, w)
    for level in LEVELS:
        for w in config.slo.windows:
            out[f"running_{level}_{w}"] = running_name(level, w)
            out[f"ratio_{level}_{w}"] = record_name(level, w)
    return out


def count_rules(config: Config, window: str) -> list[dict[str, Any]]:
    """One window's counts per runner: raw, or the sum of its 5-minute buckets."""
    if bucketed(window):
        return [
            {
                "record": _count_name(kind, window),
                "expr": f"sum_over_time({bucket_name(kind)}[{_just_under(window)}])",
            }
            for kind in _KIND_STATES
        ]
    return [
        {"record": _count_name(kind, window), "expr": samples(config, states, window, "runner")}
        for kind, states in _KIND_STATES.items()
    ]


def ratio_rules(config: Config, window: str) -> list[dict[str, Any]]:
    """One window's running counts, then the ratios dividing by them (recorded counts)."""
    counts = [
        {"record": running_name(level, window), "expr": running(config, window, level)}
        for level in LEVELS
    ]
    ratios = [
        {"record": record_name(level, window), "expr": error_ratio(config, window, level)}
        for level in LEVELS
    ]
    return counts + ratios


def window_rules(config: Config, window: str) -> list[dict[str, Any]]:
    """One window's rules: raw counts per runner first, then running counts, then ratios."""
    return count_rules(config, window) + ratio_rules(config, window)


def recording_rules(config: Config) -> list[dict[str, Any]]:
    """Every recording rule: the buckets (if a window uses them), then window by window."""
    buckets = bucket_rules(config) if any(bucketed(w) for w in config.slo.windows) else []
    return buckets + [r for w in config.slo.windows for r in window_rules(config, w)]


def threshold(config: Config, factor: float) -> str:
    """The error ratio a burn rate of `factor` means, as PromQL: `14.4 * (1 - 0.995)`."""
    return f"{factor:g} * (1 - {config.slo.objective:g})"


def threshold_value(config: Config, factor: float) -> float:
    """The same number as Prometheus computes it (same float operations)."""
    return factor * (1 - config.slo.objective)


def budget_lasts(config: Config, factor: float) -> str:
    """How long the whole period's budget lasts at this burn rate, in words."""
    hours = parse_duration(config.slo.period) / factor / 3600
    return f"{hours:.0f} hours" if hours < 48 else f"{hours / 24:.1f} days"


@dataclass(frozen=True)
class BurnAlert:
    level: Level
    window: BurnWindow

    @property
    def name(self) -> str:
        return ALERT_NAMES[self.level]

    def expr(self, config: Config) -> str:
        b = self.window
        t = threshold(config, b.factor)
        long_, short = record_name(self.level, b.long), record_name(self.level, b.short)
        history = running_name(self.level, b.long)
        recent = running_name(self.level, b.short)
        on = f" on ({q.RUNNER})" if self.level == "runner" else ""
        return (
            f"{long_} > {t} and{on} {short} > {t}"
            f" and{on} {history} >= {config.slo.min_history:g} * {recent}"
        )

    @property
    def labels(self) -> dict[str, str]:
        b = self.window
        return {"severity": b.severity, "long_window": b.long, "short_window": b.short}

    def summary(self) -> str:
        who = "A runner" if self.level == "runner" else "The runner fleet"
        what = "paging" if self.window.severity == "critical" else "ticket"
        return f"{who} is burning its stream availability error budget ({what} burn rate)."

    def description(self, config: Config, value: str, runner: str = "") -> str:
        b, slo = self.window, config.slo
        who = (
            f"Runner {runner} was not streaming {value} of its"
            if self.level == "runner"
            else f"The fleet's runners were not streaming {value} of their"
        )
        return (
            f"{who} running time over the last {b.long} "
            f"(and still over the last {b.short}): above {b.factor:g}x the error budget of a "
            f"{slo.objective * 100:g}% objective, which would spend the whole {slo.period} budget "
            f"in {budget_lasts(config, b.factor)}."
        )

    def annotations(self, config: Config) -> dict[str, str]:
        value = "{{ $value | humanizePercentage }}"
        return {
            "summary": self.summary(),
            "description": self.description(config, value, "{{ $labels." + q.RUNNER + " }}"),
            "runbook_url": config.runbook_url(self.name),
        }

    def rendered(self, config: Config, value: float, runner: str = "") -> dict[str, str]:
        """The annotations Prometheus renders for this value (Go's `%.4g%%` of value*100)."""
        out = self.annotations(config)
        out["description"] = self.description(config, f"{value * 100:.4g}%", runner)
        return out

    def rule(self, config: Config) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr(config),
            "for": self.window.for_,
            "labels": self.labels,
            "annotations": self.annotations(config),
        }


def burn_alerts(config: Config) -> tuple[BurnAlert, ...]:
    return tuple(BurnAlert(level, b) for level in LEVELS for b in config.slo.burn_windows)


def alert_rules(config: Config) -> list[dict[str, Any]]:
    return [a.rule(config) for a in burn_alerts(config)]


GROUP = "pullwake-slo"


BUCKET_GROUP: Final = f"{GROUP}-bucket{BUCKET}"


def window_group(window: str) -> str:
    """The window's raw counts."""
    return f"{GROUP}-{window}"


def ratio_group(window: str) -> str:
    """The window's running counts and ratios, from its raw counts."""
    return f"{GROUP}-{window}-ratio"


def burn_group(b: BurnWindow) -> str:
    return f"{GROUP}-burn-{b.long}-{b.short}"


def group_order(config: Config) -> list[str]:
    """The groups in dependency order: every window's raw counts, then its running
    counts and ratios, then the alerts reading them (`promtool test rules`'
    group_eval_order)."""
    windows = config.slo.windows
    return (
        ([BUCKET_GROUP] if any(bucketed(w) for w in windows) else [])
        + [window_group(w) for w in windows]
        + [ratio_group(w) for w in windows]
        + [burn_group(b) for b in config.slo.burn_windows]
    )


def rule_file(config: Config) -> dict[str, Any]:
    """Per window a group of raw counts and one of running counts and ratios, then
    one group per window pair with its runner and fleet alerts.

    Prometheus evaluates groups concurrently, so at 10,000 runners each group
    stays under a second (one group took 4.5-4.8 s, one per window 0.6-1.1 s:
    bench/bench_fleet.py).  A group reading another's records sees its latest
    evaluation (at most one `rule_evaluation_interval` older); promtool
    evaluates the groups in `group_order`, so the generated cases see exactly
    the one-group values.
    """
    interval = config.rule_evaluation_interval
    windows = config.slo.windows
    groups: list[dict[str, Any]] = []
    if any(bucketed(w) for w in windows):
        every = parse_duration(interval)
        if BUCKET_S % every:
            raise ValueError(f"rule_evaluation_interval {interval} does not divide {BUCKET}")
        for w in windows:
            if bucketed(w) and parse_duration(w) % BUCKET_S:
                raise ValueError(f"SLO window {w} is not a whole number of {BUCKET} buckets")
        groups.append({"name": BUCKET_GROUP, "interval": interval, "rules": bucket_rules(config)})
    groups += [
        {"name": window_group(w), "interval": interval, "rules": count_rules(config, w)}
        for w in windows
    ]
    groups += [
        {"name": ratio_group(w), "interval": interval, "rules": ratio_rules(config, w)}
        for w in windows
    ]
    groups += [
        {
            "name": burn_group(b),
            "interval": interval,
            "rules": [BurnAlert(level, b).rule(config) for level in LEVELS],
        }
        for b in config.slo.burn_windows
    ]
    return {"groups": groups}


# --- dashboard expressions -----------------------------------------------------------
def burn_rate(config: Config, level: Level, window: str) -> str:
    return f"{record_name(level, window)} / (1 - {config.slo.objective:g})"


def period_error_ratio(config: Config, level: Level = "fleet") -> str:
    """Error ratio over the SLO period, averaged from the shortest recorded window.

    Reading the raw state gauge over 28 days on every dashboard refresh would
    be costly; the mean of the recorded short-window ratio is the usual
    approximation (each evaluation weighs the same).
    """
    return f"avg_over_time({record_name(level, config.slo.windows[0])}[{config.slo.period}])"


def budget_remaining(config: Config) -> str:
    """1 = untouched, 0 = spent, negative = overspent."""
    return f"1 - {period_error_ratio(config)} / (1 - {config.slo.objective:g})"
