"""End to end: `--log-format json` and OTLP logs from real processes.

A real `pullwake server` and `pullwake run`, OTLP/gRPC to the in-process
receiver (traces and logs).  Every line the runner writes is one JSON object;
the line it logs while handling a wake carries the trace and span id of a span
it exported, and the same record arrives over OTLP with the same ids.  The
server is configured by `PULLWAKE_*` variables only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.otlp_receiver import OtlpReceiver
from tests.support.procs import (
    RunnerProcess,
    ServerProcess,
    free_port,
    http_json,
    running,
    wait_until,
)

pytestmark = pytest.mark.slow

RID = "logs-e2e"
CORE = {"ts", "level", "logger", "message"}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


def otel_env(rx: OtlpReceiver) -> dict[str, str]:
    return {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_BLRP_SCHEDULE_DELAY": "100",
    }


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line as a JSON object (fails on the first one that is not)."""
    out = []
    for line in text.splitlines():
        if line.strip():
            obj = json.loads(line)
            assert isinstance(obj, dict) and set(obj) >= CORE, line
            out.append(obj)
    return out


def test_runner_json_lines_and_otlp_logs_carry_the_trace_of_exported_spans(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    server = ServerProcess(tmp_path, keepalive=0.5)
    runner = RunnerProcess(
        tmp_path,
        server.url,
        RID,
        extra=["--log-format", "json", "--heartbeat-interval", "0.5"],
        env=otel_env(receiver),
    )
    with running(server, runner):
        server.start()
        runner.start()
        wait_until(lambda: runner.status()["state"] == "running.streaming", 15, what="streaming")
        sent = server.publish(RID)

        def claim_line() -> dict[str, Any] | None:
            for obj in json_lines(runner.output()):
                if "no handler configured" in obj["message"] and sent["stream"] in obj["message"]:
                    return obj
            return None

        line = wait_until(claim_line, 15, what="the runner's claim log line")
        assert line["level"] == "info" and line["logger"] == "runner"
        assert line["runner.id"] == RID and line["service.name"] == "pullwake-runner"
        assert len(line["trace_id"]) == 32 and len(line["span_id"]) == 16
        # the ids are those of a span the runner exported (the wake's handle step)
        span = wait_until(
            lambda: [
                s
                for s in receiver.spans()
                if s.span.trace_id.hex() == line["trace_id"]
                and s.span.span_id.hex() == line["span_id"]
            ],
            15,
            what="the exported span of the log line",
        )[0]
        assert span.resource["service.name"] == "pullwake-runner"
        # ... and the same record went over OTLP with the same ids
        record = wait_until(
            lambda: receiver.logs("no handler configured"), 15, what="OTLP log record"
        )[0]
        assert (record.trace_id, record.span_id) == (line["trace_id"], line["span_id"])
        assert record.resource["service.instance.id"] == RID
        assert record.severity == "INFO"
    # SIGTERM: the last lines are JSON too (nothing printed around the handler)
    lines = json_lines(runner.output())
    assert lines[-1]["message"].startswith("stopping -> stopped")


def test_server_configured_by_pullwake_variables_logs_json(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    """`pullwake server` with no options at all: port, db, log format and level
    from PULLWAKE_*; its log lines (stderr) are JSON naming a unique instance."""
    port = free_port()
    db = tmp_path / "env.db"
    env = dict(
        os.environ,
        **otel_env(receiver),
        PULLWAKE_SERVER_PORT=str(port),
        PULLWAKE_SERVER_DB=str(db),
        PULLWAKE_LOG_FORMAT="json",
        PULLWAKE_LOG_LEVEL="info",
    )
    err_path = tmp_path / "server.err"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pullwake", "server"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_until(
            lambda: http_json("GET", f"http://127.0.0.1:{port}/healthz", timeout=1)[0] == 200,
            15,
            what="server on the port from PULLWAKE_SERVER_PORT",
        )
        assert db.exists()
        lines = wait_until(lambda: json_lines(err_path.read_text()), 10, what="a log line")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    first = lines[0]
    assert "listening" in first["message"] and first["service.name"] == "pullwake-server"
    instance = first["service.instance.id"]
    assert uuid.UUID(instance).version == 4  # not host:port
    record = wait_until(lambda: receiver.logs("listening"), 10, what="OTLP server log")[0]
    assert record.resource["service.instance.id"] == instance
    json_lines(err_path.read_text())  # every line, shutdown included
