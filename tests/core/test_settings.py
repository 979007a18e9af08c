"""`OTEL_*` environment -> telemetry settings (pure; no providers, no sockets)."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

from pullwake.core.otel_settings import TelemetryConfigError, otel_environment, settings_from_env
from pullwake.core.telemetry import SERVICE_RUNNER


def settings(**env: str):  # type: ignore[no-untyped-def]
    return settings_from_env(SERVICE_RUNNER, "r1", "9.9.9", env)


def test_embedded_default_pushes_nothing() -> None:
    s = settings()
    assert not s.disabled
    assert s.traces_otlp is None and s.metrics_otlp is None and s.logs_otlp is None
    assert not s.console
    attrs = s.resource.attributes
    assert attrs["service.name"] == "pullwake-runner"
    assert attrs["service.instance.id"] == "r1"
    assert attrs["service.version"] == "9.9.9"
    assert attrs["telemetry.sdk.name"] == "opentelemetry"  # the SDK built it


def test_endpoint_turns_on_otlp_for_traces_and_metrics_not_logs() -> None:
    s = settings(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4317")
    assert (s.traces_otlp, s.metrics_otlp, s.logs_otlp) == ("grpc", "grpc", None)
    s = settings(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT="http://m:4317")  # one signal's own
    assert (s.traces_otlp, s.metrics_otlp) == (None, "grpc")


def test_grpc_takes_the_bare_host_port_endpoint_the_sdk_accepts() -> None:
    s = settings(OTEL_EXPORTER_OTLP_ENDPOINT="collector:4317")
    assert s.traces_otlp == "grpc"


def test_logs_need_otel_logs_exporter_otlp() -> None:
    s = settings(OTEL_LOGS_EXPORTER="otlp")
    assert s.logs_otlp == "grpc" and s.traces_otlp is None
    s = settings(
        OTEL_LOGS_EXPORTER="otlp,console",
        OTEL_EXPORTER_OTLP_LOGS_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318",
    )
    assert s.logs_otlp == "http/protobuf" and "logs" in s.console
    assert s.traces_otlp == "grpc"  # per-signal protocol: only logs


def test_exporter_none_and_otlp_without_endpoint() -> None:
    s = settings(OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4317", OTEL_TRACES_EXPORTER="none")
    assert s.traces_otlp is None and s.metrics_otlp == "grpc"
    s = settings(OTEL_METRICS_EXPORTER="otlp")  # the SDK's default endpoint then
    assert s.metrics_otlp == "grpc" and s.traces_otlp is None


def test_sdk_disabled_wins() -> None:
    s = settings(OTEL_SDK_DISABLED="TRUE", OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4317")
    assert s.disabled and s.traces_otlp is None


def test_resource_env_wins_over_pullwake_defaults() -> None:
    s = settings(
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=test,service.name=x",
        OTEL_SERVICE_NAME="y",
    )
    attrs = s.resource.attributes
    assert attrs["deployment.environment.name"] == "test"
    assert attrs["service.name"] == "y"  # OTEL_SERVICE_NAME > OTEL_RESOURCE_ATTRIBUTES
    assert attrs["service.instance.id"] == "r1"
    s = settings(OTEL_RESOURCE_ATTRIBUTES="service.instance.id=pod-7")
    assert s.resource.attributes["service.instance.id"] == "pod-7"


def test_instance_id_defaults_to_a_fresh_uuid_per_process() -> None:
    a = settings_from_env("pullwake-server", env={}).resource.attributes["service.instance.id"]
    b = settings_from_env("pullwake-server", env={}).resource.attributes["service.instance.id"]
    assert a != b and str(uuid.UUID(str(a))) == a


def test_otel_environment_hands_the_mapping_over_and_restores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "outer")
    monkeypatch.setenv("NOT_OTEL", "kept")
    with otel_environment({"OTEL_TRACES_EXPORTER": "none", "HOME": "ignored"}):
        assert "OTEL_SERVICE_NAME" not in os.environ
        assert os.environ["OTEL_TRACES_EXPORTER"] == "none"
        assert os.environ["NOT_OTEL"] == "kept" and os.environ.get("HOME") != "ignored"
    assert os.environ["OTEL_SERVICE_NAME"] == "outer"
    assert "OTEL_TRACES_EXPORTER" not in os.environ


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:1",
            },
            "http/json",
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "zipkin"),
        ({"OTEL_LOGS_EXPORTER": "otlp,loki"}, "loki"),
        ({"OTEL_METRICS_EXPORTER": "prometheus"}, "/metrics"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "soon"}, "OTEL_METRIC_EXPORT_INTERVAL"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "0"}, "positive"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "-1"}, "OTEL_BSP_MAX_QUEUE_SIZE"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
            "http(s)://",
        ),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "json"}, "not supported"),  # OTLP off, still checked
        ({"OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "soon"}, "not a number"),
    ],
)
def test_bad_values_are_one_line_errors(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(TelemetryConfigError) as err:
        settings(**env)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_no_private_opentelemetry_imports_outside_the_logs_module() -> None:
    """Private SDK names change without notice: none in pullwake, except the logs
    signal, which Python still publishes under `_logs` (confined to one module)."""
    root = Path(__file__).resolve().parents[2] / "pullwake"
    pattern = re.compile(r"^\s*(from|import)\s+opentelemetry[\w.]*\._\w*|\bsampling\._")
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "otel_logs.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert offenders == []
    logs = (root / "core" / "otel_logs.py").read_text()
    assert set(re.findall(r"opentelemetry[\w.]*\._(\w+)", logs)) <= {"logs", "log_exporter"}


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--server", "http://127.0.0.1:1", "--runner-id", "r1"],
        ["server", "--port", "0", "--db", ":memory:", "--dev"],
    ],
)
def test_bad_otel_env_is_one_line_from_the_cli(argv: list[str]) -> None:
    import os
    import subprocess
    import sys

    env = dict(os.environ, OTEL_SDK_DISABLED="false", OTEL_METRIC_EXPORT_INTERVAL="soon")
    done = subprocess.run(
        [sys.executable, "-m", "pullwake", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "pullwake: error: telemetry: OTEL_METRIC_EXPORT_INTERVAL='soon' is not a number"
    ]
