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
from pullwake.dashboards.config import Config, parse_duration
from pullwake.dashboards.recording import FILE, Recording, recordings

STEP = 15  # seconds between input samples
SAMPLES = 60  # 15 minutes per case
EVAL = "10m"


def _series(metric: c.Metric, runner: str, **labels: str) -> str:
    all_labels = {q.RUNNER: runner, **labels, "job": "pullwake-runner", "instance": runner}
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


CASES: dict[str, Callable[[Config, Recording], dict[str, Any]]] = {
    "wake_rate": _wake_rate,
}


def _case(
    r: Recording,
    inputs: dict[str, str],
    expected: list[tuple[dict[str, str], float]],
    config: Config,
) -> dict[str, Any]:
    # The windows read at EVAL must lie inside the input series.
    assert parse_duration(config.rate_window) < parse_duration(EVAL) < SAMPLES * STEP
    return {
        "name": f"{r.record} ({r.key})",
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


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def test_file(config: Config) -> dict[str, Any]:
    """`deploy/prometheus/tests/pullwake-fleet.test.yml`."""
    missing = [r.key for r in recordings(config) if r.key not in CASES]
    if missing:
        raise KeyError(f"recording rules without a promtool case: {missing}")
    return {
        "rule_files": [f"../rules/{FILE}"],
        "evaluation_interval": f"{STEP}s",
        "tests": [CASES[r.key](config, r) for r in recordings(config)],
    }
