"""Prometheus, Alertmanager and Grafana configs of both stacks, checked by their own tools.

`promtool check config` / `amtool check-config` come from the Debian packages
(.ci/run installs them).  The compose configs are checked as committed; the
native ones as `pullwake stack up` generates them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pullwake.tools import stackoptional as opt
from pullwake.tools import stackplan as sp
from tests.tools.repo import DEPLOY, ROOT, argv_of, bind_mounts, load, services

PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian package prometheus; .ci/run installs it)",
)
needs_amtool = pytest.mark.skipif(
    AMTOOL is None,
    reason="amtool not installed (Debian package prometheus-alertmanager; .ci/run installs it)",
)


def check(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def native_plan(tmp: Path) -> tuple[sp.Ports, list[sp.RunnerPlan], dict[str, Any]]:
    ports = sp.ports_from_base(21000, 3)
    runners = sp.runner_plans(ports, 1)
    cfg = sp.prometheus_config(ports, runners, DEPLOY / "prometheus" / "rules")
    return ports, runners, cfg


# --- Prometheus ----------------------------------------------------------------------
@pytest.mark.prometheus
@needs_promtool
def test_promtool_accepts_the_compose_prometheus_config_and_its_rules() -> None:
    out = check([str(PROMTOOL), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")])
    assert "SUCCESS" in out and "rules found" in out


@pytest.mark.prometheus
@needs_promtool
def test_promtool_accepts_the_generated_native_config(tmp_path: Path) -> None:
    _, _, cfg = native_plan(tmp_path)
    path = tmp_path / "prometheus.yml"
    path.write_text(sp.dump_yaml(cfg))
    out = check([str(PROMTOOL), "check", "config", str(path)])
    assert "rules found" in out


def test_compose_prometheus_points_at_compose_services() -> None:
    cfg = load(DEPLOY / "prometheus" / "prometheus.yml")
    svcs = services()
    am = cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am == ["alertmanager:9093"]
    for target in sp.scrape_targets(cfg):
        host = target.split(":")[0]
        assert host == "localhost" or host in svcs, target
    assert cfg["rule_files"] == ["rules/*.yml"]
    assert ("./deploy/prometheus", "/etc/prometheus") in bind_mounts(svcs["prometheus"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in argv_of(svcs["prometheus"]["command"])


def test_native_prometheus_scrapes_every_pullwake_process(tmp_path: Path) -> None:
    ports, runners, cfg = native_plan(tmp_path)
    targets = sp.scrape_targets(cfg)
    want = {f"127.0.0.1:{p}" for p in (ports.server, ports.prometheus, ports.alertmanager)}
    want |= {f"127.0.0.1:{r.port}" for r in runners}
    assert targets == want
    assert cfg["rule_files"] == [str(DEPLOY / "prometheus" / "rules" / "*.yml")]


# --- Alertmanager ----------------------------------------------------------------------
@pytest.mark.prometheus
@needs_amtool
def test_amtool_accepts_the_compose_alertmanager_config() -> None:
    check([str(AMTOOL), "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")])


@pytest.mark.prometheus
@needs_amtool
def test_amtool_accepts_the_native_config_pointed_at_the_local_sink(tmp_path: Path) -> None:
    source = load(DEPLOY / "alertmanager" / "alertmanager.yml")
    cfg = sp.alertmanager_config(source, "http://127.0.0.1:21003/")
    urls = [h["url"] for r in cfg["receivers"] for h in r.get("webhook_configs", [])]
    assert urls and all(u.startswith("http://127.0.0.1:21003/") for u in urls)
    assert cfg["route"] == source["route"]  # only the webhook targets move
    path = tmp_path / "alertmanager.yml"
    path.write_text(sp.dump_yaml(cfg))
    check([str(AMTOOL), "check-config", str(path)])


def test_compose_webhooks_reach_the_compose_sink() -> None:
    cfg = load(DEPLOY / "alertmanager" / "alertmanager.yml")
    sink = services()["alert-sink"]
    listen = argv_of(sink["command"])[-1]
    port = listen.rpartition(":")[2]
    for r in cfg["receivers"]:
        for hook in r.get("webhook_configs", []):
            assert hook["url"].startswith(f"http://alert-sink:{port}/"), hook


# --- Grafana -----------------------------------------------------------------------------
def grafana_mounts() -> dict[str, Path]:
    """container path -> repo path of Grafana's bind mounts."""
    return {c: ROOT / h for h, c in bind_mounts(services()["grafana"])}


