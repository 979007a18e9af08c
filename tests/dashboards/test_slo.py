"""The stream availability SLO: its definition, what each generated case is for, promtool.

The generated promtool file (`pullwake-slo.test.yml`) asserts that the
rules agree with `slotests.Model` at every interesting evaluation.  These
tests assert what the cases are *for*, on the model and the default config
(an outage pages within minutes, SSE rotation never pages, a flapping
runner pages alone, every window pair fires on its burn and not on a slower
one), then run promtool on the committed file and on mutated rules that a
weaker file would let through.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pullwake.core import catalog
from pullwake.core.protocol import RunnerState
from pullwake.dashboards import slo, slotests
from pullwake.dashboards.config import DEFAULT, BurnWindow, Config, Slo, parse_duration
from pullwake.server.config import ServerConfig
from tests.dashboards.promstack import write_deploy
from tests.support.prometheus import PROMTOOL, needs_prometheus
from tests.support.repo import DEPLOY

RS = catalog.RUNNER_STATE.prom_name
RULES = DEPLOY / "prometheus/rules"
TESTS = DEPLOY / "prometheus/tests/pullwake-slo.test.yml"
CASES = {c.name: c for c in slotests.cases(DEFAULT)}
PAGE = [a for a in slo.burn_alerts(DEFAULT) if a.window.severity == "critical"]


def _case(prefix: str) -> slotests.Case:
    [case] = [c for n, c in CASES.items() if n.startswith(prefix)]
    return case


def _alert(level: slo.Level, long_window: str) -> slo.BurnAlert:
    [a] = [a for a in slo.burn_alerts(DEFAULT) if a.level == level and a.window.long == long_window]
    return a


def _fired(model: slotests.Model) -> set[tuple[str, str, str]]:
    """(level, long window, who) of every alert that fires at some point."""
    return {(a.level, a.window.long, who) for a, who in model.fired()}


# --- the definition -------------------------------------------------------------------
def test_every_runner_state_is_classified_once() -> None:
    """Adding a runner state forces a decision: good, bad or excluded from the SLI."""
    classified = [*slo.GOOD, *slo.BAD, *slo.EXCLUDED]
    assert sorted(classified) == sorted(RunnerState)
    assert len(classified) == len(set(classified))
    assert slo.GOOD == (RunnerState.STREAMING,)
    assert set(slo.EXCLUDED) == {RunnerState.STOPPED, RunnerState.STOPPING}


def test_default_objective_and_the_workbook_table() -> None:
    s = DEFAULT.slo
    assert (s.objective, s.period) == (0.995, "28d")
    table = [(b.factor, b.long, b.short, b.severity) for b in s.burn_windows]
    assert table == [
        (14.4, "1h", "5m", "critical"),
        (6.0, "6h", "30m", "critical"),
        (3.0, "1d", "2h", "warning"),
        (1.0, "3d", "6h", "warning"),
    ]
    assert s.windows == ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


def test_one_recording_rule_per_window_and_level() -> None:
    records = [r["record"] for r in slo.recording_rules(DEFAULT)]
    for level in ("runner_id", "fleet"):
        for w in DEFAULT.slo.windows:
            assert f"{level}:{RS}:error_ratio{w}" in records
            assert f"{level}:{RS}:running_samples{w}" in records
        # The raw gauge is read once per runner and window, into two disjoint counts.
        assert f"runner_id:{RS}:bad_samples{w}" in records
        assert f"runner_id:{RS}:good_samples{w}" in records
    # ...and, for the long windows, into 5-minute buckets once (slo.bucket_rules).
    assert f"runner_id:{RS}:bad_samples_bucket5m" in records
    assert f"runner_id:{RS}:good_samples_bucket5m" in records
    assert len(records) == len(set(records)) == 6 * len(DEFAULT.slo.windows) + 2
    # Counts come before the rules that add them up or divide by them: per window a
    # group of raw counts, then (evaluated after it in promtool) one of running counts,
    # then ratios; then one group per window pair, its runner and fleet alerts.
    order = {"bad_samples": 0, "good_samples": 0, "running_samples": 1, "error_ratio": 2}
    groups = {g["name"]: g["rules"] for g in slo.rule_file(DEFAULT)["groups"]}
    assert list(groups) == slo.group_order(DEFAULT)
    for w in DEFAULT.slo.windows:
        names = [r["record"] for r in groups[slo.window_group(w)] + groups[slo.ratio_group(w)]]
        assert all(n.endswith(f"samples{w}") or n.endswith(f"ratio{w}") for n in names)
        kinds = [n.split(":")[2].removesuffix(w) for n in names]
        assert [order[k] for k in kinds] == sorted(order[k] for k in kinds)
        assert len(groups[slo.window_group(w)]) == 2  # the raw counts alone
    for b in DEFAULT.slo.burn_windows:
        assert all("alert" in r for r in groups[slo.burn_group(b)])
    # The raw gauge is read by the buckets and the windows below 6h; 6h, 1d and 3d add
    # up buckets (ranges 1 ms short: a 2.x range includes its left edge).
    raw = [r["expr"] for r in slo.recording_rules(DEFAULT) if f"{RS}{{" in r["expr"]]
    short = [w for w in DEFAULT.slo.windows if not slo.bucketed(w)]
    assert short == ["5m", "30m", "1h", "2h"]
    assert len(raw) == 2 * len(short) + 2
    assert [r["expr"] for r in groups[slo.window_group("1d")]] == [
        f"sum_over_time(runner_id:{RS}:{k}_samples_bucket5m[23h59m59s999ms])"
        for k in ("bad", "good")
    ]
    assert slo.group_order(DEFAULT)[0] == slo.BUCKET_GROUP
    for r in groups[slo.BUCKET_GROUP]:
        assert r["expr"].endswith("[4m59s999ms])) and on () vector(time() % 300) < 15")


def test_burn_alert_labels_and_expression() -> None:
    rules = slo.alert_rules(DEFAULT)
    assert len(rules) == 2 * len(DEFAULT.slo.burn_windows)
    [page] = [r for r in rules if r["labels"]["long_window"] == "1h" and "runner_id" in r["expr"]]
    assert page["alert"] == "PullWakeRunnerStreamBudgetBurn"
    assert page["labels"] == {"severity": "critical", "long_window": "1h", "short_window": "5m"}
    assert page["expr"] == (
        f"runner_id:{RS}:error_ratio1h > 14.4 * (1 - 0.995)"
        f" and on (runner_id) runner_id:{RS}:error_ratio5m > 14.4 * (1 - 0.995)"
        f" and on (runner_id) runner_id:{RS}:running_samples1h"
        f" >= 2 * runner_id:{RS}:running_samples5m"
    )
    assert "47 hours" in page["annotations"]["description"]


@pytest.mark.parametrize(
    "slo_config,match",
    [
        (Slo(objective=1.0), "objective must be in"),
        (Slo(period="4 weeks"), "not a Prometheus duration"),
        (Slo(burn_windows=(BurnWindow("5m", "1h", 14.4, "critical", "1m"),)), "not below"),
        (Slo(burn_windows=(BurnWindow("1h", "5m", 0, "critical", "1m"),)), "factor"),
        (Slo(burn_windows=(BurnWindow("60d", "1h", 1, "warning", "1m"),)), "longer than"),
        (Slo(min_history=0.5), "min_history"),
    ],
)
def test_slo_config_fails_loudly(slo_config: Slo, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Config(slo=slo_config)


# --- what the cases are for (on the model, default config) ----------------------------
def test_full_outage_pages_within_minutes_and_resolves() -> None:
    case = _case("full outage")
    model = slotests.Model(DEFAULT, case)
    outage = 6 * 3600
    first = model.first_firing(_alert("runner", "1h"), "r1")
    assert first is not None
    # 14.4 * 0.5 % of 1h = 259 s of outage, then `for: 1m`, on a one-minute evaluation.
    assert outage + 259 + 60 <= first <= outage + 259 + 60 + slotests.EVAL_S
    # The healthy neighbour never fires; the fleet (two runners, half down) pages too.
    assert not any(who == "r2" for _, _, who in _fired(model))
    assert model.ever_fires(_alert("fleet", "1h"))
    # 5 minutes after recovery the 1h/5m page has resolved (the short window is clean).
    back = outage + 1800
    assert (_alert("runner", "1h"), "r1") not in model.firing(back + 6 * 60)


@pytest.mark.parametrize("gap_s", slotests.ROTATION_GAPS_S)
def test_sse_rotation_never_pages(gap_s: float) -> None:
    case = _case(f"SSE rotation every {slotests.ROTATE_S}s, reconnected in {gap_s:g}s")
    model = slotests.Model(DEFAULT, case)
    fired = _fired(model)
    assert not [f for f in fired if f[1] in ("1h", "6h")], fired
    caught = sum(s is not slotests.S for s in case.runners["r1"])
    assert caught > 0  # the scrapes do catch the runner reconnecting now and then
    if gap_s <= 0.25:
        assert fired == set()  # within the budget: not even a ticket


def test_rotation_cases_rotate_as_often_as_the_server_does() -> None:
    assert ServerConfig().sse_rotate_seconds == slotests.ROTATE_S


def test_one_flapping_runner_pages_alone() -> None:
    model = slotests.Model(DEFAULT, _case("one flapping runner"))
    fired = _fired(model)
    assert ("runner", "1h", "r1") in fired
    assert {who for _, _, who in fired} <= {"r1", ""}
    assert not [f for f in fired if f[0] == "fleet" and f[1] in ("1h", "6h")]  # fleet: no page


def test_healthy_fleet_fires_nothing() -> None:
    """Includes a runner stopped for an hour and restarting, and a 10 minute scrape gap."""
    model = slotests.Model(DEFAULT, _case("healthy fleet"))
    assert _fired(model) == set()
    # Without min_history, r3's restart (one `connecting` sample in an almost empty
    # window after an hour stopped) would page: the condition has a job.
    loose = dataclasses.replace(DEFAULT, slo=dataclasses.replace(DEFAULT.slo, min_history=1))
    assert ("runner", "1h", "r3") in _fired(slotests.Model(loose, _case("healthy fleet")))


@pytest.mark.parametrize("window", DEFAULT.slo.burn_windows, ids=lambda b: f"{b.long}-{b.short}")
def test_each_pair_fires_on_its_burn_and_no_faster_pair_does(window: BurnWindow) -> None:
    case = _case(f"{window.factor:g}x over {window.long} and {window.short}")
    model = slotests.Model(DEFAULT, case)
    mine = [a for a in slo.burn_alerts(DEFAULT) if a.window == window]
    for a in mine:
        first = model.first_firing(a, "r1" if a.level == "runner" else "")
        assert first is not None, a
        # Not while only the short window is over: the checkpoint is mid-burn.
        [early] = case.checkpoints
        assert first > parse_duration(early)
        assert model.ratio(int(parse_duration(early)), window.short, "r1") > (
            slo.threshold_value(DEFAULT, window.factor)
        )
    faster = {b.long for b in DEFAULT.slo.burn_windows if b.factor > window.factor}
    assert not [f for f in _fired(model) if f[1] in faster]
    # ...and it resolves after the burn, while its long window is still over.
    last = max(
        t for t in range(0, case.end_s + 1, slotests.EVAL_S) if (mine[0], "r1") in model.firing(t)
    )
    resolved = last + slotests.EVAL_S
    assert resolved <= case.end_s
    assert model.ratio(resolved, window.long, "r1") > slo.threshold_value(DEFAULT, window.factor)


def test_every_case_checks_every_alert_both_ways() -> None:
    """Across the file, every rule (level x pair) is asserted firing and asserted silent."""
    data = yaml.safe_load(TESTS.read_text())
    fired, silent = set(), set()
    for group in data["tests"]:
        for check in group["alert_rule_test"]:
            seen = {
                (check["alertname"], a["exp_labels"]["long_window"]) for a in check["exp_alerts"]
            }
            fired |= seen
            for a in slo.burn_alerts(DEFAULT):
                if (a.name, a.window.long) not in seen:
                    silent.add((a.name, a.window.long))
    every = {(a.name, a.window.long) for a in slo.burn_alerts(DEFAULT)}
    assert fired == every and silent == every


# --- promtool -------------------------------------------------------------------------
def _promtool(*argv: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *argv], capture_output=True, text=True, timeout=300, check=False
    )


def _only(tmp: Path, prefix: str, rules_text: str | None = None) -> Path:
    """One case of the committed file, against the committed (or mutated) SLO rules."""
    (tmp / "rules").mkdir()
    (tmp / "tests").mkdir()
    shutil.copy(RULES / "pullwake-slo.yml", tmp / "rules/pullwake-slo.yml")
    if rules_text is not None:
        (tmp / "rules/pullwake-slo.yml").write_text(rules_text)
    data = yaml.safe_load(TESTS.read_text())
    data["tests"] = [t for t in data["tests"] if t["name"].startswith(prefix)]
    assert len(data["tests"]) == 1
    path = tmp / "tests/t.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=10_000))
    return path


@pytest.mark.prometheus
@needs_prometheus
def test_promtool_runs_the_slo_cases() -> None:
    res = _promtool("test", "rules", str(TESTS))
    assert res.returncode == 0, res.stdout + res.stderr


BAD_SELECTOR = 'running\\\\.connecting|running\\\\.reconnecting"'
GOOD_SELECTOR = 'state=~"running\\\\.streaming"'
MIN_HISTORY = (
    f" and on (runner_id) runner_id:{RS}:running_samples1h >= 2 * runner_id:{RS}:running_samples5m"
)
SHORT_WINDOW = f" and on (runner_id) runner_id:{RS}:error_ratio5m > 14.4 * (1 - 0.995)"


@pytest.mark.parametrize(
    "old,new,case",
    [
        # `stopping` counted as not streaming: the stopped-and-restarted runner shows it.
        (BAD_SELECTOR, BAD_SELECTOR[:-1] + '|stopping"', "healthy fleet"),
        # No minimum history: the restarted runner pages on one `connecting` sample.
        (MIN_HISTORY, "", "healthy fleet"),
        # A page on the long window alone keeps paging after the outage ended.
        (SHORT_WINDOW, "", "full outage"),
        # Streaming samples left out of the running count: every recorded value moves.
        (GOOD_SELECTOR, 'state=~"none"', "SSE rotation every 60s, reconnected in 0.25s"),
        # A 5-minute bucket including its left edge counts boundary samples twice.
        ("[4m59s999ms]", "[5m]", "3x over 1d"),
        # A bucket at every evaluation, not one in 20: the long windows count 5x over.
        (" and on () vector(time() % 300) < 15", "", "3x over 1d"),
    ],
    ids=[
        "stopping-counts",
        "no-min-history",
        "no-short-window",
        "streaming-not-counted",
        "bucket-left-edge",
        "bucket-every-evaluation",
    ],
)
@pytest.mark.prometheus
@needs_prometheus
def test_promtool_catches_a_wrong_slo_rule(tmp_path: Path, old: str, new: str, case: str) -> None:
    text = (RULES / "pullwake-slo.yml").read_text()
    assert old in text, old
    res = _promtool("test", "rules", str(_only(tmp_path, case, text.replace(old, new))))
    assert res.returncode != 0 and "FAILED" in res.stdout + res.stderr, res.stdout


@pytest.mark.prometheus
@needs_prometheus
def test_promtool_catches_a_wrong_recorded_value(tmp_path: Path) -> None:
    path = _only(tmp_path, "healthy fleet")
    data = yaml.safe_load(path.read_text())
    [sample] = [
        s
        for x in data["tests"][0]["promql_expr_test"]
        if x["expr"] == slo.record_name("runner", "1h") and x["eval_time"] == "1h"
        for s in x["exp_samples"]
        if 'runner_id="r3"' in s["labels"]
    ]
    sample["value"] += 1e-9
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=10_000))
    res = _promtool("test", "rules", str(path))
    assert res.returncode != 0


@pytest.mark.slow
@pytest.mark.prometheus
@needs_prometheus
@pytest.mark.parametrize(
    "slo_config",
    [
        Slo(objective=0.999, period="30d"),
        Slo(
            burn_windows=(
                BurnWindow("2h", "10m", 10.0, "critical", "2m"),
                BurnWindow("12h", "1h", 2.0, "warning", "30m"),
            ),
            min_history=3,
        ),
    ],
    ids=["99.9-over-30d", "two-pairs"],
)
def test_generated_slo_cases_follow_the_config(tmp_path: Path, slo_config: Slo) -> None:
    out = write_deploy(tmp_path, Config(slo=slo_config))
    res = _promtool("test", "rules", str(out / "prometheus/tests/pullwake-slo.test.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
