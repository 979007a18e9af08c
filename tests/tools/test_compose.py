"""docker-compose.yml and the Dockerfile, checked without Docker (no image can be pulled here).

The Compose specification's JSON schema comes from the installed
`check-jsonschema` package (dev extra), which vendors it; nothing is copied
into this repository.
"""

from __future__ import annotations

import argparse
import configparser
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
    published,
    pyproject_version,
    services,
)

PULLWAKE_SERVICES = ("server", "runner", "runner-legacy", "publisher", "alert-sink")
REQUIRED = (
    *PULLWAKE_SERVICES,
    *("otel-collector", "prometheus", "alertmanager", "grafana", "tempo", "loki"),
)


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


def test_every_published_port_is_on_loopback_and_unique() -> None:
    """Nothing in the stack is reachable from other machines (Grafana's anonymous
    viewer, Prometheus' admin API, the OTLP receivers)."""
    host_ports = []
    for name, svc in services().items():
        for address, host_port, _ in published(svc):
            assert address == "127.0.0.1", f"{name} publishes on {address}:{host_port}"
            host_ports.append(host_port)
    dupes = [p for p, n in Counter(host_ports).items() if n > 1]
    assert not dupes and host_ports


def test_the_port_check_is_live() -> None:
    with pytest.raises(AssertionError, match=re.escape("127.0.0.1:HOST:CONTAINER")):
        published({"ports": ["9090:9090"]})
    assert published({"ports": ["0.0.0.0:1:2"]}) == [("0.0.0.0", 1, 2)]


def test_every_service_rotates_its_logs_and_has_a_memory_limit() -> None:
    """Docker's default json-file driver keeps logs forever; an unbounded service can
    take the machine's memory.  Every service (the chaos profile's too) has both."""
    for name, svc in services().items():
        logging = svc.get("logging") or {}
        assert logging.get("driver") == "json-file", name
        opts = logging.get("options") or {}
        assert re.fullmatch(r"\d+[km]", str(opts.get("max-size"))), (name, opts)
        assert int(opts.get("max-file", 0)) >= 1, (name, opts)
        limit = svc.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
        assert limit or svc.get("mem_limit"), f"{name} has no memory limit"
        assert re.fullmatch(r"\d+[MG]", str(limit)), (name, limit)


