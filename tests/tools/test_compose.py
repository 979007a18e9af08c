"""docker-compose.yml and the Dockerfile, checked without Docker (no image can be pulled here).

The Compose specification's JSON schema comes from the installed
`check-jsonschema` package (dev extra), which vendors it; nothing is copied
into this repository.
"""

from __future__ import annotations

import argparse
import copy
import importlib.resources
import json
import re
from collections import Counter
from typing import Any

import pytest

from pullwake.cli import build_parser
from tests.tools.repo import (
    PULLWAKE_IMAGE,
    ROOT,
    argv_of,
    bind_mounts,
    compose,
    pyproject_version,
    services,
)

PULLWAKE_SERVICES = ("server", "runner", "runner-legacy", "publisher", "alert-sink")
REQUIRED = (*PULLWAKE_SERVICES, "otel-collector", "prometheus", "alertmanager", "grafana", "tempo")


def compose_schema() -> dict[str, Any]:
    pytest.importorskip(
        "check_jsonschema", reason="check-jsonschema (dev extra) ships the Compose spec schema"
    )
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return dict(json.loads((vendor / "compose-spec.json").read_text()))


def schema_errors(doc: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(compose_schema())
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_validates_against_the_compose_spec_schema() -> None:
    assert schema_errors(compose()) == []


def test_the_schema_check_is_live() -> None:
    """A misspelt key and a wrong type are rejected, so the test above can fail."""
    doc = copy.deepcopy(compose())
    doc["services"]["server"]["helthcheck"] = {}
    doc["services"]["runner"]["ports"] = "9464:9464"
    errors = schema_errors(doc)
    assert any("helthcheck" in e for e in errors), errors
    assert any("ports" in e for e in errors), errors


def test_every_required_service_is_there() -> None:
    assert set(REQUIRED) <= set(services())
    profiles = {s.get("profiles", [None])[0] for s in services().values()}
    assert "chaos" in profiles


def test_every_image_is_pinned() -> None:
    version = pyproject_version()
    for name, svc in services().items():
        image = svc.get("image")
        assert image, f"{name} names no image"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
        if image.startswith(PULLWAKE_IMAGE):
            assert svc.get("build") == ".", f"{name} builds the pullwake image from the repo"
            assert tag == version, f"{name}: tag the built image with the package version"
        else:
            assert re.fullmatch(r"v?\d+\.\d+\.\d+(-[\w.]+)?", tag), f"{name}: {image}"


def test_every_mounted_file_exists_in_the_repo() -> None:
    absolute = []
    for name, svc in services().items():
        for host, container in bind_mounts(svc):
            if host.startswith("/"):
                absolute.append((name, host))
                continue
            assert (ROOT / host).exists(), f"{name} mounts {host} -> {container}: missing"
    # The only host path outside the repo: chaos talks to the Docker daemon.
    assert absolute == [("chaos", "/var/run/docker.sock")]


def test_every_named_volume_is_declared() -> None:
    """The schema cannot see this: compose refuses a volume that is not declared."""
    declared = set(compose().get("volumes") or {})
    used = set()
    for svc in services().values():
        for v in svc.get("volumes", []):
            source = str(v).split(":")[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used == declared, (used, declared)


def test_every_published_port_is_unique() -> None:
    published = []
    for svc in services().values():
        for p in svc.get("ports", []):
            parts = str(p).split(":")
            assert len(parts) == 2, f"publish as HOST:CONTAINER: {p}"
            published.append(int(parts[0]))
    dupes = [p for p, n in Counter(published).items() if n > 1]
    assert not dupes and published


def test_depends_on_conditions_can_be_met_and_have_no_cycle() -> None:
    svcs = services()
    graph: dict[str, set[str]] = {}
    for name, svc in svcs.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: use depends_on with conditions"
        graph[name] = set(deps)
        for dep, spec in deps.items():
            cond = spec["condition"]
            assert dep in svcs, f"{name} depends on unknown {dep}"
            if cond == "service_healthy":
                assert "healthcheck" in svcs[dep], f"{name} waits for {dep}'s missing healthcheck"
            elif cond == "service_completed_successfully":
                assert svcs[dep].get("restart") == "no", f"{dep} is a one-shot gate"
            else:
                assert cond == "service_started", (name, dep, cond)
    # The collector's image cannot run a healthcheck: a gate polls it (see
    # test_compose_images.py); Tempo probes itself with `tempo -health`.
    gate = argv_of(svcs["telemetry-ready"]["command"])
    assert "http://otel-collector:13133/" in gate
    assert svcs["otel-collector"]["depends_on"]["tempo"]["condition"] == "service_healthy"
    seen: set[str] = set()
    visiting: set[str] = set()

    def visit(n: str) -> None:
        assert n not in visiting, f"depends_on cycle through {n}"
        if n in seen:
            return
        visiting.add(n)
        for d in graph[n]:
            visit(d)
        visiting.discard(n)
        seen.add(n)

    for n in graph:
        visit(n)


def subcommands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def test_pullwake_commands_and_healthchecks_parse_with_the_real_cli() -> None:
    """Every pullwake argv in the compose file is accepted by pullwake's own parser."""
    parser = build_parser()
    commands = []
    for name, svc in services().items():
        if not svc["image"].startswith(PULLWAKE_IMAGE):
            continue
        commands.append((name, argv_of(svc.get("command"))))
        test = svc.get("healthcheck", {}).get("test", [])
        if test:
            assert test[:2] == ["CMD", "pullwake"], f"{name}: {test}"
            commands.append((f"{name} healthcheck", test[2:]))
    missing = {c[1][0] for c in commands} - subcommands(parser)
    if missing:
        pytest.skip(f"subcommands not landed yet: {sorted(missing)}")
    for what, argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{what}: pullwake rejects {argv}")


def test_apps_send_otlp_to_the_collector() -> None:
    svcs = services()
    collector_ports = {p.split(":")[1] for p in svcs["otel-collector"]["ports"]}
    for name in ("server", "runner", "runner-legacy"):
        env = svcs[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317", name
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert "4317" in collector_ports


@pytest.mark.parametrize("name", ["server", "runner", "runner-legacy"])
def test_otel_environment_reads_as_otlp_to_the_collector(name: str) -> None:
    """pullwake's own OTEL_* parser takes each app's environment: both signals over
    gRPC to the collector, the service name set (a bad value would stop the app)."""
    from pullwake.core.otel_settings import settings_from_env

    env = {k: str(v) for k, v in services()[name]["environment"].items()}
    settings = settings_from_env("fallback", "id-1", env=env)
    assert not settings.disabled
    for target in (settings.traces_otlp, settings.metrics_otlp):
        assert target is not None, name
        assert (target.endpoint, target.protocol) == ("http://otel-collector:4317", "grpc")
    assert settings.resource["service.name"] == env["OTEL_SERVICE_NAME"]
    assert settings.metric_export_interval_s <= 15  # within one Prometheus evaluation


def test_runners_include_a_legacy_one_next_to_a_default_one() -> None:
    svcs = services()
    legacy = argv_of(svcs["runner-legacy"]["command"])
    default = argv_of(svcs["runner"]["command"])
    assert "--profile=legacy" in legacy and not any("--profile" in a for a in default)
    publisher = argv_of(svcs["publisher"]["command"])
    assert "--runner-id=runner-1" in publisher and "--runner-id=runner-legacy" in publisher


def test_grafana_is_anonymous_viewer_with_admin_password_from_env() -> None:
    env = services()["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


def test_prometheus_is_v3_with_otlp_and_exemplars() -> None:
    prom = services()["prometheus"]
    assert prom["image"].startswith("prom/prometheus:v3.")
    assert "--web.enable-otlp-receiver" in prom["command"]
    assert "--enable-feature=exemplar-storage" in prom["command"]
    am = services()["alertmanager"]
    assert "--cluster.listen-address=" in am["command"]


def test_chaos_kills_and_restarts_the_server_of_its_own_project() -> None:
    chaos = services()["chaos"]
    script = "\n".join(argv_of(chaos["command"]))
    assert chaos["profiles"] == ["chaos"]
    assert "com.docker.compose.service=server" in script
    assert "com.docker.compose.project" in script
    assert "docker stop --signal KILL" in script and "docker start" in script
    # `$$` is compose's escape for a literal `$`: a bare `$var` would be interpolated by
    # compose at load time (to nothing) instead of by the shell at run time.
    assert not re.search(r"(?<!\$)\$(?!\$)", script), "unescaped $ in the chaos script"


# --- the Dockerfile ---------------------------------------------------------------
def dockerfile() -> list[str]:
    return [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]


def test_dockerfile_slim_pinned_base_non_root_pip_install() -> None:
    lines = dockerfile()
    base = [ln for ln in lines if ln.startswith("FROM ")]
    assert len(base) == 1
    assert re.fullmatch(r"FROM python:\d+\.\d+\.\d+-slim-\w+", base[0]), base[0]
    users = [ln for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("USER root", "USER 0")
    assert any("pip install ." in ln for ln in lines)


def test_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    ignored = {
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    for ln in dockerfile():
        if ln.startswith("COPY ") and "--from" not in ln:
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), ln
                assert src not in ignored, f"{src} is copied but .dockerignore drops it"
    # The packages setuptools installs must all be copied.
    copied = {ln.split()[1] for ln in dockerfile() if ln.startswith("COPY ")}
    needed = {"pullwake", "runner", "server", "dashboards", "otel-collector", "pyproject.toml"}
    assert needed <= copied
