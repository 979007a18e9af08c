"""An in-process OTLP/gRPC receiver that records what exporters really send.

Built on `opentelemetry-proto`'s generated gRPC services because the
collector binary cannot run here.  It listens on a real loopback port, so
whatever talks to it (a runner subprocess, an in-process exporter) goes
through the real OTLP/gRPC path.  It also knows the collector's OTLP ->
Prometheus name translation, so tests can compare both metric paths.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status


def any_value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    return getattr(v, kind)


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs if isinstance(kv, KeyValue)}


@dataclass(frozen=True)
class RecordedSpan:
    span: Span
    resource: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.span.name)

    @property
    def attributes(self) -> dict[str, Any]:
        return attrs(self.span.attributes)

    @property
    def is_error(self) -> bool:
        return bool(self.span.status.code == Status.STATUS_CODE_ERROR)

    @property
    def events(self) -> list[str]:
        return [e.name for e in self.span.events]


@dataclass(frozen=True)
class RecordedLog:
    record: LogRecord
    resource: dict[str, Any]
    scope: str

    @property
    def body(self) -> Any:
        return any_value(self.record.body)

    @property
    def severity(self) -> str:
        return str(self.record.severity_text)

    @property
    def trace_id(self) -> str:
        """Lowercase hex, empty when the record was made outside a span."""
        return bytes(self.record.trace_id).hex()

    @property
    def span_id(self) -> str:
        return bytes(self.record.span_id).hex()

    @property
    def attributes(self) -> dict[str, Any]:
        return attrs(self.record.attributes)


@dataclass(frozen=True)
class RecordedPoint:
    metric: Metric
    resource: dict[str, Any]
    attributes: dict[str, Any]
    time_ns: int
    value: float  # gauge/sum value, histogram count (explicit or exponential)
    exemplar_trace_ids: tuple[bytes, ...]


class OtlpReceiver:
    """Start with `with OtlpReceiver() as rx:`; `rx.endpoint` is its URL."""

    def __init__(self, host: str = "127.0.0.1", delay_s: float = 0.0) -> None:
        self.delay_s = delay_s  # > 0: a slow collector, each export answered this late
        self.calls = 0  # exports started (a slow collector may still be holding them)
        self._lock = threading.Lock()
        self._spans: list[RecordedSpan] = []
        self._points: list[RecordedPoint] = []
        self._logs: list[RecordedLog] = []
        self.requests = 0
        self._server = grpc.server(ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(self), self._server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(self), self._server)
        self.port = self._server.add_insecure_port(f"{host}:0")
        self.endpoint = f"http://{host}:{self.port}"

    def __enter__(self) -> OtlpReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)

    # --- recording (called on gRPC worker threads) ---
    def _add_spans(self, req: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self._lock:
            self.requests += 1
            for rs in req.resource_spans:
                res = attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    self._spans.extend(RecordedSpan(s, res) for s in ss.spans)

    def _add_metrics(self, req: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        with self._lock:
            self.requests += 1
            for rm in req.resource_metrics:
                res = attrs(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        self._points.extend(_points(m, res))

    def _add_logs(self, req: logs_service_pb2.ExportLogsServiceRequest) -> None:
        with self._lock:
            self.requests += 1
            for rl in req.resource_logs:
                res = attrs(rl.resource.attributes)
                for sl in rl.scope_logs:
                    self._logs.extend(RecordedLog(r, res, sl.scope.name) for r in sl.log_records)

    # --- reading ---
    def logs(self, contains: str | None = None) -> list[RecordedLog]:
        """Every exported log record (whose body contains `contains`)."""
        with self._lock:
            out = list(self._logs)
        return [r for r in out if contains is None or contains in str(r.body)]

    def spans(self, name: str | None = None) -> list[RecordedSpan]:
        with self._lock:
            return [s for s in self._spans if name is None or s.name == name]

    def points(self, name: str, **match: Any) -> list[RecordedPoint]:
        """Every exported data point of `name` whose attributes include `match`."""
        match = {k.replace("__", "."): v for k, v in match.items()}
        with self._lock:
            pts = [p for p in self._points if p.metric.name == name]
        return [p for p in pts if all(p.attributes.get(k) == v for k, v in match.items())]

    def latest(self, name: str, **match: Any) -> float | None:
        pts = self.points(name, **match)
        return max(pts, key=lambda p: p.time_ns).value if pts else None

    def metric_names(self) -> set[str]:
        with self._lock:
            return {p.metric.name for p in self._points}

    def metric(self, name: str) -> Metric:
        with self._lock:
            for p in self._points:
                if p.metric.name == name:
                    return p.metric
        raise KeyError(name)


def _points(m: Metric, res: dict[str, Any]) -> Iterator[RecordedPoint]:
    kind = m.WhichOneof("data")
    data = getattr(m, kind)
    for dp in data.data_points:
        if kind in ("histogram", "exponential_histogram"):
            value = float(dp.count)
        else:
            value = float(dp.as_double if dp.WhichOneof("value") == "as_double" else dp.as_int)
        ex = tuple(bytes(e.trace_id) for e in dp.exemplars if e.trace_id)
        yield RecordedPoint(m, res, attrs(dp.attributes), int(dp.time_unix_nano), value, ex)


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, rx: OtlpReceiver) -> None:
        self.rx = rx

    def Export(self, request: Any, context: Any) -> Any:
        self.rx.calls += 1
        time.sleep(self.rx.delay_s)
        self.rx._add_spans(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, rx: OtlpReceiver) -> None:
        self.rx = rx

    def Export(self, request: Any, context: Any) -> Any:
        self.rx.calls += 1
        time.sleep(self.rx.delay_s)
        self.rx._add_metrics(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, rx: OtlpReceiver) -> None:
        self.rx = rx

    def Export(self, request: Any, context: Any) -> Any:
        self.rx.calls += 1
        time.sleep(self.rx.delay_s)
        self.rx._add_logs(request)
        return logs_service_pb2.ExportLogsServiceResponse()


# --- the collector's OTLP -> Prometheus naming (prometheus exporter, OTLP ingest) ---
_UNITS = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": "ratio"}


def collector_prom_name(m: Metric) -> str:
    """The name a collector's `prometheus` exporter gives an OTLP metric.

    Written from the translation rules (dots -> underscores, unit suffix,
    `{annotations}` dropped, `_ratio` for unit 1 on gauges, `_total` for
    monotonic sums), independently of `pullwake.catalog.Metric.prom_name`.
    """
    name = re.sub(r"[^a-zA-Z0-9_:]", "_", m.name)
    unit = re.sub(r"\{[^}]*\}", "", m.unit)
    kind = m.WhichOneof("data")
    suffix = _UNITS.get(unit, unit)
    if unit == "1" and kind != "gauge":
        suffix = ""
    if suffix and not name.endswith("_" + suffix):
        name = f"{name}_{suffix}"
    if kind == "sum" and m.sum.is_monotonic and not name.endswith("_total"):
        name += "_total"
    return name
