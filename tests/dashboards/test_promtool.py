"""The generated rules and Alertmanager config, checked by the real tools.

`promtool test rules` runs the generated unit tests: every alert fires on its
case with exact labels and rendered annotations, and none fires on a healthy
fleet or through normal SSE rotations.  A mutated expectation must make it
fail, so the cases cannot pass vacuously.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pullwake.core import catalog
from pullwake.core.protocol import RunnerState
from pullwake.dashboards import queries as q
from pullwake.dashboards import recording, ruletests
from pullwake.dashboards.config import DEFAULT, Config, ForDurations, Thresholds
from pullwake.dashboards.rules import alerts
from pullwake.server.config import ServerConfig
from tests.dashboards.dashjson import load, prom_targets
from tests.dashboards.promstack import write_deploy
from tests.support.prometheus import AMTOOL, PROMTOOL, needs_alertmanager, needs_prometheus
from tests.support.repo import DEPLOY

pytestmark = pytest.mark.prometheus

RULES = DEPLOY / "prometheus/rules"
TESTS = DEPLOY / "prometheus/tests/pullwake-alerts.test.yml"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@needs_prometheus
def test_promtool_check_rules() -> None:
    assert PROMTOOL is not None
    res = _run(PROMTOOL, "check", "rules", *map(str, sorted(RULES.glob("*.yml"))))
    assert res.returncode == 0, res.stdout + res.stderr
    # the alerts group: the recordings its alerts read first (dashboards.recording), then them
    first = len(recording.alert_recordings(DEFAULT))
    assert f"SUCCESS: {first + len(alerts(DEFAULT))} rules found" in res.stdout


@needs_prometheus
def test_promtool_test_rules() -> None:
    assert PROMTOOL is not None
    res = _run(PROMTOOL, "test", "rules", str(TESTS))
    assert res.returncode == 0, res.stdout + res.stderr
    text = TESTS.read_text()
    for a in alerts(DEFAULT):  # each alert has a firing case and silent cases
        assert f"alertname: {a.name}\n    exp_alerts:\n    - exp_labels:" in text, a.name


@needs_prometheus
@pytest.mark.parametrize(
    "old,new",
    [
        ("severity: critical", "severity: warning"),  # a label
        ("p99 wake latency of runner r1 is 9.95s", "p99 wake latency of runner r1 is 9.96s"),
        ("runner_id: r1\n", "runner_id: r2\n"),  # the neighbour must not fire
    ],
)
def test_promtool_catches_a_wrong_expectation(tmp_path: Path, old: str, new: str) -> None:
    assert PROMTOOL is not None
    shutil.copytree(RULES, tmp_path / "rules")
    (tmp_path / "tests").mkdir()
    text = TESTS.read_text()
    assert old in text
    (tmp_path / "tests/t.yml").write_text(text.replace(old, new, 1))
    res = _run(PROMTOOL, "test", "rules", str(tmp_path / "tests/t.yml"))
    assert res.returncode != 0
    assert "FAILED" in res.stdout + res.stderr


@needs_prometheus
def test_pushed_series_need_the_freshness_guard(tmp_path: Path) -> None:
    """Without `q.fresh` a dead runner's pushed (OTLP) series keep its alerts firing.

    The same rules and cases with the guard cut out: every "dies while it fires
    (pushed over OTLP ...)" case must fail, so those cases prove the guard.
    """
    assert PROMTOOL is not None
    guard = f" and on ({q.RUNNER}) ({q.FRESH_RECORD})"  # q.fresh, recorded first
    (tmp_path / "rules").mkdir()
    for f in RULES.glob("*.yml"):
        (tmp_path / "rules" / f.name).write_text(f.read_text().replace(guard, ""))
    assert guard not in (tmp_path / "rules/pullwake-alerts.yml").read_text()
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests/t.yml").write_text(TESTS.read_text())
    res = _run(PROMTOOL, "test", "rules", str(tmp_path / "tests/t.yml"))
    out = res.stdout + res.stderr
    assert res.returncode != 0
    guarded = [a for a in alerts(DEFAULT) if a.name not in ruletests.UNGUARDED]
    for a in guarded:
        failed = re.search(
            rf"dies while it fires \(pushed over OTLP[^\n]*\n\s*alertname: {a.name},", out
        )
        assert failed, (a.name, out[-3000:])


@needs_prometheus
def test_a_freshness_window_shorter_than_the_export_interval_fails(tmp_path: Path) -> None:
    """Pushed every 60 s (the SDK default), a 45 s `runner_stale_after` would drop a live
    runner between samples: the sparse case says so."""
    assert PROMTOOL is not None
    short = dataclasses.replace(
        DEFAULT, thresholds=dataclasses.replace(DEFAULT.thresholds, runner_stale_after="45s")
    )
    out = write_deploy(tmp_path, short)
    res = _run(PROMTOOL, "test", "rules", str(out / "prometheus/tests/pullwake-alerts.test.yml"))
    assert res.returncode != 0
    assert "name: seed, pushed every 60s" in res.stdout + res.stderr


@needs_alertmanager
def test_amtool_check_config() -> None:
    assert AMTOOL is not None
    res = _run(AMTOOL, "check-config", str(DEPLOY / "alertmanager/alertmanager.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout
    assert "2 receivers" in res.stdout


@needs_prometheus
@pytest.mark.parametrize(
    "config",
    [
        dataclasses.replace(
            DEFAULT,
            thresholds=Thresholds(
                heartbeat_failures=4,
                heartbeat_stale_seconds=200,
                stream_idle_seconds=120,
                reconnect_storm_count=8,
                reconnect_storm_window="5m",
                wake_latency_p99_seconds=2,
            ),
        ),
        Config(for_=ForDurations(**{f.name: "3m" for f in dataclasses.fields(ForDurations)})),
        Config(runner_selector='job="pullwake-runner"', server_selector='job="pullwake-server"'),
    ],
    ids=["other-thresholds", "longer-for", "selectors"],
)
def test_generated_cases_follow_the_config(tmp_path: Path, config: Config) -> None:
    """The cases are derived from the config, not hand-tuned to the defaults."""
    assert PROMTOOL is not None
    out = write_deploy(tmp_path, config)
    res = _run(PROMTOOL, "test", "rules", str(out / "prometheus/tests/pullwake-alerts.test.yml"))
    assert res.returncode == 0, res.stdout + res.stderr


@needs_alertmanager
@pytest.mark.parametrize(
    "labels,receiver",
    [
        (["severity=critical", f"alertname={alerts(DEFAULT)[0].name}"], "pullwake-critical"),
        (["severity=warning", "alertname=PullWakeHeartbeatsFailing"], "pullwake-warning"),
        (["alertname=SomethingElse"], "pullwake-warning"),  # the root route catches the rest
    ],
)
def test_amtool_routes_by_severity(labels: list[str], receiver: str) -> None:
    assert AMTOOL is not None
    config = str(DEPLOY / "alertmanager/alertmanager.yml")
    res = _run(
        AMTOOL, "config", "routes", "test", f"--config.file={config}", *labels, "runner_id=r1"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == receiver


def test_rotation_case_rotates_as_often_as_the_server_does() -> None:
    assert ServerConfig().sse_rotate_seconds == ruletests.ROTATE_S


@needs_prometheus
@pytest.mark.parametrize(
    "old,new,alertname",
    [
        # a storm rule that counts planned rotations as failures
        ('reason=~"eof|', 'reason=~"rotated|eof|', "PullWakeReconnectStorm"),
        # a not-streaming rule with no `for:`, true only in the reconnect gap
        (
            "for: 2m\n    labels:\n      severity: warning\n    annotations:\n      summary: "
            "A runner is stuck",
            "for: 0s\n    labels:\n      severity: warning\n    "
            "annotations:\n      summary: A runner is stuck",
            "PullWakeRunnerNotStreaming",
        ),
    ],
    ids=["storm-counts-rotations", "not-streaming-without-for"],
)
def test_rotation_cases_catch_rules_that_trip_on_rotations(
    tmp_path: Path, old: str, new: str, alertname: str
) -> None:
    """The SSE rotation cases have teeth, at every phase of the rotation cycle."""
    assert PROMTOOL is not None
    shutil.copytree(RULES, tmp_path / "rules")
    alerts_file = tmp_path / "rules/pullwake-alerts.yml"
    text = alerts_file.read_text()
    assert text.count(old) == 1
    alerts_file.write_text(text.replace(old, new))
    (tmp_path / "tests").mkdir()
    shutil.copy(TESTS, tmp_path / "tests/t.yml")
    res = _run(PROMTOOL, "test", "rules", str(tmp_path / "tests/t.yml"))
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert f"rotation every {ruletests.ROTATE_S}s (server default): no alert" in out, out
    assert f"alertname: {alertname}" in out, out


@needs_prometheus
def test_server_mismatch_stat_counts_runners_not_series(tmp_path: Path) -> None:
    """A runner seen through two scrape paths is still one runner on the stat."""
    assert PROMTOOL is not None
    server = load(DEPLOY, DEFAULT)["server"]
    [expr] = [
        t["expr"]
        for title, t in prom_targets(server)
        if title == "Client says connected, server sees no stream"
    ]
    name = catalog.SERVER_STREAM_MISMATCH.prom_name
    # the stat reads fleet:...:runners, recorded by the fleet group (dashboards.recording)
    case = {
        "rule_files": [str(RULES / recording.FILE)],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [
                    {"series": f'{name}{{runner_id="r1", job="a"}}', "values": "1x4"},
                    {"series": f'{name}{{runner_id="r1", job="b"}}', "values": "1x4"},
                    {"series": f'{name}{{runner_id="r2", job="a"}}', "values": "0x4"},
                ],
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "30s",
                        "exp_samples": [{"labels": f'{{__name__="{expr}"}}', "value": 1}],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "stat.test.yml"
    path.write_text(yaml.safe_dump(case))
    res = _run(PROMTOOL, "test", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr


@needs_prometheus
def test_state_code_is_the_current_states_number(tmp_path: Path) -> None:
    """The runner dashboard's one-row state timeline: one-hot gauges -> one code per runner."""
    name = catalog.RUNNER_STATE.prom_name
    series = []
    for state in RunnerState:
        for runner, current in (("r1", RunnerState.RECONNECTING), ("r2", RunnerState.STREAMING)):
            value = "1x4" if state is current else "0x4"
            labels = f'runner_id="{runner}", state="{state.value}", job="pullwake-runner"'
            series.append({"series": f"{name}{{{labels}}}", "values": value})
    expected = [
        {"labels": f'{{runner_id="{r}"}}', "value": q.STATE_CODES[s.value]}
        for r, s in (("r1", RunnerState.RECONNECTING), ("r2", RunnerState.STREAMING))
    ]
    case = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": series,
                "promql_expr_test": [
                    {"expr": q.state_code(DEFAULT), "eval_time": "30s", "exp_samples": expected}
                ],
            }
        ],
    }
    path = tmp_path / "state.test.yml"
    path.write_text(yaml.safe_dump(case))
    assert PROMTOOL is not None
    res = _run(PROMTOOL, "test", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
