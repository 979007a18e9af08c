"""`OTEL_*` environment -> telemetry settings (pure; no providers, no sockets)."""

from __future__ import annotations

import pytest

from pullwake.core.otel_settings import TelemetryConfigError, settings_from_env
from pullwake.core.telemetry import SERVICE_RUNNER


def settings(**env: str):  # type: ignore[no-untyped-def]
    return settings_from_env(SERVICE_RUNNER, "r1", "9.9.9", env)


def test_embedded_default_pushes_nothing() -> None:
    s = settings()
    assert not s.disabled
    assert s.traces_otlp is None and s.metrics_otlp is None
    assert dict(s.resource) == {
        "service.name": "pullwake-runner",
        "service.instance.id": "r1",
        "service.version": "9.9.9",
    }


def test_endpoint_turns_on_otlp_grpc_for_both_signals() -> None:
    s = settings(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4317")
    assert s.traces_otlp is not None and s.metrics_otlp is not None
    assert s.traces_otlp.protocol == "grpc"
    assert s.traces_otlp.endpoint == "http://127.0.0.1:4317"  # gRPC: no signal path
    assert s.traces_otlp.timeout_s == 10.0


def test_http_protobuf_appends_signal_paths_and_signal_endpoint_wins() -> None:
    s = settings(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318/",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT="http://m:9999/custom",
    )
    assert s.traces_otlp is not None and s.metrics_otlp is not None
    assert s.traces_otlp.endpoint == "http://c:4318/v1/traces"
    assert s.metrics_otlp.endpoint == "http://m:9999/custom"


def test_exporter_none_and_otlp_without_endpoint() -> None:
    s = settings(OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4317", OTEL_TRACES_EXPORTER="none")
    assert s.traces_otlp is None and s.metrics_otlp is not None
    s = settings(OTEL_METRICS_EXPORTER="otlp")
    assert s.metrics_otlp is not None and s.metrics_otlp.endpoint == "http://localhost:4317"
    assert s.traces_otlp is None


def test_headers_timeout_interval_in_milliseconds() -> None:
    s = settings(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4317",
        OTEL_EXPORTER_OTLP_HEADERS="api-key=a%20b,x=1",
        OTEL_EXPORTER_OTLP_TRACES_HEADERS="x=2",
        OTEL_EXPORTER_OTLP_TIMEOUT="2500",
        OTEL_METRIC_EXPORT_INTERVAL="1000",
    )
    assert s.traces_otlp is not None and s.metrics_otlp is not None
    assert dict(s.traces_otlp.headers) == {"api-key": "a b", "x": "2"}
    assert dict(s.metrics_otlp.headers) == {"api-key": "a b", "x": "1"}
    assert s.traces_otlp.timeout_s == 2.5
    assert s.metric_export_interval_s == 1.0
    assert s.metric_export_timeout_s == 1.0  # never longer than the interval


def test_sdk_disabled_wins() -> None:
    s = settings(OTEL_SDK_DISABLED="TRUE", OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4317")
    assert s.disabled and s.traces_otlp is None


def test_resource_env_merges_in() -> None:
    s = settings(
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test,service.name=x", OTEL_SERVICE_NAME="y"
    )
    assert s.resource["deployment.environment"] == "test"
    assert s.resource["service.name"] == "y"
    assert s.resource["service.instance.id"] == "r1"


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
        ({"OTEL_METRIC_EXPORT_INTERVAL": "soon"}, "OTEL_METRIC_EXPORT_INTERVAL"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "0"}, "positive"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, "http(s)://"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "json"}, "not supported"),  # OTLP off, still checked
        ({"OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "soon"}, "milliseconds"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:1", "OTEL_EXPORTER_OTLP_HEADERS": "novalue"},
            "key=value",
        ),
    ],
)
def test_bad_values_are_one_line_errors(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(TelemetryConfigError) as err:
        settings(**env)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_span_batch_is_bounded_and_read_from_the_same_mapping() -> None:
    s = settings(OTEL_BSP_SCHEDULE_DELAY="100", OTEL_BSP_MAX_QUEUE_SIZE="64")
    assert s.span_batch["schedule_delay_millis"] == 100
    assert s.span_batch["max_queue_size"] == 64
    assert s.span_batch["max_export_batch_size"] == 64  # never above the queue
    with pytest.raises(TelemetryConfigError, match="OTEL_BSP_MAX_QUEUE_SIZE"):
        settings(OTEL_BSP_MAX_QUEUE_SIZE="-1")


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
        "pullwake: error: telemetry: "
        "OTEL_METRIC_EXPORT_INTERVAL='soon' is not a number of milliseconds"
    ]
