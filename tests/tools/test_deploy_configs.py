"""Prometheus, Alertmanager and Grafana configs of both stacks, checked by their own tools.

`promtool check config` / `amtool check-config` come from the Debian packages
(.ci/run installs them).  The compose configs are checked as committed; the
native ones as `pullwake stack up` generates them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pullwake.tools import stackoptional as opt
from pullwake.tools import stackplan as sp
from tests.tools.repo import DEPLOY, ROOT, argv_of, bind_mounts, load, published, services

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
# Top-level blocks of the compose prometheus.yml that only Prometheus 3 knows (Debian's
# promtool is 2.42), with the keys each may hold: config/config.go at tag v3.14.0
# (OTLPConfig's yaml tags).  The rest of the file is checked by promtool itself.
PROMETHEUS_3_ONLY: dict[str, set[str]] = {
    "otlp": {
        "promote_all_resource_attributes", "promote_resource_attributes",
        "ignore_resource_attributes", "translation_strategy",
        "keep_identifying_resource_attributes", "convert_histograms_to_nhcb",
        "promote_scope_metadata", "label_name_underscore_sanitization",
        "label_name_preserve_multiple_underscores",
    },
}  # fmt: skip


def compose_prometheus() -> dict[str, Any]:
    data = load(DEPLOY / "prometheus" / "prometheus.yml")
    assert isinstance(data, dict)
    return data


@pytest.mark.prometheus
@needs_promtool
def test_promtool_accepts_the_compose_prometheus_config_and_its_rules(tmp_path: Path) -> None:
    """promtool 2.42 on the file less its Prometheus-3-only blocks (checked below), from
    a copy next to the real rules (rule_files is relative to the config's directory)."""
    cfg = {k: v for k, v in compose_prometheus().items() if k not in PROMETHEUS_3_ONLY}
    (tmp_path / "rules").symlink_to(DEPLOY / "prometheus" / "rules")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    out = check([str(PROMTOOL), "check", "config", str(path)])
    assert "SUCCESS" in out and "rules found" in out


def test_prometheus_3_only_blocks_use_known_keys() -> None:
    cfg = compose_prometheus()
    for block, keys in PROMETHEUS_3_ONLY.items():
        assert set(cfg.get(block) or {}) <= keys, (block, set(cfg[block]) - keys)


def test_otlp_promotes_who_sent_each_series() -> None:
    """Resource attributes on every OTLP series as labels (not only on target_info), named
    like Loki's index labels; runner_id needs none (a data-point attribute already)."""
    promoted = compose_prometheus()["otlp"]["promote_resource_attributes"]
    assert {"service.name", "service.instance.id", "deployment.environment.name"} <= set(promoted)
    assert "deployment.environment" not in promoted  # the deprecated name
    # Prometheus 3.14 refuses (config/config.go, OTLPConfig.UnmarshalYAML): empty or
    # duplicated names, and a list next to promote_all_resource_attributes.
    assert all(a.strip() for a in promoted) and len(promoted) == len(set(promoted))
    assert not compose_prometheus()["otlp"].get("promote_all_resource_attributes")


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
    for uid in ("prometheus", "tempo", "alertmanager", "loki"):
        host_port = by_uid[uid]["url"].split("//", 1)[1]
        host, port = host_port.split(":")
        assert host in svcs, f"datasource {uid} -> {host} is no compose service"
        inside = {str(p) for _, _, p in published(svcs[host])}
        assert port in inside, f"datasource {uid} -> {host}:{port}"


def grafana_expand(value: str) -> str:
    """Grafana's expansion of environment variables in provisioning files, with no such
    variable set: `$$` is a literal `$`, any other `$NAME` / `${NAME}` becomes ""."""
    out = re.sub(r"\$(\$|\{[^}]*\}|\w+)", lambda m: "$" if m.group(1) == "$" else "", value)
    return out


def test_grafana_links_traces_and_logs_both_ways() -> None:
    """Logs -> trace: the Loki datasource's derived field takes the `trace_id` structured
    metadata Loki's OTLP ingest keeps and opens it in Tempo.  Trace -> logs: Tempo's
    tracesToLogsV2 queries Loki for the span's service, filtered by its trace id.  Service
    map: Tempo -> Prometheus (what Tempo's metrics generator remote-writes)."""
    ds = load(DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yml")
    by_uid = {d["uid"]: d for d in ds["datasources"]}
    loki, tempo = by_uid["loki"], by_uid["tempo"]
    assert loki["type"] == "loki" and loki["url"] == "http://loki:3100"
    [field] = loki["jsonData"]["derivedFields"]
    assert field["datasourceUid"] == "tempo"
    assert (field["matcherType"], field["matcherRegex"]) == ("label", "trace_id")
    assert grafana_expand(field["url"]) == "${__value.raw}"
    t2l = tempo["jsonData"]["tracesToLogsV2"]
    assert t2l["datasourceUid"] == "loki"
    assert {"key": "service.name", "value": "service_name"} in t2l["tags"]
    assert t2l["customQuery"] is True
    assert grafana_expand(t2l["query"]) == '{${__tags}} | trace_id = "${__trace.traceId}"'
    assert tempo["jsonData"]["serviceMap"] == {"datasourceUid": "prometheus"}
    # Trace -> metrics: the span's service in Tempo's span metrics (label `service`).
    t2m = tempo["jsonData"]["tracesToMetrics"]
    assert t2m["datasourceUid"] == "prometheus"
    assert t2m["tags"] == [{"key": "service.name", "value": "service"}]
    for q in t2m["queries"]:
        expr = grafana_expand(q["query"])
        assert "traces_spanmetrics_" in expr and "{$__tags" in expr, q
    assert tempo["jsonData"]["lokiSearch"] == {"datasourceUid": "loki"}
    # Nothing else in the file is lost to Grafana's expansion.
    text = (DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yml").read_text()
    assert re.findall(r"(?<!\$)\$(?!\$)", text.replace("$$", "")) == []


def test_the_expansion_model_is_live() -> None:
    assert grafana_expand("$${__value.raw} ${HOME} $HOME $$HOME") == "${__value.raw}   $HOME"


def test_native_grafana_provisioning_points_at_loopback() -> None:
    ports = sp.ports_from_base(22000, 1)
    src = DEPLOY / "grafana" / "provisioning"
    ds = opt.grafana_datasources(load(src / "datasources" / "datasources.yml"), ports)
    # Natively there is no Tempo or Loki: their datasources are left out.
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
        if key.startswith("GF_SECURITY_") or "${" in str(value):
            continue  # natively Grafana's own admin login, or the caller's GF_SECURITY_ADMIN_*
        assert key in step.env, key
        if key == "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH":
            home = Path(step.env[key])
            assert home.is_file() and home.name == Path(value).name
        else:
            assert step.env[key] == str(value), key