def in_container(path: str) -> Path:
    """Map a path inside the Grafana container back to the repo through the mounts."""
    for container, host in sorted(grafana_mounts().items(), key=lambda kv: -len(kv[0])):
        if path == container or path.startswith(container.rstrip("/") + "/"):
            return host / Path(path).relative_to(container)
    raise AssertionError(f"{path} is not mounted into the grafana container")


def test_grafana_provisioning_parses_and_every_dashboard_path_exists() -> None:
    prov = DEPLOY / "grafana" / "provisioning"
    files = sorted(prov.glob("*/*.yml")) + sorted(prov.glob("*/*.yaml"))
    assert {f.parent.name for f in files} >= {"datasources", "dashboards"}
    for f in files:
        data = yaml.safe_load(f.read_text())
        assert isinstance(data, dict) and data.get("apiVersion") == 1, f
        # the file is mounted where Grafana reads provisioning
        assert in_container(f"/etc/grafana/provisioning/{f.parent.name}/{f.name}") == f
    providers = load(prov / "dashboards" / "dashboards.yml")["providers"]
    for p in providers:
        assert p.get("folder"), f"provider {p['name']}: put the dashboards in a folder"
        folder = in_container(p["options"]["path"])
        assert folder.is_dir(), p
        dashboards = sorted(folder.glob("*.json"))
        assert dashboards, f"no dashboards in {folder}"
    home = services()["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert in_container(home).is_file()


def test_grafana_datasources_have_fixed_uids_and_exemplar_links_to_tempo() -> None:
    ds = load(DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yml")
    by_uid = {d["uid"]: d for d in ds["datasources"]}
    assert set(by_uid) >= {"prometheus", "tempo", "alertmanager"}
    links = by_uid["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert {"name": "trace_id", "datasourceUid": "tempo"} in links
    svcs = services()
    for uid in ("prometheus", "tempo", "alertmanager"):
        host_port = by_uid[uid]["url"].split("//", 1)[1]
        host, port = host_port.split(":")
        assert host in svcs, f"datasource {uid} -> {host} is no compose service"
        published = {p.split(":")[1] for p in svcs[host].get("ports", [])}
        assert port in published, f"datasource {uid} -> {host}:{port}"


def test_native_grafana_provisioning_points_at_loopback() -> None:
    ports = sp.ports_from_base(22000, 1)
    src = DEPLOY / "grafana" / "provisioning"
    ds = opt.grafana_datasources(load(src / "datasources" / "datasources.yml"), ports)
    assert {d["uid"]: d["url"] for d in ds["datasources"]} == {
        "prometheus": "http://127.0.0.1:22001",
        "alertmanager": "http://127.0.0.1:22002",
    }
    db = opt.grafana_dashboards(
        load(src / "dashboards" / "dashboards.yml"), DEPLOY / "grafana" / "dashboards"
    )
    for p in db["providers"]:
        assert Path(p["options"]["path"]).is_dir()


def test_native_grafana_is_set_up_like_the_compose_one(tmp_path: Path) -> None:
    """Same anonymous viewer role, sign-up and home dashboard natively as in compose."""
    ports = sp.ports_from_base(22000, 1)
    dashboards = DEPLOY / "grafana" / "dashboards"
    step = opt.grafana_step(
        "/usr/sbin/grafana", Path("/usr/share/grafana"), tmp_path, ports, dashboards
    )
    for key, value in services()["grafana"]["environment"].items():
        if key.startswith("GF_SECURITY_ADMIN_"):
            continue  # natively Grafana's own admin login, or the caller's GF_SECURITY_ADMIN_*
        assert key in step.env, key
        if key == "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH":
            home = Path(step.env[key])
            assert home.is_file() and home.name == Path(value).name
        else:
            assert step.env[key] == str(value), key
