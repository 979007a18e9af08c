"""OpenTelemetry providers for a pullwake service, built in one place.

Why one place: the runner and the server must agree on resource attributes,
on how the standard `OTEL_*` environment is read, on histogram buckets (from
the catalog) and on the Prometheus text their `/metrics` serves.  And the
rule that telemetry never hurts the process lives here too:

- OTLP exporters exist only when configured (an endpoint variable or an
  explicit `OTEL_*_EXPORTER=otlp`), so the embedded default never retries
  against a collector that is not there;
- spans go through a `BatchSpanProcessor` (bounded queue, its own thread),
  metrics through a `PeriodicExportingMetricReader` (its own thread), both
  with export timeouts: nothing here blocks the caller's event loop;
- the exporters' own warnings are rate limited;
- `shutdown()` flushes on a helper thread and gives up after a deadline.

The Prometheus reader writes into a private `CollectorRegistry`, never the
global one, so several providers (tests) can live in one process.  The
environment itself is read by `pullwake.otel_settings` (pure).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from opentelemetry import metrics as metrics_api
from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from pullwake import __version__
from pullwake.catalog import CATALOG, Component, Kind, Metric
from pullwake.otel_settings import (
    OtlpTarget,
    TelemetryConfigError,
    TelemetrySettings,
    settings_from_env,
)

log = logging.getLogger("pullwake.telemetry")

SERVICE_RUNNER: Final = "pullwake-runner"
SERVICE_SERVER: Final = "pullwake-server"
SCOPE: Final = "pullwake"
PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

__all__ = [
    "PROMETHEUS_CONTENT_TYPE",
    "SERVICE_RUNNER",
    "SERVICE_SERVER",
    "Instruments",
    "KeepRootsSampler",
    "OtlpTarget",
    "RateLimitFilter",
    "Telemetry",
    "TelemetryConfigError",
    "TelemetrySettings",
    "build_telemetry",
    "catalog_views",
    "settings_from_env",
]


# --- exporters -----------------------------------------------------------------
def _span_exporter(t: OtlpTarget) -> SpanExporter:
    if t.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=t.endpoint, headers=dict(t.headers), timeout=t.timeout_s)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter(endpoint=t.endpoint, headers=dict(t.headers), timeout=t.timeout_s)


def _metric_exporter(t: OtlpTarget) -> MetricExporter:
    if t.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(endpoint=t.endpoint, headers=dict(t.headers), timeout=t.timeout_s)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter(endpoint=t.endpoint, headers=dict(t.headers), timeout=t.timeout_s)


def _batch(exporter: SpanExporter, settings: TelemetrySettings) -> BatchSpanProcessor:
    b = settings.span_batch
    return BatchSpanProcessor(
        exporter,
        max_queue_size=b.get("max_queue_size"),
        schedule_delay_millis=b.get("schedule_delay_millis"),
        max_export_batch_size=b.get("max_export_batch_size"),
        export_timeout_millis=b.get("export_timeout_millis"),
    )


def catalog_views(component: Component | None = None) -> list[View]:
    """Histogram bucket Views from the catalog (the one place buckets live)."""
    return [
        View(instrument_name=m.name, aggregation=ExplicitBucketHistogramAggregation(m.buckets))
        for m in CATALOG
        if m.kind is Kind.HISTOGRAM
        and m.buckets
        and (component is None or m.component is component)
    ]


# --- rate-limited logging of the SDK's own complaints ---------------------------
class RateLimitFilter(logging.Filter):
    """Let one record per (logger, message template) through per `interval_s`.

    An unreachable collector makes the exporters warn on every retry; that
    must not flood the runner's log.  The next record let through says how
    many were suppressed.
    """

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            if len(self._last) > 256:  # bounded memory whatever the SDK logs
                self._last.clear()
                self._suppressed.clear()
            self._last[key] = now
            dropped = self._suppressed.pop(key, 0)
        if dropped:
            record.msg = f"{record.msg} ({dropped} similar messages suppressed)"
        return True


_LOG_FILTER: Final = RateLimitFilter()


def install_log_rate_limit() -> None:
    """Attach the filter to every OTel logger and ours (filters do not propagate)."""
    import opentelemetry.exporter.otlp.proto.grpc.exporter
    import opentelemetry.exporter.otlp.proto.http._common
    import opentelemetry.sdk._shared_internal  # noqa: F401

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("opentelemetry", "pullwake.telemetry")):
            logger = logging.getLogger(name)
            if _LOG_FILTER not in logger.filters:
                logger.addFilter(_LOG_FILTER)


# --- sampling: the configured sampler, except for a few essential roots -----------
class KeepRootsSampler(Sampler):
    """Always record the named root spans; the configured sampler decides the rest.

    Stream sessions and heartbeats are rare and are what an operator needs
    most; wake traces are many.  So `OTEL_TRACES_SAMPLER=parentbased_traceidratio`
    thins out wake traces without ever losing a session span.
    """

    def __init__(self, names: frozenset[str], base: Sampler) -> None:
        self._names = names
        self._base = base

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if name in self._names:
            parent = trace_api.get_current_span(parent_context).get_span_context()
            if not parent.is_valid:
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, trace_state)
        return self._base.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"KeepRoots{{{','.join(sorted(self._names))}}}+{self._base.get_description()}"


# --- the providers ----------------------------------------------------------------
class Telemetry:
    """Tracer + meter providers and the Prometheus text for one service.

    Tests inject `span_processors` / `metric_readers` (in-memory ones) and
    never touch the global providers; nothing here sets them either.
    """

    def __init__(
        self,
        settings: TelemetrySettings,
        *,
        span_processors: Sequence[SpanProcessor] = (),
        metric_readers: Sequence[MetricReader] = (),
        prometheus: bool = True,
        always_sample: frozenset[str] = frozenset(),
        sampler: Sampler | None = None,
    ) -> None:
        self.settings = settings
        self.enabled = not settings.disabled
        self._registry: Any = None
        self._shutdown_done = False
        if not self.enabled:
            self.tracer_provider: trace_api.TracerProvider = trace_api.NoOpTracerProvider()
            self.meter_provider: metrics_api.MeterProvider = metrics_api.NoOpMeterProvider()
            return
        install_log_rate_limit()
        resource = Resource.create(dict(settings.resource))
        processors = list(span_processors)
        if settings.traces_otlp:
            processors.append(_batch(_span_exporter(settings.traces_otlp), settings))
        if settings.traces_console:
            processors.append(_batch(ConsoleSpanExporter(), settings))
        base = sampler or sampling._get_from_env_or_default()  # OTEL_TRACES_SAMPLER(_ARG)
        tp = TracerProvider(
            resource=resource,
            shutdown_on_exit=False,
            sampler=KeepRootsSampler(always_sample, base) if always_sample else base,
        )
        for p in processors:
            tp.add_span_processor(p)
        readers = list(metric_readers)
        interval_ms = settings.metric_export_interval_s * 1000
        timeout_ms = settings.metric_export_timeout_s * 1000
        if settings.metrics_otlp:
            readers.append(
                PeriodicExportingMetricReader(
                    _metric_exporter(settings.metrics_otlp), interval_ms, timeout_ms
                )
            )
        if settings.metrics_console:
            readers.append(
                PeriodicExportingMetricReader(ConsoleMetricExporter(), interval_ms, timeout_ms)
            )
        if prometheus:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry(auto_describe=False)
            readers.append(PrometheusMetricReader(registry=self._registry))
        self.tracer_provider = tp
        self.meter_provider = MeterProvider(
            resource=resource, metric_readers=readers, views=catalog_views(), shutdown_on_exit=False
        )

    def tracer(self) -> trace_api.Tracer:
        return self.tracer_provider.get_tracer(SCOPE, __version__)

    def meter(self) -> metrics_api.Meter:
        return self.meter_provider.get_meter(SCOPE, __version__)

    @property
    def has_prometheus(self) -> bool:
        return self._registry is not None

    def prometheus_text(self) -> bytes:
        """The Prometheus exposition; collection runs the gauge callbacks (fast)."""
        if self._registry is None:
            return b"# telemetry disabled (OTEL_SDK_DISABLED=true)\n"
        from prometheus_client import generate_latest

        return bytes(generate_latest(self._registry))

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Flush and stop within `timeout_s`; True when everything flushed in time.

        Runs on a daemon thread: an unreachable collector cannot hold the
        process past the deadline.
        """
        if not self.enabled or self._shutdown_done:
            return True
        self._shutdown_done = True
        tp, mp = self.tracer_provider, self.meter_provider
        ms = max(timeout_s * 1000 - 100, 100)

        def run() -> None:
            try:
                if isinstance(tp, TracerProvider):
                    tp.force_flush(int(ms / 2))
                    tp.shutdown()
                if isinstance(mp, MeterProvider):
                    mp.shutdown(timeout_millis=ms / 2)
            except Exception:  # never let telemetry fail the caller's exit
                log.warning("telemetry shutdown failed", exc_info=True)

        t = threading.Thread(target=run, name="pullwake-telemetry-shutdown", daemon=True)
        t.start()
        t.join(timeout_s)
        if t.is_alive():
            log.warning("telemetry did not flush within %.1fs; dropping the rest", timeout_s)
            return False
        return True


