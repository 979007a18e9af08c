"""The process's log output: `--log-format text|json` and `--log-level`, for every command.

JSON is one object per line on stderr, so a log shipper (Loki's promtail,
the collector's filelog receiver, `docker logs`) needs no multiline rules:
`ts` (RFC 3339 UTC, milliseconds), `level`, `logger`, `message`, then
`trace_id` / `span_id` (lowercase hex, as in `traceparent` and Tempo) when a
span is active, then the fields the command knows about itself
(`service.name`, `service.instance.id`, `runner.id`), then `exception`.
Text keeps the format `pullwake run` always had (`chaos_record` reads it).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Final, TextIO

from opentelemetry import trace

FORMATS: Final = ("text", "json")
LEVELS: Final = ("debug", "info", "warning", "error")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_FIELDS: dict[str, str] = {}  # service.name, service.instance.id, runner.id, ...


def set_log_fields(**fields: str) -> None:
    """Fields every JSON line carries from now on (keys may contain dots: pass **{...})."""
    _FIELDS.update({k: v for k, v in fields.items() if v})


def log_fields() -> dict[str, str]:
    return dict(_FIELDS)


def reset_log_fields() -> None:
    """Forget every field (tests; a process sets them once)."""
    _FIELDS.clear()


def trace_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the active span, as lowercase hex; None outside a span."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, one line, never raising on odd arguments."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        ids = trace_ids()
        if ids is not None:
            out["trace_id"], out["span_id"] = ids
        out.update(_FIELDS)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, ensure_ascii=False, default=str)


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)


_HANDLER_NAME: Final = "pullwake-log"


def configure_logging(
    fmt: str = "text", level: str = "info", stream: TextIO | None = None
) -> logging.Handler:
    """Install the one stderr handler on the root logger (replacing an earlier one).

    Idempotent, so a command may call it again with what it learns later.
    The OTel exporters' own warnings are rate limited on this handler too,
    whatever logger they come from.
    """
    from pullwake.core.otel_logging import RateLimitFilter

    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: want {' or '.join(FORMATS)}")
    if level.lower() not in LEVELS:
        raise ValueError(f"log level {level!r}: want {', '.join(LEVELS)}")
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == _HANDLER_NAME:
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else _TextFormatter())
    handler.addFilter(_OtelOnly(RateLimitFilter()))  # own state: loggers filter too
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler


class _OtelOnly(logging.Filter):
    """Apply the export-warning rate limit to OTel's own records only."""

    def __init__(self, inner: logging.Filter) -> None:
        super().__init__()
        self.inner = inner

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("opentelemetry"):
            return bool(self.inner.filter(record))
        return True