COMPOSE_VAR = re.compile(r"(?<!\$)\$\{(\w+)(?::?([-+?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation of one value: ${VAR}, ${VAR:-default}, ${VAR:+alt},
    ${VAR:?error} (the `:` forms, the ones this file may use), `$$` a literal `$`."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        have = env.get(name, "")
        if op == "-":
            return have or arg
        if op == "+":
            return arg if have else ""
        if op == "?":
            if not have:
                raise KeyError(f"{name}: {arg}")
            return have
        return have

    return COMPOSE_VAR.sub(one, value).replace("$$", "$")


def compose_variables() -> set[str]:
    return {m.group(0) for m in COMPOSE_VAR.finditer((ROOT / "docker-compose.yml").read_text())}


def test_a_first_up_needs_no_variable_set() -> None:
    """No `${VAR:?...}` (compose refuses to start without it) and no bare `${VAR}` (an
    unset one becomes "" with a warning): every variable has a default or an alternative."""
    for ref in compose_variables():
        assert re.fullmatch(r"\$\{\w+:[-+][^}]*\}", ref), f"{ref}: give it a default"
    for svc in services().values():
        for value in (svc.get("environment") or {}).values():
            interpolate(str(value), {})  # no KeyError: nothing required


def grafana_env(shell: dict[str, str]) -> dict[str, str]:
    """Grafana's environment as compose would set it, from `shell`'s variables."""
    env = services()["grafana"]["environment"]
    return {k: interpolate(str(v), shell) for k, v in env.items()}


def grafana_ini() -> configparser.ConfigParser:
    mounts = dict(bind_mounts(services()["grafana"]))
    assert mounts["./deploy/grafana/grafana.ini"] == "/etc/grafana/grafana.ini"
    ini = configparser.ConfigParser()
    ini.read_string((ROOT / "deploy" / "grafana" / "grafana.ini").read_text())
    return ini


def effective(env: dict[str, str], section: str, key: str) -> str:
    """Grafana's value for [section] key: its GF_SECTION_KEY variable when set and
    non-empty (Grafana ignores empty ones), else grafana.ini's."""
    override = env.get(f"GF_{section}_{key}".upper(), "")
    return override or grafana_ini().get(section, key)


def test_grafana_without_a_password_is_anonymous_read_only() -> None:
    env = grafana_env({})
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    # No admin is created (so none with Grafana's default admin/admin) and no login form.
    assert effective(env, "security", "disable_initial_admin_creation") == "true"
    assert effective(env, "auth", "disable_login_form") == "true"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == ""


def test_grafana_admin_password_from_the_environment_turns_the_admin_on() -> None:
    env = grafana_env({"GRAFANA_ADMIN_PASSWORD": "s3cret$x"})
    assert env["GF_SECURITY_ADMIN_USER"] == "admin"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret$x"
    assert effective(env, "security", "disable_initial_admin_creation") == "false"
    assert effective(env, "auth", "disable_login_form") == "false"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"  # anonymous stays read-only


def test_the_interpolation_model_is_live() -> None:
    assert interpolate("${A:-x}/${A:+y}/$${A}", {}) == "x//${A}"
    assert interpolate("${A:-x}/${A:+y}", {"A": "v"}) == "v/y"
    with pytest.raises(KeyError):
        interpolate("${A:?set A}", {})


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
    collector_ports = {inside for _, _, inside in published(svcs["otel-collector"])}
    for name in ("server", "runner", "runner-legacy"):
        env = svcs[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317", name
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
        for signal in ("TRACES", "METRICS", "LOGS"):
            assert env[f"OTEL_{signal}_EXPORTER"] == "otlp", (name, signal)
        attrs = dict(kv.split("=", 1) for kv in env["OTEL_RESOURCE_ATTRIBUTES"].split(","))
        assert attrs["deployment.environment.name"] == "compose", name
        assert "deployment.environment" not in attrs  # deprecated name
    assert 4317 in collector_ports


@pytest.mark.parametrize("name", ["server", "runner", "runner-legacy"])
def test_otel_environment_reads_as_otlp_to_the_collector(name: str) -> None:
    """pullwake's OTEL_* rules take each app's environment: both signals over gRPC
    (the SDK reads the endpoint), the service name set (a bad value would stop the app)."""
    from pullwake.core.otel_settings import settings_from_env

    env = {k: str(v) for k, v in services()[name]["environment"].items()}
    settings = settings_from_env("fallback", "id-1", env=env)
    assert not settings.disabled
    assert (settings.traces_otlp, settings.metrics_otlp) == ("grpc", "grpc"), name
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    assert settings.resource.attributes["service.name"] == env["OTEL_SERVICE_NAME"]
    # within one Prometheus evaluation (milliseconds, read by the SDK)
    assert float(env["OTEL_METRIC_EXPORT_INTERVAL"]) <= 15_000


def test_runners_include_a_legacy_one_next_to_a_default_one() -> None:
    svcs = services()
    legacy = argv_of(svcs["runner-legacy"]["command"])
    default = argv_of(svcs["runner"]["command"])
    assert "--profile=legacy" in legacy and not any("--profile" in a for a in default)
    publisher = argv_of(svcs["publisher"]["command"])
    assert "--runner-id=runner-1" in publisher and "--runner-id=runner-legacy" in publisher


def test_prometheus_is_v3_with_otlp_remote_write_and_exemplars() -> None:
    prom = services()["prometheus"]
    assert prom["image"].startswith("prom/prometheus:v3.")
    assert "--web.enable-otlp-receiver" in prom["command"]  # the collector's metrics
    assert "--web.enable-remote-write-receiver" in prom["command"]  # Tempo's generator
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