def build_telemetry(
    service_name: str,
    instance_id: str,
    version: str = __version__,
    env: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> Telemetry:
    """Settings from the environment, then providers; raises TelemetryConfigError."""
    return Telemetry(settings_from_env(service_name, instance_id, version, env), **kwargs)


# --- instruments from the catalog --------------------------------------------------
GaugeCallback = Callable[[], Iterable[tuple[float, Mapping[str, str]]]]


class Instruments:
    """Every instrument of one component, created once from the catalog.

    Gauges are observable: each needs a callback returning
    `(value, attributes)` pairs, read at collection time.  `add`/`record`
    check attributes against the catalog so no unlisted label sneaks in.

    `counted` names counters whose totals the caller keeps itself (a dict
    increment instead of an SDK measurement through every reader, for
    counters bumped several times per wake): they become observable counters
    with the given callback returning the running totals.  Same name, kind
    and attributes on both export paths.
    """

    def __init__(
        self,
        meter: metrics_api.Meter,
        component: Component,
        gauges: Mapping[str, GaugeCallback],
        counted: Mapping[str, GaugeCallback] | None = None,
    ) -> None:
        counted = counted or {}
        self._sync: dict[str, Any] = {}
        self._observable: dict[str, Any] = {}
        missing = [
            m.name
            for m in CATALOG
            if m.component is component and m.kind is Kind.GAUGE and m.name not in gauges
        ]
        if missing:
            raise ValueError(f"no gauge callback for {', '.join(missing)}")
        for m in CATALOG:
            if m.component is not component:
                continue
            if m.kind is Kind.COUNTER and m.name in counted:
                self._observable[m.name] = meter.create_observable_counter(
                    m.name, [_gauge_adapter(m, counted[m.name])], m.unit, m.description
                )
            elif m.kind is Kind.COUNTER:
                self._sync[m.name] = meter.create_counter(m.name, m.unit, m.description)
            elif m.kind is Kind.UPDOWN:
                self._sync[m.name] = meter.create_up_down_counter(m.name, m.unit, m.description)
            elif m.kind is Kind.HISTOGRAM:
                self._sync[m.name] = meter.create_histogram(
                    m.name, m.unit, m.description, explicit_bucket_boundaries_advisory=m.buckets
                )
            else:
                self._observable[m.name] = meter.create_observable_gauge(
                    m.name, [_gauge_adapter(m, gauges[m.name])], m.unit, m.description
                )

    def check(self, m: Metric, attributes: Mapping[str, str]) -> None:
        """Raise ValueError unless `attributes` are exactly the catalog's for `m`."""
        if tuple(attributes) != m.attributes and set(attributes) != set(m.attributes):
            raise ValueError(f"{m.name}: attributes {sorted(attributes)} != {list(m.attributes)}")

    def checked(self, m: Metric, attributes: Mapping[str, str]) -> Any:
        """The SDK instrument for `m` once `attributes` passed the catalog check.

        For hot paths that bind (instrument, attributes) once and then call
        `add`/`record` on the instrument directly.
        """
        self.check(m, attributes)
        return self._sync[m.name]

    def add(
        self,
        m: Metric,
        amount: float,
        attributes: Mapping[str, str],
        context: Context | None = None,
    ) -> None:
        self.check(m, attributes)
        self._sync[m.name].add(amount, attributes, context=context)

    def record(
        self, m: Metric, value: float, attributes: Mapping[str, str], context: Context | None = None
    ) -> None:
        self.check(m, attributes)
        self._sync[m.name].record(value, attributes, context=context)


def _gauge_adapter(
    m: Metric, cb: GaugeCallback
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        try:
            return [Observation(v, dict(a)) for v, a in cb()]
        except Exception:  # a broken snapshot must not break the other gauges
            log.warning("gauge %s callback failed", m.name, exc_info=True)
            return []

    return observe
