"""The generator: committed files current, dashboards round-trip, names from the catalog."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from pullwake.core import catalog
from pullwake.dashboards import recording, rules, slo
from pullwake.dashboards.alertmanager import alertmanager_config
from pullwake.dashboards.build import generate, stale
from pullwake.dashboards.config import (
    DEFAULT,
    Config,
    ForDurations,
    Thresholds,
    format_duration,
    parse_duration,
)
from tests.dashboards.dashjson import load, panels, prom_targets
from tests.support.repo import DEPLOY, ROOT


def test_committed_files_are_current() -> None:
    assert stale(DEPLOY, generate(DEFAULT)) == []


def test_check_names_each_stale_file(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pullwake", "dashboards", "build", "--out", str(tmp_path)]
    assert subprocess.run(cmd, capture_output=True, check=False).returncode == 0
    (tmp_path / "alertmanager/alertmanager.yml").write_text("# edited by hand\n")
    (tmp_path / "prometheus/rules/pullwake-alerts.yml").unlink()
    res = subprocess.run([*cmd, "--check"], capture_output=True, text=True, check=False)
    assert res.returncode == 1
    assert f"stale: {tmp_path}/alertmanager/alertmanager.yml\n" in res.stderr
    assert f"missing: {tmp_path}/prometheus/rules/pullwake-alerts.yml\n" in res.stderr
    assert f"run `pullwake dashboards build --out {tmp_path}`" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert subprocess.run(cmd, capture_output=True, check=False).returncode == 0
    res = subprocess.run([*cmd, "--check"], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    # A dashboard left over from an earlier uid would stay provisioned: named too.
    (tmp_path / "grafana/dashboards/old-uid.json").write_text("{}")
    res = subprocess.run([*cmd, "--check"], capture_output=True, text=True, check=False)
    assert res.returncode == 1 and "grafana/dashboards/old-uid.json" in res.stderr


def test_default_out_is_deploy_under_the_current_directory(tmp_path: Path) -> None:
    """Never next to the package (an installed one would write into site-packages)."""
    cmd = [sys.executable, "-m", "pullwake", "dashboards", "build"]
    res = subprocess.run([*cmd, "--check"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 1 and "missing: deploy/alertmanager/alertmanager.yml" in res.stderr
    assert subprocess.run(cmd, capture_output=True, cwd=tmp_path).returncode == 0
    assert stale(tmp_path / "deploy", generate(DEFAULT)) == []
    res = subprocess.run([*cmd, "--check"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr


def test_a_directory_where_a_file_belongs_is_named_not_a_traceback(tmp_path: Path) -> None:
    blocked = tmp_path / "alertmanager/alertmanager.yml"
    blocked.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pullwake", "dashboards", "build", "--out", str(tmp_path)]
    res = subprocess.run([*cmd, "--check"], capture_output=True, text=True, check=False)
    assert res.returncode == 1 and f"stale: {blocked}\n" in res.stderr
    assert "Traceback" not in res.stderr
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 2
    assert res.stderr == f"pullwake: error: cannot write {blocked}: Is a directory\n"


def test_out_that_is_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    res = subprocess.run(
        [sys.executable, "-m", "pullwake", "dashboards", "build", "--out", str(f)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "not a directory" in res.stderr


@pytest.mark.parametrize("text,seconds", [("15s", 15), ("1m30s", 90), ("2h", 7200), ("500ms", 0.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert format_duration(seconds) == text


def test_config_fails_loudly() -> None:
    with pytest.raises(ValueError, match=r"for_\.heartbeats_failing"):
        Config(for_=ForDurations(heartbeats_failing="1 minute"))
    with pytest.raises(ValueError, match="alertmanager_webhook_url"):
        Config(alertmanager_webhook_url="alert-sink:9095")
    with pytest.raises(ValueError, match=r"thresholds\.heartbeat_failures must be positive"):
        Config(thresholds=Thresholds(heartbeat_failures=0))


def test_scaled_config_shrinks_every_wait() -> None:
    fast = DEFAULT.scaled(0.1)
    assert fast.for_.runner_not_streaming == "12s"
    assert fast.for_.stream_connected_while_heartbeats_failing == "6s"
    assert fast.alertmanager.group_wait == "1s"
    assert fast.rule_evaluation_interval == "1s"
    assert fast.thresholds == DEFAULT.thresholds


def test_dashboards_round_trip_through_sdk_models() -> None:
    register_default_plugins()
    for key, data in load(DEPLOY, DEFAULT).items():
        model = Dashboard.from_json(data)
        again = json.loads(json.dumps(model, cls=JSONEncoder))
        assert again == data, key
        assert model.uid == getattr(DEFAULT.dashboard_uids, key)


def datasource_variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`${name}` -> the dashboard's datasource variable of that name."""
    variables = dashboard.get("templating", {}).get("list", [])
    return {"${" + v["name"] + "}": v for v in variables if v["type"] == "datasource"}


