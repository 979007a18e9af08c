"""Providers from `pullwake.telemetry`: names on both paths, isolation, bounded shutdown.

Real OTLP/gRPC on a loopback port (the in-process receiver), the real
Prometheus reader; in-memory readers only where a test reads SDK data points.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import time
import uuid
from collections.abc import Iterator, Mapping

import pytest
from opentelemetry import metrics as metrics_api
from opentelemetry import trace as trace_api
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pullwake.core.catalog import CATALOG, Component, Kind, Metric
from pullwake.core.telemetry import (
    SERVICE_RUNNER,
    SERVICE_SERVER,
    Instruments,
    RateLimitFilter,
    Telemetry,
    build_telemetry,
)
from tests.support.otlp_receiver import OtlpReceiver, collector_prom_name
from tests.support.procs import wait_until


def sample_attrs(m: Metric) -> dict[str, str]:
    return {
        a: "r1" if a == "runner.id" else (m.allowed_values(a) or ("x",))[0] for a in m.attributes
    }


def gauge_callbacks() -> dict[str, object]:
    return {m.name: (lambda m=m: [(1.0, sample_attrs(m))]) for m in CATALOG if m.kind is Kind.GAUGE}


def exercise(t: Telemetry, component: Component) -> Instruments:
    ins = Instruments(t.meter(), component, gauge_callbacks())  # type: ignore[arg-type]
    for m in CATALOG:
        if m.component is not component:
            continue
        if m.kind in (Kind.COUNTER, Kind.UPDOWN):
            ins.add(m, 1, sample_attrs(m))
        elif m.kind is Kind.HISTOGRAM:
            ins.record(m, 0.2, sample_attrs(m))
    return ins


def scrape_families(text: str) -> dict[str, str]:
    """`# TYPE name kind` lines of a Prometheus exposition."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


_PROM_TYPE = {
    Kind.COUNTER: "counter",
    Kind.GAUGE: "gauge",
    Kind.UPDOWN: "gauge",
    Kind.HISTOGRAM: "histogram",
}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


def otlp_env(rx: OtlpReceiver, **extra: str) -> Mapping[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
        **extra,
    }


@pytest.mark.parametrize(
    ("service", "component"),
    [(SERVICE_RUNNER, Component.RUNNER), (SERVICE_SERVER, Component.SERVER)],
)
def test_names_agree_on_scrape_and_otlp_paths(
    receiver: OtlpReceiver, service: str, component: Component
) -> None:
    t = build_telemetry(service, "i1", env=otlp_env(receiver))
    try:
        exercise(t, component)
        mine = [m for m in CATALOG if m.component is component]
        expected = {m.name: m for m in mine}
        wait_until(lambda: set(expected) <= receiver.metric_names(), 10, what="OTLP metrics")
        families = scrape_families(t.prometheus_text().decode())
        for name, m in expected.items():
            # OTLP path: the collector's translation of what went over the wire
            assert collector_prom_name(receiver.metric(name)) == m.prom_name, name
            # scrape path: the Python Prometheus reader (OTLP-only metrics left out)
            want = _PROM_TYPE[m.kind] if m.scraped else None
            assert families.get(m.prom_name) == want, (m.prom_name, families)
        point = receiver.points(next(iter(expected)))[0]
        assert point.resource["service.name"] == service
        assert point.resource["service.instance.id"] == "i1"
    finally:
        assert t.shutdown(5)


def test_histogram_buckets_come_from_the_catalog() -> None:
    """Explicit buckets (the scrape path's aggregation) are the catalog's advisory ones."""
    reader = InMemoryMetricReader()
    t = build_telemetry(SERVICE_RUNNER, "r1", env={}, metric_readers=[reader], prometheus=False)
    exercise(t, Component.RUNNER)
    data = reader.get_metrics_data()
    assert data is not None
    seen = 0
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                m = next(c for c in CATALOG if c.name == metric.name)
                if m.kind is Kind.HISTOGRAM:
                    bounds = metric.data.data_points[0].explicit_bounds  # type: ignore[union-attr]
                    assert tuple(bounds) == m.buckets
                    seen += 1
    assert seen == sum(
        1 for m in CATALOG if m.kind is Kind.HISTOGRAM and m.component is Component.RUNNER
    )


def test_exemplars_carry_the_active_trace_id() -> None:
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    t = build_telemetry(
        SERVICE_RUNNER,
        "r1",
        env={},
        metric_readers=[reader],
        span_processors=[SimpleSpanProcessor(spans)],
        prometheus=False,
    )
    ins = Instruments(t.meter(), Component.RUNNER, gauge_callbacks())  # type: ignore[arg-type]
    hb = next(m for m in CATALOG if m.name == "pullwake.wake.latency")
    with t.tracer().start_as_current_span("pullwake.wake") as span:
        ins.record(hb, 0.01, {"runner.id": "r1"})
    data = reader.get_metrics_data()
    assert data is not None
    points = [
        p
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == hb.name
        for p in metric.data.data_points
    ]
    ex = [e for p in points for e in p.exemplars]  # type: ignore[union-attr]
    assert ex and ex[0].trace_id == span.get_span_context().trace_id


