"""`--log-format json`: one parseable object per line, trace context when a span is active."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from pullwake.core.logformat import (
    JsonFormatter,
    configure_logging,
    reset_log_fields,
    set_log_fields,
)


@pytest.fixture(autouse=True)
def _fields() -> Iterator[None]:
    reset_log_fields()
    yield
    reset_log_fields()


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            info = sys.exc_info()
    return logging.LogRecord("runner", logging.WARNING, __file__, 1, msg, args, info)


def test_outside_a_span_the_core_fields_only() -> None:
    line = JsonFormatter().format(record("hello %s", "world"))
    out = json.loads(line)
    assert set(out) == {"ts", "level", "logger", "message"}
    assert out["message"] == "hello world" and out["level"] == "warning"
    assert out["logger"] == "runner"
    assert out["ts"].endswith("Z") and "T" in out["ts"] and len(out["ts"]) == 24


def test_inside_a_span_trace_and_span_ids_in_hex_and_the_service_fields() -> None:
    set_log_fields(**{"service.name": "pullwake-runner", "runner.id": "r1"})
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    with tracer.start_as_current_span("s") as span:
        out = json.loads(JsonFormatter().format(record("x")))
    ctx = span.get_span_context()
    assert out["trace_id"] == format(ctx.trace_id, "032x")
    assert out["span_id"] == format(ctx.span_id, "016x")
    assert out["service.name"] == "pullwake-runner" and out["runner.id"] == "r1"


def test_multiline_messages_and_exceptions_stay_one_line() -> None:
    line = JsonFormatter().format(record("two\nlines %r", {"a": object()}, exc=True))
    assert "\n" not in line
    out = json.loads(line)
    assert out["message"].startswith("two\nlines")
    assert "ValueError: boom" in out["exception"]


def test_configure_logging_replaces_its_own_handler(restore_root: None) -> None:
    buf = io.StringIO()
    configure_logging("text", "info", stream=io.StringIO())
    configure_logging("json", "debug", stream=buf)
    root = logging.getLogger()
    ours = [h for h in root.handlers if h.get_name() == "pullwake-log"]
    assert len(ours) == 1 and root.level == logging.DEBUG
    logging.getLogger("pullwake.test").debug("hi")
    assert json.loads(buf.getvalue().splitlines()[-1])["message"] == "hi"
    with pytest.raises(ValueError, match="xml"):
        configure_logging("xml", "info")
    with pytest.raises(ValueError, match="loud"):
        configure_logging("text", "loud")


def test_text_keeps_the_runner_format(restore_root: None) -> None:
    buf = io.StringIO()
    configure_logging("text", "info", stream=buf)
    logging.getLogger("runner").info("claim %s", "w1")
    line = buf.getvalue().strip()
    assert line.endswith(" INFO runner: claim w1"), line
