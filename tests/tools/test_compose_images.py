"""Every compose healthcheck runs a program its image really has.

A healthcheck runs inside its own container, so `wget` in a FROM-scratch or
distroless image (or CMD-SHELL where there is no shell) leaves the service
"starting" forever and `depends_on: service_healthy` never lets the stack up.
No image can be pulled here, so what each pinned image contains is recorded
below with the public source it was read from; a new image fails the test
until someone records what it has.
"""

from __future__ import annotations

import urllib.parse

import pytest

from tests.tools.repo import ROOT, load, services

# image repository -> (programs a healthcheck may run, where that was read).
IMAGE_PROGRAMS: dict[str, tuple[frozenset[str], str]] = {
    "prom/prometheus": (
        frozenset({"sh", "wget"}),
        "prometheus/prometheus Dockerfile: FROM quay.io/prometheus/busybox; the distroless "
        "default is planned for 4.0 only (prometheus/prometheus#19079)",
    ),
    "prom/alertmanager": (
        frozenset({"sh", "wget"}),
        "prometheus/alertmanager Dockerfile: FROM prom/busybox",
    ),
    "grafana/grafana": (
        frozenset({"sh", "wget", "curl"}),
        "Alpine-based (grafana/grafana#126529, main in June 2026 before 13.2: Alpine 3.24.1); "
        "busybox wget, curl added in grafana/grafana#65547",
    ),
    "grafana/tempo": (
        frozenset({"/tempo"}),
        "grafana/tempo v3.0.3 cmd/tempo/Dockerfile: distroless static, only /tempo; "
        "cmd/tempo/main.go has -health (GET http://localhost:3200/ready), grafana/tempo#6608",
    ),
    "grafana/loki": (
        frozenset({"/usr/bin/loki"}),
        "grafana/loki v3.7.6 cmd/loki/Dockerfile: distroless static:nonroot, only "
        "/usr/bin/loki; cmd/loki/health.go has -health (GET http://localhost:3100/ready)",
    ),
    "otel/opentelemetry-collector-contrib": (
        frozenset(),
        "FROM scratch with only /otelcol-contrib, no health probe program "
        "(open-telemetry/opentelemetry-collector-contrib#30798)",
    ),
    "docker": (frozenset({"sh", "docker"}), "docker:*-cli is Alpine with the docker CLI"),
    "pullwake": (frozenset({"sh", "pullwake"}), "our Dockerfile: python slim + pip install ."),
}


def image_repo(image: str) -> str:
    return image.rpartition(":")[0]


def programs(image: str) -> frozenset[str]:
    repo = image_repo(image)
    assert repo in IMAGE_PROGRAMS, f"{image}: record what the image contains in IMAGE_PROGRAMS"
    return IMAGE_PROGRAMS[repo][0]


def test_every_image_is_recorded() -> None:
    for svc in services().values():
        programs(svc["image"])


@pytest.mark.parametrize("name", sorted(n for n, s in services().items() if "healthcheck" in s))
def test_healthcheck_runs_a_program_its_image_has(name: str) -> None:
    svc = services()[name]
    test = svc["healthcheck"]["test"]
    assert isinstance(test, list) and test, f"{name}: use the list form of healthcheck.test"
    have = programs(svc["image"])
    if test[0] == "CMD-SHELL":
        assert "sh" in have, f"{name}: CMD-SHELL needs a shell, {svc['image']} has none"
        program = test[1].split()[0]
    else:
        assert test[0] == "CMD", f"{name}: {test}"
        program = test[1]
    assert program in have, f"{name}: {svc['image']} has no {program} ({sorted(have)})"


def test_http_healthchecks_probe_the_port_the_service_listens_on() -> None:
    for name, svc in services().items():
        argv = svc.get("healthcheck", {}).get("test", [])
        urls = [a for a in argv if a.startswith("http://")]
        container_ports = {str(p).split(":")[-1] for p in svc.get("ports", [])}
        for u in urls:
            parts = urllib.parse.urlsplit(u)
            assert parts.hostname in ("localhost", "127.0.0.1"), f"{name}: {u}"
            assert str(parts.port) in container_ports, (
                f"{name} probes {u}, listens on {container_ports}"
            )


def test_tempo_health_probe_default_matches_the_tempo_config() -> None:
    """`tempo -health` always asks localhost:3200/ready; the config must listen there."""
    svc = services()["tempo"]
    assert svc["healthcheck"]["test"] == ["CMD", "/tempo", "-health"]
    tempo = load(ROOT / "deploy" / "tempo" / "tempo.yaml")
    assert tempo["server"]["http_listen_port"] == 3200


def test_loki_health_probe_default_matches_the_loki_config() -> None:
    """`loki -health` asks localhost:3100/ready unless told otherwise; Loki listens there."""
    svc = services()["loki"]
    assert svc["healthcheck"]["test"] == ["CMD", "/usr/bin/loki", "-health"]
    loki = load(ROOT / "deploy" / "loki" / "loki.yaml")
    assert loki["server"]["http_listen_port"] == 3100


def test_shell_less_images_are_waited_for_by_the_gate() -> None:
    """An image with no probe program gets no healthcheck; the one-shot gate polls it."""
    svcs = services()
    gate = svcs["telemetry-ready"]
    for name, svc in svcs.items():
        if not programs(svc["image"]):
            assert "healthcheck" not in svc, name
            assert name in gate["depends_on"], f"telemetry-ready must wait for {name}"
            assert any(f"//{name}:" in str(a) for a in gate["command"]), gate["command"]
