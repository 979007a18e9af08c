"""The fleet recording rules: checked by promtool, read by the fleet dashboard, benched.

`promtool test rules` runs the generated cases (each rule's exact recorded
samples from two runners' series) and must fail on a wrong expectation; the
fleet dashboard reads each rule it was made for; and `bench/bench_fleet.py
--quick` runs end to end on a small fleet against the real Prometheus.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pullwake.dashboards import recording, recordingtests, rules, slo
from pullwake.dashboards.config import DEFAULT
from tests.dashboards.dashjson import load, prom_targets
from tests.support.prometheus import PROMTOOL, needs_prometheus
from tests.support.repo import DEPLOY, ROOT

RULES = DEPLOY / "prometheus/rules" / recording.FILE
TESTS = DEPLOY / "prometheus/tests/pullwake-fleet.test.yml"


def _promtool(*argv: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *argv], capture_output=True, text=True, timeout=120)


def test_every_recording_has_a_case_and_a_reason() -> None:
    cases = yaml.safe_load(TESTS.read_text())["tests"]
    records = [r.record for r in recording.recordings(DEFAULT)]
    # the fleet group's rules, then the ones the alerts and recording groups read first
    tested = [c["promql_expr_test"][0]["expr"] for c in cases]
    assert set(tested) == set(recording.recording_names(DEFAULT).values())
    assert tested[: len(records)] == records
    assert len(set(records)) == len(records)
    for r in recording.recordings(DEFAULT):
        assert r.why and r.record.count(":") == 2, r


def test_a_recording_without_a_case_fails_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recordingtests, "CASES", {})
    with pytest.raises(KeyError, match="without a promtool case"):
        recordingtests.test_file(DEFAULT)


def test_each_recording_is_read_by_the_dashboard_it_was_made_for() -> None:
    dashboards = load(DEPLOY, DEFAULT)
    for r in recording.recordings(DEFAULT):
        which = r.why.split("'")[0].split()[0]  # "fleet 'Wakes by outcome': ..."
        exprs = [t["expr"] for _, t in prom_targets(dashboards[which])]
        assert r.record in exprs, (which, r.record)


@pytest.mark.prometheus
@needs_prometheus
def test_promtool_checks_and_tests_the_recording_rules() -> None:
    res = _promtool("check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    res = _promtool("test", "rules", str(TESTS))
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.prometheus
@needs_prometheus
def test_promtool_catches_a_wrong_recorded_value(tmp_path: Path) -> None:
    shutil.copytree(RULES.parent, tmp_path / "rules")
    (tmp_path / "tests").mkdir()
    data = yaml.safe_load(TESTS.read_text())
    for case in data["tests"]:
        sample = case["promql_expr_test"][0]["exp_samples"][0]
        sample["value"] = float(sample["value"]) * 1.001
    path = tmp_path / "tests/t.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=10_000))
    res = _promtool("test", "rules", str(path))
    assert res.returncode != 0 and "FAILED" in res.stdout + res.stderr, res.stdout


@pytest.mark.prometheus
@needs_prometheus
def test_bench_fleet_quick_runs_end_to_end(tmp_path: Path) -> None:
    """The bench's whole pipeline on a small fleet: every query and rule group timed."""
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench/bench_fleet.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    rows = report["rows"]
    groups = {r["group"] for r in rows}
    assert {"dashboard/fleet", "dashboard/runner", "dashboard/server"} <= groups
    every = [recording.GROUP, *rules.ALERT_GROUPS, *rules.RECORDING_GROUPS]
    every += slo.group_order(DEFAULT)
    assert {f"rules/{g}" for g in every} <= groups
    assert not [r for r in rows if r["error"]]
    assert report["samples"] > 0 and report["series_at_end"] > 0