def test_panels_have_unique_ids_and_use_the_datasource_variables() -> None:
    """Every panel, target and query variable names its datasource through a dashboard
    variable of the right type whose default is the provisioned uid, so the dashboards
    work in a Grafana whose datasources have other uids (pick them at the top)."""
    defaults = {"prometheus": DEFAULT.datasources.prometheus, "tempo": DEFAULT.datasources.tempo}
    for key, data in load(DEPLOY, DEFAULT).items():
        ids = [p["id"] for p in panels(data)]
        assert len(ids) == len(set(ids)), key
        variables = datasource_variables(data)
        assert "${datasource}" in variables, f"{key}: no datasource variable"
        for ref, v in variables.items():
            assert v["current"]["value"] == defaults[v["query"]], (key, ref)
        refs = [(p["title"], p.get("datasource")) for p in panels(data)]
        refs += [
            (p["title"], t["datasource"]) for p in panels(data) for t in p.get("targets") or []
        ]
        refs += [
            (v["name"], v["datasource"]) for v in data["templating"]["list"] if "datasource" in v
        ]
        for p in panels(data):
            for t in p.get("targets") or []:
                assert t["refId"], (key, p["title"])
        for where, ref in refs:
            if ref is None or ref.get("type") == "alertmanager":
                continue  # rows; the alert-groups panel names its Alertmanager itself
            assert ref["uid"] in variables, (key, where, ref)
            assert variables[ref["uid"]]["query"] == ref["type"], (key, where, ref)


def test_alert_groups_panel_names_the_provisioned_alertmanager() -> None:
    """Grafana's alertGroups panel looks its Alertmanager up by datasource name, not uid."""
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/datasources.yml").read_text())
    [am] = [d for d in ds["datasources"] if d["type"] == "alertmanager"]
    assert am["uid"] == DEFAULT.datasources.alertmanager
    fleet = load(DEPLOY, DEFAULT)["fleet"]
    [panel] = [p for p in panels(fleet) if p["type"] == "alertGroups"]
    assert panel["options"]["alertmanager"] == am["name"]


def test_dashboards_have_the_issue_panels() -> None:
    titles = {k: [p["title"] for p in panels(d)] for k, d in load(DEPLOY, DEFAULT).items()}
    assert "Stream connected while heartbeats fail" in titles["fleet"]
    assert "Stream age vs seconds since heartbeat success" in titles["runner"]
    assert "Client says connected, server sees no stream" in titles["server"]
    runner = load(DEPLOY, DEFAULT)["runner"]
    names = [v["name"] for v in runner["templating"]["list"]]
    assert names == ["datasource", "traces_datasource", "runner_id"]
    assert any(t.get("exemplar") for _, t in prom_targets(runner))


_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _all_rules(config: Config) -> list[dict[str, Any]]:
    """Every rule of every generated rule file, alerts and recordings."""
    return [r for f in rules.rule_files(config).values() for g in f["groups"] for r in g["rules"]]


def _all_alerts(config: Config) -> list[dict[str, Any]]:
    return [r for r in _all_rules(config) if "alert" in r]


