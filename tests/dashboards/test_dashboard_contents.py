"""Each generated dashboard holds exactly the panels the issue lists, laid out sanely.

Read back from the committed JSON (what Grafana provisions): panel types and
titles in order, the fleet table's columns, which queries share a panel, the
units, and a grid where no two panels overlap.
"""

from __future__ import annotations

from typing import Any

import pytest

from pullwake.core import catalog as c
from pullwake.core.protocol import RunnerState
from pullwake.dashboards import queries as q
from pullwake.dashboards import slo
from pullwake.dashboards.config import DEFAULT
from pullwake.dashboards.rules import alerts, recording_names, recording_rules
from tests.dashboards.dashjson import load, panels, prom_targets
from tests.support.repo import DEPLOY

DASH = load(DEPLOY, DEFAULT)
REC = recording_names(DEFAULT)

EXPECTED = {
    "fleet": [
        ("table", "Runners"),
        ("table", "Stream connected while heartbeats fail"),
        ("stat", "Stream availability (SLO period)"),
        ("stat", "Error budget remaining (SLO period)"),
        ("table", "Runners burning their error budget fast"),
        ("timeseries", "Stream availability SLI"),
        ("timeseries", "Error budget burn rate"),
        ("timeseries", "Reconnect rate by reason"),
        ("timeseries", "Heartbeat failure rate by error type"),
        ("timeseries", "Wake latency p50 / p99"),
        ("timeseries", "Wakes by outcome"),
        ("table", "Runners losing claims"),
        ("alertGroups", "Firing pullwake alerts"),
    ],
    "runner": [
        ("state-timeline", "State"),
        ("timeseries", "Stream age vs seconds since heartbeat success"),
        ("timeseries", "Idle vs idle timeout"),
        ("timeseries", "Reconnects by reason"),
        ("timeseries", "Wake latency p50 / p99 (exemplars -> traces)"),
        ("table", "Recent sessions (traces)"),
        ("timeseries", "HTTP request duration p50 / p99 (OTLP)"),
        ("timeseries", "Wakes by outcome"),
        ("timeseries", "HTTP requests by status (OTLP)"),
    ],
    "server": [
        ("stat", "Client says connected, server sees no stream"),
        ("table", "Runners the server sees no stream for"),
        ("timeseries", "Open streams by live mode"),
        ("timeseries", "Messages and wakes"),
        ("timeseries", "Pending subscriptions, active claims"),
        ("timeseries", "Heartbeats received"),
        ("timeseries", "Lease remaining"),
        ("timeseries", "Claims and completions"),
        ("timeseries", "Claim lease expiries"),
        ("timeseries", "API request duration p99"),
    ],
}


def _panel(key: str, title: str) -> dict[str, Any]:
    [p] = [p for p in panels(DASH[key]) if p["title"] == title and p["type"] != "row"]
    return p


