"""OpenTelemetry providers for a pullwake service, built in one place.

Why one place: the runner and the server must agree on resource attributes,
on how the standard `OTEL_*` environment is read, on histogram buckets (from
the catalog) and on the Prometheus text their `/metrics` serves.  And the
rule that telemetry never hurts the process lives here too:

- OTLP exporters exist only when configured (an endpoint variable or an
  explicit `OTEL_*_EXPORTER=otlp`), so the embedded default never retries
  against a collector that is not there;
- spans go through a `BatchSpanProcessor` (bounded queue, its own thread),
  metrics through a `PeriodicExportingMetricReader` (its own thread), log
  records (`OTEL_LOGS_EXPORTER=otlp`) through a `BatchLogRecordProcessor`
  (bounded queue, its own thread), all with export timeouts: nothing here
  blocks the caller's event loop;
- the exporters' own warnings are rate limited;
- `shutdown()` flushes on a helper thread and gives up after a deadline.

The Prometheus reader writes into a private `CollectorRegistry`, never the
global one, so several providers (tests) can live in one process.  The
SDK reads the standard `OTEL_*` variables itself (exporters are built
without arguments); `pullwake.core.otel_settings` holds pullwake's own
rules on top.  The catalog's instruments live in `pullwake.core.instruments`,
the log rate limit in `pullwake.core.otel_logging` (both re-exported here),
log export in `pullwake.core.otel_logs`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import metrics as metrics_api
from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
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
from pullwake.core.instruments import (
    GaugeCallback,
    Instruments,
    catalog_views,
    otlp_preferred_aggregation,
    scrape_reader,
)
from pullwake.core.otel_logging import RateLimitFilter, install_log_rate_limit
from pullwake.core.otel_settings import (
    TelemetryConfigError,
    TelemetrySettings,
    otel_environment,
    settings_from_env,
)

if TYPE_CHECKING:
    from pullwake.core.otel_logs import LoggerProvider

log = logging.getLogger("pullwake.core.telemetry")

SERVICE_RUNNER: Final = "pullwake-runner"
SERVICE_SERVER: Final = "pullwake-server"
SCOPE: Final = "pullwake"
PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

__all__ = [
    "PROMETHEUS_CONTENT_TYPE",
    "SERVICE_RUNNER",
    "SERVICE_SERVER",
    "GaugeCallback",
    "Instruments",
    "KeepRootsSampler",
    "RateLimitFilter",
    "Telemetry",
    "TelemetryConfigError",
    "TelemetrySettings",
    "build_telemetry",
    "catalog_views",
    "settings_from_env",
]


# --- exporters: constructed bare, so the SDK reads OTEL_EXPORTER_OTLP_* itself ----------
def _span_exporter(protocol: str) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter()


def _metric_exporter(protocol: str) -> MetricExporter:
    # histograms exponential unless OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION
    # is set (the series budget: one native histogram series each)
    preferred = otlp_preferred_aggregation()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(preferred_aggregation=preferred)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter(preferred_aggregation=preferred)


def _env_sampler() -> Sampler:
    """The sampler the SDK picks from OTEL_TRACES_SAMPLER(_ARG), by public API only."""
    return TracerProvider(resource=Resource.get_empty(), shutdown_on_exit=False).sampler


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
        self.resource = settings.resource
        self.enabled = not settings.disabled
        self._registry: Any = None
        self._shutdown_done = False
        self.logger_provider: LoggerProvider | None = None
        self._log_handler: logging.Handler | None = None
        if not self.enabled:
            self.tracer_provider: trace_api.TracerProvider = trace_api.NoOpTracerProvider()
            self.meter_provider: metrics_api.MeterProvider = metrics_api.NoOpMeterProvider()
            return
        install_log_rate_limit()
        resource = settings.resource
        # Exporters, batch processors and readers are built bare: the SDK reads
        # OTEL_EXPORTER_OTLP_*, OTEL_BSP_*, OTEL_METRIC_EXPORT_* itself.
        processors = list(span_processors)
        if settings.traces_otlp:
            processors.append(BatchSpanProcessor(_span_exporter(settings.traces_otlp)))
        if "traces" in settings.console:
            processors.append(BatchSpanProcessor(ConsoleSpanExporter()))
        base = sampler or _env_sampler()
        tp = TracerProvider(
            resource=resource,
            shutdown_on_exit=False,
            sampler=KeepRootsSampler(always_sample, base) if always_sample else base,
        )
        for p in processors:
            tp.add_span_processor(p)
        readers = list(metric_readers)
        if settings.metrics_otlp:
            readers.append(PeriodicExportingMetricReader(_metric_exporter(settings.metrics_otlp)))
        if "metrics" in settings.console:
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        if prometheus:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry(auto_describe=False)
            readers.append(scrape_reader(self._registry))  # OTLP-only metrics left out
        self.tracer_provider = tp
        self.meter_provider = MeterProvider(
            resource=resource, metric_readers=readers, views=catalog_views(), shutdown_on_exit=False
        )
        if settings.logs_otlp or "logs" in settings.console:
            from pullwake.core.otel_logs import build_logger_provider

            self.logger_provider = build_logger_provider(
                resource, settings.logs_otlp, "logs" in settings.console
            )

    def attach_logs(self, logger: logging.Logger | None = None) -> None:
        """Export `logger`'s records (default: the root's) when log export is on,
        and name this service in every JSON log line (service.name, instance)."""
        from pullwake.core.logformat import set_log_fields

        attrs = self.resource.attributes
        set_log_fields(
            **{k: str(attrs[k]) for k in ("service.name", "service.instance.id") if k in attrs}
        )
        if self.logger_provider is None or self._log_handler is not None:
            return
        from pullwake.core.otel_logs import OtlpLogHandler

        self._log_handler = OtlpLogHandler(self.logger_provider)
        self._log_logger = logger or logging.getLogger()
        self._log_logger.addHandler(self._log_handler)

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
        tp, mp, lp = self.tracer_provider, self.meter_provider, self.logger_provider
        if self._log_handler is not None:  # no record may reach a provider shut down
            self._log_logger.removeHandler(self._log_handler)
            self._log_handler = None
        ms = max(timeout_s * 1000 - 100, 100)
        share = ms / (3 if lp is not None else 2)

        def run() -> None:
            try:
                if isinstance(tp, TracerProvider):
                    tp.force_flush(int(share))
                    tp.shutdown()
                if lp is not None:
                    lp.force_flush(int(share))
                    lp.shutdown()
                if isinstance(mp, MeterProvider):
                    mp.shutdown(timeout_millis=share)
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
    instance_id: str | None = None,
    version: str = __version__,
    env: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> Telemetry:
    """Settings from the environment, then providers; raises TelemetryConfigError.

    `env` (tests) replaces the process's `OTEL_*` variables for the SDK too,
    while it builds.  `instance_id` None: the SDK's per-process uuid4.
    """
    with otel_environment(env):
        settings = settings_from_env(service_name, instance_id, version)
        try:
            return Telemetry(settings, **kwargs)
        except ValueError as exc:  # the SDK refusing a combination (e.g. batch > queue)
            raise TelemetryConfigError(str(exc).splitlines()[0]) from None