def test_providers_are_private_and_registries_independent() -> None:
    before_tp = trace_api.get_tracer_provider()
    before_mp = metrics_api.get_meter_provider()
    a = build_telemetry(SERVICE_RUNNER, "a", env={})
    b = build_telemetry(SERVICE_RUNNER, "b", env={})  # a global registry would refuse this
    exercise(a, Component.RUNNER)
    assert b"pullwake_wakes_total" in a.prometheus_text()
    assert b"pullwake_wakes_total" not in b.prometheus_text()
    assert trace_api.get_tracer_provider() is before_tp
    assert metrics_api.get_meter_provider() is before_mp
    assert a.shutdown(5) and b.shutdown(5)


def test_sdk_disabled_is_all_noop() -> None:
    t = build_telemetry(
        SERVICE_RUNNER,
        "r1",
        env={"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
    )
    assert not t.enabled and not t.has_prometheus
    exercise(t, Component.RUNNER)
    with t.tracer().start_as_current_span("x") as span:
        assert not span.get_span_context().is_valid
    assert b"disabled" in t.prometheus_text()
    assert t.shutdown(0.1)


def test_instruments_refuse_unlisted_attributes() -> None:
    t = build_telemetry(SERVICE_RUNNER, "r1", env={}, prometheus=False)
    ins = Instruments(t.meter(), Component.RUNNER, gauge_callbacks())  # type: ignore[arg-type]
    wakes = next(m for m in CATALOG if m.name == "pullwake.wakes")
    with pytest.raises(ValueError, match=r"wake\.id"):
        ins.add(wakes, 1, {"runner.id": "r1", "outcome": "handled", "wake.id": "w1"})
    with pytest.raises(ValueError, match="no gauge callback"):
        Instruments(t.meter(), Component.RUNNER, {})


@pytest.mark.parametrize("collector", ["blackhole", "refused", "slow"])
def test_recording_stays_fast_and_shutdown_bounded_when_the_collector_misbehaves(
    collector: str,
) -> None:
    """Black-holed (accepts, never answers), down (connection refused: the exporter
    retries with backoff) or slow (each export answered after 3 s): spans and
    metrics are still recorded at once, and shutdown gives up at its deadline."""
    with contextlib.ExitStack() as stack:
        s = stack.enter_context(socket.socket())
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
        if collector == "blackhole":
            s.listen(64)  # the kernel accepts; nobody ever reads
        elif collector == "refused":
            s.close()  # nothing listens there
        else:
            rx = stack.enter_context(OtlpReceiver(delay_s=3.0))
            endpoint = rx.endpoint
        t = build_telemetry(
            SERVICE_RUNNER,
            "r1",
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_EXPORTER_OTLP_TIMEOUT": "30000",
                "OTEL_METRIC_EXPORT_INTERVAL": "100",
                "OTEL_BSP_SCHEDULE_DELAY": "50",
                "OTEL_LOGS_EXPORTER": "otlp",
                "OTEL_BLRP_SCHEDULE_DELAY": "50",
            },
        )
        lg = logging.getLogger(f"pullwake.test.logs.{collector}")
        lg.propagate, lg.level = False, logging.INFO
        t.attach_logs(lg)
        exercise(t, Component.RUNNER)
        for i in range(50):  # first exports start and stall
            with t.tracer().start_as_current_span("pullwake.test"):
                lg.info("record %d", i)
        if collector == "slow":
            wait_until(lambda: rx.calls > 0, 10, what="an export held by the slow collector")
        # recording and scraping stay fast while the exporter threads hang
        started = time.monotonic()
        for i in range(200):
            with t.tracer().start_as_current_span("pullwake.test"):
                lg.info("record %d", i)
        assert b"pullwake_wakes_total" in t.prometheus_text()
        assert time.monotonic() - started < 2.0
        started = time.monotonic()
        flushed = t.shutdown(timeout_s=1.5)
        took = time.monotonic() - started
        assert took < 3.0, took  # 1.5 s deadline + scheduling margin on a shared machine
        if collector == "blackhole":
            assert not flushed
        assert not lg.handlers  # shutdown took the export handler off