def _exprs(p: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in p.get("targets") or []]


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_exactly_the_listed_panels(key: str) -> None:
    got = [(p["type"], p["title"]) for p in panels(DASH[key]) if p["type"] != "row"]
    assert got == EXPECTED[key]


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_grid_has_no_overlap_and_fits_24_columns(key: str) -> None:
    taken: dict[tuple[int, int], str] = {}
    for p in panels(DASH[key]):
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{p['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = p["title"]


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_every_panel_explains_itself_and_graphs_have_units(key: str) -> None:
    for p in panels(DASH[key]):
        if p["type"] == "row":
            continue
        assert p.get("description"), p["title"]
        if p["type"] == "timeseries":
            defaults = p["fieldConfig"]["defaults"]
            assert defaults.get("unit"), p["title"]
            # A threshold set on a graph is drawn, or it is there for nothing.
            if len((defaults.get("thresholds") or {}).get("steps") or []) > 1:
                style = defaults["custom"].get("thresholdsStyle", {}).get("mode", "off")
                assert style != "off", p["title"]


def test_fleet_runner_table_columns() -> None:
    p = _panel("fleet", "Runners")
    # Target A brings one row per runner labelled with its state; its value is dropped.
    assert p["targets"][0]["expr"] == q.current_state(DEFAULT)
    organize = next(t for t in p["transformations"] if t["id"] == "organize")["options"]
    assert organize["excludeByName"] == {"Time": True, "Value #A": True}
    assert list(organize["renameByName"].values()) == [
        "stream connected",
        "last heartbeat ok",
        "since heartbeat success",
        "stream age",
        "reconnects 1h",
    ]
    assert all(t["instant"] and t["format"] == "table" for t in p["targets"])
    overrides = {o["matcher"]["options"]: o["properties"] for o in p["fieldConfig"]["overrides"]}
    age = {prop["id"]: prop["value"] for prop in overrides["since heartbeat success"]}
    assert age["unit"] == "s"
    red = [s["value"] for s in age["thresholds"]["steps"] if s["color"] == "red"]
    assert red == [DEFAULT.thresholds.heartbeat_stale_seconds]


def test_fleet_lying_runners_panel_is_the_critical_alert_condition() -> None:
    p = _panel("fleet", "Stream connected while heartbeats fail")
    assert _exprs(p) == [REC["connected_while_failing"]]
    [rule] = [r for r in recording_rules(DEFAULT) if r["record"] == REC["connected_while_failing"]]
    [crit] = [
        a for a in alerts(DEFAULT) if a.name == "PullWakeStreamConnectedWhileHeartbeatsFailing"
    ]
    assert rule["expr"] == crit.expr
    assert p["options"].get("noValue") or p["fieldConfig"]["defaults"].get("noValue")


def test_fleet_rates_and_quantiles() -> None:
    legends = {
        "Reconnect rate by reason": "{{" + q.REASON + "}}",
        "Heartbeat failure rate by error type": "{{" + q.ERROR_TYPE + "}}",
    }
    for title, legend in legends.items():
        [t] = _panel("fleet", title)["targets"]
        assert t["legendFormat"] == legend, title
    for title, key in (("Wake latency p50 / p99", "wake_latency_quantile"),):
        assert _exprs(_panel("fleet", title)) == [REC[key]]
        quantiles = [
            r["labels"]["quantile"] for r in recording_rules(DEFAULT) if r["record"] == REC[key]
        ]
        assert quantiles == ["0.5", "0.99"]


def test_runner_panels_put_the_seed_signals_side_by_side() -> None:
    m = f'{q.RUNNER}="$runner_id"'
    side = _exprs(_panel("runner", "Stream age vs seconds since heartbeat success"))
    assert side == [
        q.per_runner(DEFAULT, c.STREAM_AGE, m),
        q.seconds_since_heartbeat_success(DEFAULT, m),
    ]
    idle = _exprs(_panel("runner", "Idle vs idle timeout"))
    assert idle == [
        q.per_runner(DEFAULT, c.STREAM_IDLE, m),
        q.per_runner(DEFAULT, c.STREAM_IDLE_TIMEOUT, m),
    ]
    for p in panels(DASH["runner"]):
        for t in p.get("targets") or []:
            text = t.get("expr") or t.get("query") or ""
            assert "$runner_id" in text, p["title"]


def test_runner_state_timeline_is_one_coloured_row() -> None:
    p = _panel("runner", "State")
    assert _exprs(p) == [q.state_code(DEFAULT, f'{q.RUNNER}="$runner_id"')]
    [mapping] = p["fieldConfig"]["defaults"]["mappings"]
    texts = {int(k): v["text"] for k, v in mapping["options"].items()}
    assert texts == {code: state for state, code in q.STATE_CODES.items()}
    assert sorted(texts) == list(range(1, len(RunnerState) + 1))


def test_runner_sessions_link_to_traces() -> None:
    # Exemplars only where the runner records in a span's context (histograms);
    # the wakes counter is observable and carries none.
    with_exemplars = {title for title, t in prom_targets(DASH["runner"]) if t.get("exemplar")}
    assert with_exemplars == {
        "Wake latency p50 / p99 (exemplars -> traces)",
        "HTTP request duration p50 / p99 (OTLP)",
    }
    sessions = _panel("runner", "Recent sessions (traces)")
    assert sessions["datasource"] == {"type": "tempo", "uid": "${traces_datasource}"}
    [t] = sessions["targets"]
    assert t["queryType"] == "traceql"
    # Session (and failed connect) spans only, not every heartbeat and wake of the runner.
    assert t["query"] == (
        '{ .runner.id = "$runner_id" && '
        '(name = "pullwake.stream.session" || name = "pullwake.stream.connect") }'
    )


@pytest.mark.parametrize(
    "key,title",
    [
        ("fleet", "Stream connected while heartbeats fail"),
        ("server", "Runners the server sees no stream for"),
        ("fleet", "Runners losing claims"),
    ],
)
def test_runner_lists_show_only_linked_runner_ids(key: str, title: str) -> None:
    p = _panel(key, title)
    [organize] = p["transformations"]
    assert organize["options"]["excludeByName"] == {"Time": True, "Value": True}
    [link] = [o for o in p["fieldConfig"]["overrides"] if o["matcher"]["options"] == q.RUNNER]
    [value] = link["properties"][0]["value"]
    assert value["url"].startswith(f"/d/{DEFAULT.dashboard_uids.runner}?var-{q.RUNNER}=")
    assert p["fieldConfig"]["defaults"]["noValue"].startswith("none")


def test_slo_panels_read_the_slo_recording_rules() -> None:
    """SLI, budget and burn rates come from the rules the burn-rate alerts read."""
    s = DEFAULT.slo
    assert _exprs(_panel("fleet", "Stream availability SLI")) == [
        f"1 - {slo.record_name('fleet', b.long)}" for b in s.burn_windows[:2]
    ]
    burn = _panel("fleet", "Error budget burn rate")
    assert _exprs(burn) == [slo.burn_rate(DEFAULT, "fleet", b.long) for b in s.burn_windows]
    assert [t["legendFormat"] for t in burn["targets"]] == [b.long for b in s.burn_windows]
    steps = burn["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [st["value"] for st in steps[1:]] == sorted({b.factor for b in s.burn_windows})
    [budget] = _exprs(_panel("fleet", "Error budget remaining (SLO period)"))
    assert budget == slo.budget_remaining(DEFAULT)
    assert f"[{s.period}]" in budget and slo.record_name("fleet", s.windows[0]) in budget
    availability = _panel("fleet", "Stream availability (SLO period)")
    assert availability["fieldConfig"]["defaults"]["unit"] == "percentunit"
    green = availability["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]
    assert green == {"color": "green", "value": s.objective}
    burning = _panel("fleet", "Runners burning their error budget fast")
    [expr] = _exprs(burning)
    assert slo.record_name("runner", s.burn_windows[0].long) in expr and expr.endswith("> 1)")


def test_wake_and_claim_panels() -> None:
    """Wakes by final outcome; claim answers as HTTP statuses (OTLP); the fleet list is
    the lost-claims alert's condition."""
    runner = f'{q.RUNNER}="${q.RUNNER}"'
    p = _panel("runner", "Wakes by outcome")
    assert _exprs(p) == [q.rate_by(DEFAULT, c.WAKES, "$__rate_interval", (q.OUTCOME,), runner)]
    assert p["fieldConfig"]["defaults"]["unit"] == "ops"
    [requests] = _exprs(_panel("runner", "HTTP requests by status (OTLP)"))
    assert c.HTTP_CLIENT_DURATION.prom_name in requests and "histogram_count" in requests
    [fenced] = [a for a in alerts(DEFAULT) if a.name == "PullWakeCompletionsFenced"]
    assert _exprs(_panel("fleet", "Runners losing claims")) == [fenced.expr]
    assert f'{c.WAKES.prom_name}{{outcome="fenced"}}' in fenced.expr
