"""Rate limiting for OpenTelemetry's own log output.

Split from `pullwake.telemetry`: an unreachable collector makes the SDK's
exporters warn on every retry, and that must not flood the service's log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final


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
# Loggers that warn on every failed export or dropped item.  Named, not
# imported: several live in private SDK modules, and `getLogger(name)` made
# now is the very object the module gets when it is imported later.
OTEL_EXPORT_LOGGERS: Final = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
    "opentelemetry.exporter.otlp.proto.grpc._log_exporter",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http._log_exporter",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.metrics._internal.export",
    "opentelemetry.sdk._logs._internal",
    "pullwake.core.telemetry",
)


def install_log_rate_limit() -> None:
    """Attach the filter to every OTel logger and ours (filters do not propagate)."""
    names = set(OTEL_EXPORT_LOGGERS)
    names.update(n for n in list(logging.root.manager.loggerDict) if n.startswith("opentelemetry"))
    for name in names:
        logger = logging.getLogger(name)
        if _LOG_FILTER not in logger.filters:
            logger.addFilter(_LOG_FILTER)
