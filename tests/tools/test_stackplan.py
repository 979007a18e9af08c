"""The native stack's plan, without starting anything: ports, argv, generated configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pullwake.cli import build_parser
from pullwake.tools import stackoptional as opt
from pullwake.tools import stackplan as sp


def test_ports_from_base_are_distinct_and_laid_out_as_documented() -> None:
    ports = sp.ports_from_base(30000, 3)
    assert (ports.server, ports.prometheus, ports.alertmanager, ports.sink) == (
        30000,
        30001,
        30002,
        30003,
    )
    assert ports.runners == (30010, 30011, 30012)
    assert len(set(ports.all())) == len(ports.all()) == sp.ports_needed(3)


@pytest.mark.parametrize("base", [80, 65530])
def test_ports_from_base_out_of_range(base: int) -> None:
    with pytest.raises(ValueError, match="--base-port"):
        sp.ports_from_base(base, 2)


def test_ports_from_list_needs_exactly_enough() -> None:
    ports = sp.ports_from_list(list(range(40000, 40000 + sp.ports_needed(2))), 2)
    assert ports.runners == (40008, 40009)
    with pytest.raises(ValueError):
        sp.ports_from_list([1, 2, 3], 2)


def test_runner_plans_put_legacy_last() -> None:
    ports = sp.ports_from_base(30000, 3)
    plans = sp.runner_plans(ports, 1)
    assert [(p.runner_id, p.profile) for p in plans] == [
        ("runner-1", "default"),
        ("runner-2", "default"),
        ("runner-3", "legacy"),
    ]
    assert [p.profile for p in sp.runner_plans(ports, 0)] == ["default"] * 3
    with pytest.raises(ValueError):
        sp.runner_plans(ports, 4)


def test_alertmanager_rewrite_keeps_paths_and_routes() -> None:
    src = {
        "route": {"receiver": "a"},
        "receivers": [
            {"name": "a", "webhook_configs": [{"url": "http://alert-sink:9095/crit?x=1"}]},
            {"name": "b", "webhook_configs": [{"url": "http://alert-sink:9095"}]},
            {"name": "c"},
        ],
    }
    out = sp.alertmanager_config(src, "http://127.0.0.1:5555/")
    urls = [h["url"] for r in out["receivers"] for h in r.get("webhook_configs", [])]
    assert urls == ["http://127.0.0.1:5555/crit?x=1", "http://127.0.0.1:5555/"]
    assert src["receivers"][0]["webhook_configs"][0]["url"].startswith("http://alert-sink")
    with pytest.raises(ValueError, match="webhook"):
        sp.alertmanager_config({"receivers": [{"name": "x"}]}, "http://127.0.0.1:1/")


def test_every_pullwake_step_parses_with_the_real_cli(tmp_path: Path) -> None:
    ports = sp.ports_from_base(30000, 2)
    steps = sp.plan_steps(ports, sp.runner_plans(ports, 1), tmp_path, otlp_endpoint=None)
    names = [s.name for s in steps]
    assert names == [
        "alert-sink",
        "alertmanager",
        "prometheus",
        "server",
        "runner-1",
        "runner-2",
        "publisher",
    ]
    parser = build_parser()
    for step in steps:
        if step.argv[1:3] == ("-m", "pullwake"):
            parser.parse_args(list(step.argv[3:]))  # SystemExit fails the test
    by_name = {s.name: s for s in steps}
    assert "--cluster.listen-address=" in by_name["alertmanager"].argv
    assert by_name["runner-2"].argv[-2:] == ("--profile", "legacy")
    assert "--profile" not in by_name["runner-1"].argv
    assert by_name["server"].env["OTEL_SDK_DISABLED"] == "false"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in by_name["server"].env
    # every long-running child has a readiness check and loopback ports only
    for step in steps[:-1]:
        assert step.ready_url or step.ready_port, step.name
        assert "0.0.0.0" not in " ".join(step.argv)


def test_with_a_collector_the_apps_get_the_otlp_endpoint(tmp_path: Path) -> None:
    ports = sp.ports_from_base(30000, 1)
    steps = sp.plan_steps(
        ports,
        sp.runner_plans(ports, 0),
        tmp_path,
        otlp_endpoint="http://127.0.0.1:30005",
    )
    for step in steps:
        if step.name in ("server", "runner-1"):
            assert step.env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:30005"


def test_grafana_step_uses_the_right_binary_form(tmp_path: Path) -> None:
    ports = sp.ports_from_base(30000, 1)
    new = opt.grafana_step("/usr/sbin/grafana", Path("/usr/share/grafana"), tmp_path, ports)
    old = opt.grafana_step("/usr/sbin/grafana-server", Path("/usr/share/grafana"), tmp_path, ports)
    assert new.argv[1] == "server" and old.argv[1].startswith("--homepath=")
    assert new.env["GF_SERVER_HTTP_PORT"] == "30004"
    assert new.env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