def test_logs_go_over_otlp_with_the_active_span_and_the_resource() -> None:
    """OTEL_LOGS_EXPORTER=otlp: records reach a real OTLP/gRPC receiver carrying
    the trace and span id of the span active when they were logged."""
    with OtlpReceiver() as rx:
        t = build_telemetry(
            SERVICE_RUNNER,
            "r-logs",
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
                "OTEL_TRACES_EXPORTER": "none",
                "OTEL_METRICS_EXPORTER": "none",
                "OTEL_LOGS_EXPORTER": "otlp",
                "OTEL_BLRP_SCHEDULE_DELAY": "50",
                "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test",
            },
        )
        lg = logging.getLogger("pullwake.test.otlp_logs")
        lg.propagate, lg.level = False, logging.INFO
        t.attach_logs(lg)
        with t.tracer().start_as_current_span("pullwake.test") as span:
            lg.warning("inside %s", "a span")
        lg.info("outside")
        logging.getLogger("opentelemetry.test").warning("the SDK's own: never exported")
        ctx = span.get_span_context()
        inside = wait_until(lambda: rx.logs("inside a span"), 10, what="OTLP log record")[0]
        assert inside.trace_id == format(ctx.trace_id, "032x")
        assert inside.span_id == format(ctx.span_id, "016x")
        assert inside.severity == "WARN"
        assert inside.resource["service.instance.id"] == "r-logs"
        assert inside.resource["deployment.environment.name"] == "test"
        outside = wait_until(lambda: rx.logs("outside"), 10, what="second record")[0]
        assert outside.trace_id == "" and outside.severity == "INFO"
        assert t.shutdown(5)
        assert not rx.logs("never exported") and not rx.spans()


def test_rate_limit_filter_lets_one_through_per_interval() -> None:
    now = [0.0]
    f = RateLimitFilter(interval_s=60, clock=lambda: now[0])

    def rec(msg: str) -> object:
        import logging

        return logging.LogRecord("opentelemetry.x", 30, __file__, 1, msg, (), None)

    first = rec("Failed to export %s")
    assert f.filter(first)  # type: ignore[arg-type]
    assert not any(f.filter(rec("Failed to export %s")) for _ in range(100))  # type: ignore[arg-type]
    assert f.filter(rec("another message"))  # type: ignore[arg-type]
    now[0] = 61.0
    later = rec("Failed to export %s")
    assert f.filter(later)  # type: ignore[arg-type]
    assert "100 similar messages suppressed" in later.msg  # type: ignore[attr-defined]


def test_keep_roots_sampler_keeps_sessions_when_the_rest_is_sampled_away() -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    spans = InMemorySpanExporter()
    t = build_telemetry(
        SERVICE_RUNNER,
        "r1",
        env={},
        span_processors=[SimpleSpanProcessor(spans)],
        prometheus=False,
        always_sample=frozenset({"pullwake.stream.session"}),
        sampler=ALWAYS_OFF,
    )
    tracer = t.tracer()
    # ALWAYS_OFF decides for everything but the named roots
    with tracer.start_as_current_span("pullwake.stream.session"), tracer.start_as_current_span("c"):
        pass
    with tracer.start_as_current_span("pullwake.wake"):
        pass
    assert [s.name for s in spans.get_finished_spans()] == ["pullwake.stream.session"]


def test_http_protobuf_path_reaches_an_http_receiver() -> None:
    """OTLP over HTTP/protobuf: POSTs to /v1/traces and /v1/metrics, decodable protobuf."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    got: dict[str, list[bytes]] = {"/v1/traces": [], "/v1/metrics": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.setdefault(self.path, []).append(body)
            assert self.headers["Content-Type"] == "application/x-protobuf"
            assert self.headers["x-test"] == "yes"
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        t = build_telemetry(
            SERVICE_RUNNER,
            "r1",
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{httpd.server_address[1]}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_HEADERS": "x-test=yes",
                "OTEL_METRIC_EXPORT_INTERVAL": "200",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
        )
        exercise(t, Component.RUNNER)
        with t.tracer().start_as_current_span("pullwake.test"):
            pass
        wait_until(lambda: got["/v1/traces"] and got["/v1/metrics"], 10, what="HTTP exports")
        assert t.shutdown(5)
    finally:
        httpd.shutdown()
    traces = ExportTraceServiceRequest.FromString(got["/v1/traces"][0])
    assert traces.resource_spans[0].scope_spans[0].spans[0].name == "pullwake.test"
    names = {
        m.name
        for body in got["/v1/metrics"]
        for rm in ExportMetricsServiceRequest.FromString(body).resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert {m.name for m in CATALOG if m.component is Component.RUNNER} <= names


def test_grpc_host_port_endpoint_reaches_the_collector() -> None:
    """The bare `host:port` form (what the SDK and the collector docs accept for
    gRPC), plaintext by OTEL_EXPORTER_OTLP_INSECURE: pullwake no longer rejects it."""
    with OtlpReceiver() as rx:
        t = build_telemetry(
            SERVICE_SERVER,
            None,
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"127.0.0.1:{rx.port}",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_BSP_SCHEDULE_DELAY": "50",
                "OTEL_METRICS_EXPORTER": "none",
            },
        )
        with t.tracer().start_as_current_span("pullwake.test"):
            pass
        span = wait_until(lambda: rx.spans("pullwake.test"), 10, what="span over host:port")[0]
        instance = span.resource["service.instance.id"]
        assert uuid.UUID(instance) and instance != "127.0.0.1"  # a uuid4 per process
        assert t.shutdown(5)