def test_every_metric_name_comes_from_the_catalog() -> None:
    known = {s for m in catalog.CATALOG for s in m.prom_series}
    known |= set(rules.recording_names(DEFAULT).values())
    known |= set(slo.recording_names(DEFAULT).values())
    known |= set(recording.recording_names(DEFAULT).values())
    exprs = [r["expr"] for r in _all_rules(DEFAULT)]
    for data in load(DEPLOY, DEFAULT).values():
        exprs += [t["expr"] for _, t in prom_targets(data)]
    seen = set()
    for expr in exprs:
        for name in _NAME.findall(expr):
            if "pullwake_" in name:
                assert name in known, (name, expr)
                seen.add(name)
    assert len(seen) > 15
    # ...and no module of the generator spells one.
    for src in (ROOT / "dashboards").glob("*.py"):
        assert "pullwake_" not in src.read_text(), src
    # Nor do this area's tests, the alert sink or the runbooks (OTel or Prometheus name).
    sources = [*(ROOT / "tests/dashboards").glob("*.py"), ROOT / "pullwake/tools/alertsink.py"]
    sources.append(ROOT / "docs/runbooks.md")
    for src in sources:
        text = src.read_text()
        for m in catalog.CATALOG:
            for name in (m.name, *m.prom_series):
                assert not re.search(rf"\b{re.escape(name)}\b", text), (src, name)


def test_alert_conventions() -> None:
    fleet_wide = {slo.ALERT_NAMES["fleet"]}
    for r in _all_alerts(DEFAULT):
        assert re.fullmatch(r"PullWake[A-Z][A-Za-z]+", r["alert"])
        assert parse_duration(r["for"]) > 0
        assert r["labels"]["severity"] in ("critical", "warning")
        assert set(r["annotations"]) == {"summary", "description", "runbook_url"}
        assert "{{" not in r["annotations"]["summary"]
        per_runner = "{{ $labels.runner_id }}" in r["annotations"]["description"]
        assert per_runner is (r["alert"] not in fleet_wide), r["alert"]
    for r in _all_rules(DEFAULT):
        if "record" in r:
            assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", r["record"]), r["record"]


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_its_runbook_section() -> None:
    text = (ROOT / "docs/runbooks.md").read_text()
    pattern = re.compile(r"^## (\S+)\n(.*?)(?=^## |\Z)", re.M | re.S)
    sections = {m.group(1): m.group(2) for m in pattern.finditer(text)}
    names = {r["alert"] for r in _all_alerts(DEFAULT)}
    assert sorted(sections) == sorted(names)
    for r in _all_alerts(DEFAULT):
        anchor = r["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor == _slug(r["alert"])
        body = sections[r["alert"]]
        assert "Check:" in body and "Do:" in body, r["alert"]
        assert r["labels"]["severity"] in body.lower()


def test_alertmanager_routes_by_severity_to_the_webhook() -> None:
    cfg = Config(alertmanager_webhook_url="http://127.0.0.1:1/hook")
    am = alertmanager_config(cfg)
    assert am["route"]["group_by"] == ["alertname", "runner_id"]
    receivers = {r["name"]: r for r in am["receivers"]}
    for route in am["route"]["routes"]:
        hook = receivers[route["receiver"]]["webhook_configs"][0]
        assert hook == {"url": "http://127.0.0.1:1/hook", "send_resolved": True}
    severities = [m for r in am["route"]["routes"] for m in r["matchers"]]
    assert severities == ['severity="critical"', 'severity="warning"']


def test_provisioning_paths_and_uids() -> None:
    out = DEPLOY / "grafana/provisioning"
    ds = yaml.safe_load((out / "datasources/datasources.yml").read_text())
    assert {d["uid"] for d in ds["datasources"]} == {"prometheus", "tempo", "alertmanager", "loki"}
    prov = yaml.safe_load((out / "dashboards/dashboards.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == DEFAULT.grafana_dashboards_path


def test_selectors_reach_every_series() -> None:
    cfg = Config(runner_selector='job="pullwake-runner"', server_selector='job="pullwake-server"')
    exprs = [r["expr"] for r in _all_rules(cfg)]
    for expr in exprs:
        for name in _NAME.findall(expr):
            if ":" in name:  # a recorded series: its own rule carries the selector
                continue
            if name.startswith("pullwake_server"):
                assert f'{name}{{job="pullwake-server"' in expr, expr
            elif name.startswith("pullwake_"):
                assert f'{name}{{job="pullwake-runner"' in expr, expr


def test_runbooks_name_real_panels() -> None:
    """Every "quoted" panel a runbook tells the reader to look at exists on a dashboard."""
    text = (ROOT / "docs/runbooks.md").read_text()
    quoted = {" ".join(m.split()) for m in re.findall(r'"([^"`]+)"', text)}
    titles = {p["title"] for d in load(DEPLOY, DEFAULT).values() for p in panels(d)}
    assert len(quoted) >= 8
    assert quoted - titles == set()
