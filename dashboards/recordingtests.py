"""`promtool test rules` cases for the fleet recording rules (`dashboards.recording`).

One case per recording rule: two runners' series (with the `job`/`instance`
labels a scrape adds, which the rule must aggregate away), and the exact
recorded samples at an evaluation time, computed here from the same inputs.
A rule without a case fails the build (`CASES` must cover `recordings`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pullwake.core import catalog as c
from pullwake.core.protocol import WakeOutcome
from pullwake.dashboards import queries as q
from pullwake.dashboards import rules
from pullwake.dashboards.config import Config, parse_duration
from pullwake.dashboards.recording import FILE, GROUP, Recording, bucket_rate_name, recordings

RECORDING_FILE = "pullwake-recording.yml"
ALERTS_FILE = "pullwake-alerts.yml"

STEP = 15  # seconds between input samples
SAMPLES = 60  # 15 minutes per case
EVAL = "10m"


def _series(metric: c.Metric, runner: str, **labels: str) -> str:
    component = metric.component.value
    instance = runner if metric.component is c.Component.RUNNER else "server:4437"
    all_labels = {q.RUNNER: runner, **labels, "job": f"pullwake-{component}", "instance": instance}
    inner = ", ".join(f'{k}="{v}"' for k, v in all_labels.items())
    return f"{metric.prom_name}{{{inner}}}"


def _counter(per_step: int) -> str:
    return f"0+{per_step}x{SAMPLES}"


def _wake_rate(config: Config, r: Recording) -> dict[str, Any]:
    """handled: 1 + 2 per step over two runners, fenced: 1 per step on one (rate = slope)."""
    handled, fenced = WakeOutcome.HANDLED.value, WakeOutcome.FENCED.value
    inputs = {
        _series(c.WAKES, "r1", outcome=handled): _counter(1),
        _series(c.WAKES, "r2", outcome=handled): _counter(2),
        _series(c.WAKES, "r2", outcome=fenced): _counter(1),
    }
    expected = [({q.OUTCOME: fenced}, 1 / STEP), ({q.OUTCOME: handled}, 3 / STEP)]
    return _case(r, inputs, expected, config)


def _server_mismatch_runners(config: Config, r: Recording) -> dict[str, Any]:
    """Two runners the server sees no stream for, one it does: 2 (0 when none)."""
    inputs = {
        _series(c.SERVER_STREAM_MISMATCH, runner): f"{v}x{SAMPLES}"
        for runner, v in (("r1", 1), ("r2", 1), ("r3", 0))
    }
    return _case(r, inputs, [({}, 2.0)], config)


CASES: dict[str, Callable[[Config, Recording], dict[str, Any]]] = {
    "wake_rate": _wake_rate,
    "server_mismatch_runners": _server_mismatch_runners,
}


def _bucket_rate(config: Config) -> dict[str, Any]:
    """The fleet's per-bucket rate the wake latency quantiles read (first in the
    recording group): the same le summed over runners, job and instance gone."""
    m = c.WAKE_LATENCY
    per_runner = (("r1", {"0.1": 1, "+Inf": 2}), ("r2", {"0.1": 3, "+Inf": 3}))
    inputs = {
        _series(m, r, le=le).replace(m.prom_name, m.prom_name + "_bucket", 1): _counter(n)
        for r, per_le in per_runner
        for le, n in per_le.items()
    }
    name = bucket_rate_name(config, m)

    def rate(le: str) -> float:  # each runner's rate (increase / window), added in order
        window = parse_duration(config.rate_window)
        return sum(per_le[le] * window / STEP / window for _, per_le in per_runner)

    expected = [({"le": "+Inf"}, rate("+Inf")), ({"le": "0.1"}, rate("0.1"))]
    return _expr_case(name, "the recording group's shared bucket rate", inputs, expected, config)


def _fresh(config: Config) -> dict[str, Any]:
    """The alerts' freshness guard (first in the alerts group): a runner whose
    samples stopped 5 minutes before is not fresh, a reporting one is, with the
    newest sample's timestamp as its value."""
    last_s = 10 * 60
    inputs = {
        _series(c.STREAM_CONNECTED, "r1"): _counter(0),
        _series(c.STREAM_CONNECTED, "r2"): f"1x{(last_s - 5 * 60) // STEP}",
    }
    expected = [({q.RUNNER: "r1"}, float(last_s))]
    return _expr_case(q.FRESH_RECORD, "the alerts' freshness guard", inputs, expected, config)


def _case(
    r: Recording,
    inputs: dict[str, str],
    expected: list[tuple[dict[str, str], float]],
    config: Config,
) -> dict[str, Any]:
    return _expr_case(r.record, r.key, inputs, expected, config)


def _expr_case(
    record: str,
    what: str,
    inputs: dict[str, str],
    expected: list[tuple[dict[str, str], float]],
    config: Config,
) -> dict[str, Any]:
    # The windows read at EVAL must lie inside the input series.
    assert parse_duration(config.rate_window) < parse_duration(EVAL) < SAMPLES * STEP
    r = _Named(record)
    return {
        "name": f"{record} ({what})",
        "interval": f"{STEP}s",
        "input_series": [{"series": k, "values": v} for k, v in inputs.items()],
        "promql_expr_test": [
            {
                "expr": r.record,
                "eval_time": EVAL,
                "exp_samples": [
                    {"labels": r.record + _labels(labels), "value": value}
                    for labels, value in expected
                ],
            }
        ],
    }


class _Named:
    def __init__(self, record: str) -> None:
        self.record = record


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def test_file(config: Config) -> dict[str, Any]:
    """`deploy/prometheus/tests/pullwake-fleet.test.yml`."""
    missing = [r.key for r in recordings(config) if r.key not in CASES]
    if missing:
        raise KeyError(f"recording rules without a promtool case: {missing}")
    tests = [CASES[r.key](config, r) for r in recordings(config)]
    tests += [_bucket_rate(config), _fresh(config)]
    return {
        # the groups holding the rules tested here (the others read them first)
        "rule_files": [f"../rules/{f}" for f in (FILE, RECORDING_FILE, ALERTS_FILE)],
        "evaluation_interval": f"{STEP}s",
        # what others read first: the freshness guard's group, then the recordings
        "group_eval_order": [
            *rules.group_order(config),
            *rules.RECORDING_GROUPS,
            GROUP,
        ],
        "tests": tests,
    }
