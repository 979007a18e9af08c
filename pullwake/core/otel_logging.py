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


def install_log_rate_limit() -> None:
    """Attach the filter to every OTel logger and ours (filters do not propagate)."""
    import opentelemetry.exporter.otlp.proto.grpc.exporter
    import opentelemetry.exporter.otlp.proto.http._common
    import opentelemetry.sdk._shared_internal  # noqa: F401

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("opentelemetry", "pullwake.core.telemetry")):
            logger = logging.getLogger(name)
            if _LOG_FILTER not in logger.filters:
                logger.addFilter(_LOG_FILTER)
