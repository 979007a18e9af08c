"""OTLP log export: the SDK's LoggerProvider behind a small `logging` handler.

The Python logs signal is still published under `opentelemetry._logs` /
`opentelemetry.sdk._logs` (its documented import path); this module is the
only place pullwake imports it, so a rename upstream is a one-file change.
The SDK's own `LoggingHandler` is deprecated in favour of a separate
instrumentation package; the translation needed here is a dozen lines.

Never blocking: `emit` only appends to the `BatchLogRecordProcessor`'s
bounded queue (`OTEL_BLRP_MAX_QUEUE_SIZE`, default 2048; full = dropped),
and the export runs on the processor's thread.  Records from the SDK, the
exporters and gRPC themselves are not exported: a failing export would
otherwise log about itself into the queue it is failing to drain.
"""

from __future__ import annotations

import logging
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    ConsoleLogRecordExporter,
    LogRecordExporter,
)
from opentelemetry.sdk.resources import Resource

from pullwake import __version__

__all__ = ["LoggerProvider", "OtlpLogHandler", "build_logger_provider"]

_SEVERITY: Final = (
    (logging.CRITICAL, SeverityNumber.FATAL, "FATAL"),
    (logging.ERROR, SeverityNumber.ERROR, "ERROR"),
    (logging.WARNING, SeverityNumber.WARN, "WARN"),
    (logging.INFO, SeverityNumber.INFO, "INFO"),
    (logging.DEBUG, SeverityNumber.DEBUG, "DEBUG"),
)
_NOT_EXPORTED: Final = ("opentelemetry", "grpc", "urllib3")


def _log_exporter(protocol: str) -> LogRecordExporter:
    """Endpoint, headers, timeout, TLS: all from `OTEL_EXPORTER_OTLP_*`, read by the SDK."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        return OTLPLogExporter()
    from opentelemetry.exporter.otlp.proto.http._log_exporter import (
        OTLPLogExporter as HttpLogExporter,
    )

    return HttpLogExporter()


def build_logger_provider(
    resource: Resource, otlp_protocol: str | None, console: bool
) -> LoggerProvider | None:
    """A provider with one batch processor per configured exporter, or None."""
    if otlp_protocol is None and not console:
        return None
    provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    if otlp_protocol is not None:
        provider.add_log_record_processor(BatchLogRecordProcessor(_log_exporter(otlp_protocol)))
    if console:
        provider.add_log_record_processor(BatchLogRecordProcessor(ConsoleLogRecordExporter()))
    return provider


class OtlpLogHandler(logging.Handler):
    """`logging` records -> OTel log records (trace context from the active span)."""

    def __init__(self, provider: LoggerProvider, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.provider = provider

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(_NOT_EXPORTED):
            return
        try:
            number, text = SeverityNumber.TRACE, "TRACE"
            for levelno, number_, text_ in _SEVERITY:
                if record.levelno >= levelno:
                    number, text = number_, text_
                    break
            attributes: dict[str, str | int] = {
                "code.function.name": record.funcName,
                "code.line.number": record.lineno,
                "logger.name": record.name,
            }
            if record.exc_info and record.exc_info[0] is not None:
                attributes["exception.type"] = record.exc_info[0].__name__
                attributes["exception.stacktrace"] = logging.Formatter().formatException(
                    record.exc_info
                )
            self.provider.get_logger(record.name, __version__).emit(
                timestamp=int(record.created * 1e9),
                context=otel_context.get_current(),
                severity_number=number,
                severity_text=text,
                body=record.getMessage(),
                attributes=attributes,
            )
        except Exception:  # a log export problem never becomes the caller's problem
            self.handleError(record)
