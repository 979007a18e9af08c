"""End to end: real runner and server processes, OTLP on the wire, real Prometheus.

Scenario (the seed's outage, fixed): stream, kill -9 the server, bring it back
on the same port and database.  The in-process OTLP receiver records what the
runner subprocess really sends; a real Prometheus scrapes the runner's status
listener and the server's `/metrics` meanwhile.  Both paths must tell the
same story, under the catalog's names.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from pullwake.core import catalog as c
from pullwake.core.catalog import CATALOG
from pullwake.core.protocol import EndReason
from pullwake.runner.otel import CONNECT_SPAN, SESSION_SPAN
from tests.support.otlp_receiver import OtlpReceiver, collector_prom_name
from tests.support.procs import RunnerProcess, ServerProcess, running, wait_until
from tests.support.prometheus import PrometheusProcess, needs_prometheus

pytestmark = [pytest.mark.slow, needs_prometheus]

RID = "tel-e2e"


def otel_env(rx: OtlpReceiver) -> dict[str, str]:
    return {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


def runner_points_after(rx: OtlpReceiver, name: str, after_ns: int) -> list[float]:
    return [
        p.value
        for p in sorted(rx.points(name, runner__id=RID), key=lambda p: p.time_ns)
        if p.time_ns > after_ns and p.resource.get("service.name") == "pullwake-runner"
    ]


def test_outage_and_recovery_on_both_paths(tmp_path: Path, receiver: OtlpReceiver) -> None:
    server = ServerProcess(tmp_path, keepalive=0.5, env=otel_env(receiver))
    runner = RunnerProcess(
        tmp_path,
        server.url,
        RID,
        extra=["--heartbeat-interval", "0.5", "--backoff-max", "1", "--connect-timeout", "2"],
        env=otel_env(receiver),
    )
    prom = PrometheusProcess(
        tmp_path,
        scrape={
            "pullwake-runner": [f"127.0.0.1:{runner.status_port}"],
            "pullwake-server": [f"127.0.0.1:{server.port}"],
        },
    )
    with running(prom, server, runner):
        server.start()
        prom.start()
        runner.start()
        wait_until(lambda: runner.status()["state"] == "running.streaming", 15, what="streaming")
        server.publish(RID)
        wait_until(prom.targets_up, 20, interval=0.2, what="both targets scraped")
        # let the first stream age a little, seen by Prometheus
        wait_until(
            lambda: (prom.value(f'{c.STREAM_AGE.prom_name}{{runner_id="{RID}"}}') or 0) > 2.5,
            20,
            interval=0.2,
            what="stream age > 2.5 s in Prometheus",
        )
        age_before = prom.value(f'{c.STREAM_AGE.prom_name}{{runner_id="{RID}"}}')
        assert age_before is not None

        server.stop(signal.SIGKILL)
        q_cf = f'{c.HEARTBEAT_CONSECUTIVE_FAILURES.prom_name}{{runner_id="{RID}"}}'
        wait_until(
            lambda: (prom.value(q_cf) or 0) >= 2,
            15,
            interval=0.2,
            what="Prometheus sees heartbeats failing during the outage",
        )
        server.start()
        back_ns = time.time_ns()
        wait_until(lambda: runner.status()["state"] == "running.streaming", 20, what="recovered")
        status = runner.status()
        first_reason = next(
            r["reason"] for r in status["reconnects"] if r["reason"] != EndReason.ROTATED.value
        )

        # OTLP: the age restarted near zero after recovery
        ages = wait_until(
            lambda: runner_points_after(receiver, c.STREAM_AGE.name, back_ns + 200_000_000),
            15,
            what="OTLP stream age after recovery",
        )
        assert min(ages) < 3.0 < age_before + 3.0, (ages, age_before)

        # Prometheus: the same story under the catalog's names
        q_rec = f'{c.STREAM_RECONNECTS.prom_name}{{runner_id="{RID}",reason="{first_reason}"}}'
        wait_until(lambda: (prom.value(q_rec) or 0) >= 1, 15, interval=0.2, what=q_rec)
        q_fail = f'sum({c.HEARTBEAT_FAILURES.prom_name}{{runner_id="{RID}"}})'
        wait_until(lambda: (prom.value(q_fail) or 0) >= 1, 15, interval=0.2, what=q_fail)
        assert (prom.value(f"max_over_time({q_cf}[5m])") or 0) >= 2
        wait_until(lambda: prom.value(q_cf) == 0, 15, interval=0.2, what="failures reset")
        q_conn = f'{c.STREAM_CONNECTED.prom_name}{{runner_id="{RID}"}}'
        wait_until(lambda: prom.value(q_conn) == 1, 15, interval=0.2, what="connected again")
        q_age = f'{c.STREAM_AGE.prom_name}{{runner_id="{RID}"}}'
        q_age_max = f"max_over_time({q_age}[5m])"
        wait_until(
            lambda: (prom.value(q_age) or 1e9) < (prom.value(q_age_max) or 0) - 1.0,
            15,
            interval=0.2,
            what="Prometheus sees the age restart",
        )
        q_state = f'{c.RUNNER_STATE.prom_name}{{runner_id="{RID}",state="running.streaming"}}'
        assert prom.value(q_state) == 1
        q_open = f'{c.SERVER_STREAMS_OPEN.prom_name}{{runner_id="{RID}",live_mode="sse"}}'
        wait_until(lambda: prom.value(q_open) == 1, 15, interval=0.2, what=q_open)
        q_mis = f'{c.SERVER_STREAM_MISMATCH.prom_name}{{runner_id="{RID}"}}'
        assert prom.value(q_mis) == 0
        scraped = prom.names() | prom.names("http_")  # + the HTTP semantic conventions'

        runner.stop(signal.SIGTERM, timeout=15)
        assert runner.popen is not None and runner.popen.returncode == 0, runner.output()
        server.stop(signal.SIGTERM)

    # Spans: exactly one session span per session
    sessions = [
        s for s in receiver.spans(SESSION_SPAN) if s.resource["service.name"] == "pullwake-runner"
    ]
    numbers = [s.attributes["pullwake.session.number"] for s in sessions]
    assert len(numbers) == len(set(numbers)) == 2, [s.attributes for s in sessions]
    first, second = sorted(sessions, key=lambda s: s.attributes["pullwake.session.number"])
    assert first.attributes["pullwake.end.reason"] == first_reason
    assert EndReason(first_reason).is_failure and first.is_error
    assert first.attributes["runner.id"] == RID and first.attributes["pullwake.live.mode"] == "sse"
    assert first.attributes["pullwake.wakes.received"] >= 1
    assert "pullwake.session.ttfb_s" in first.attributes
    assert second.attributes["pullwake.end.reason"] == EndReason.STOPPED.value
    assert not second.is_error
    # failed connect attempts in between, each with the backoff before it
    connects = receiver.spans(CONNECT_SPAN)
    assert connects and all(
        s.is_error and "pullwake.backoff.wait_s" in s.attributes for s in connects
    )
    # heartbeats are linked to the session they ran in
    heartbeats = receiver.spans("pullwake.heartbeat")
    session_ids = {bytes(s.span.span_id) for s in sessions}
    assert any(bytes(link.span_id) in session_ids for h in heartbeats for link in h.span.links)
    assert any(h.is_error and h.attributes.get("error.type") == "connect" for h in heartbeats)
    # exemplars: heartbeat failures carry the trace id of their heartbeat span
    exemplar_traces = {
        t for p in receiver.points(c.HEARTBEAT_FAILURES.name) for t in p.exemplar_trace_ids
    }
    assert exemplar_traces & {bytes(h.span.trace_id) for h in heartbeats}
    # the server continued the runner's traceparent
    hb_traces = {bytes(h.span.trace_id) for h in heartbeats}
    server_spans = [s for s in receiver.spans() if s.resource["service.name"] == "pullwake-server"]
    assert any(
        s.name.endswith("/heartbeat") and bytes(s.span.trace_id) in hb_traces for s in server_spans
    ), sorted({s.name for s in server_spans})
    # HTTP semantic conventions: the server's SERVER span is a child of the runner's
    # CLIENT span for the same request (what service graphs pair); a refused request
    # is an ERROR CLIENT span named by its exception, without a status code
    clients = {
        bytes(s.span.span_id): s
        for s in receiver.spans()
        if s.resource["service.name"] == "pullwake-runner"
        and s.span.kind == ProtoSpan.SPAN_KIND_CLIENT
        and "http.request.method" in s.attributes
    }
    paired = [s for s in server_spans if bytes(s.span.parent_span_id) in clients]
    assert all(s.span.kind == ProtoSpan.SPAN_KIND_SERVER for s in paired)
    routes = {s.attributes.get("http.route") for s in paired}
    assert "/_electric/runners/{runner_id}/heartbeat" in routes, routes
    refused = [
        c for c in clients.values() if c.attributes.get("error.type") == "ClientConnectorError"
    ]
    assert refused and all(c.is_error for c in refused)
    assert all("http.response.status_code" not in c.attributes for c in refused)
    # OTLP counters agree with what Prometheus saw
    reconnects = receiver.latest(c.STREAM_RECONNECTS.name, runner__id=RID, reason=first_reason)
    assert reconnects is not None and reconnects >= 1
    assert (
        sum(
            receiver.latest(c.HEARTBEAT_FAILURES.name, runner__id=RID, error__type=e) or 0
            for e in c.HEARTBEAT_FAILURES.allowed_values("error.type") or ()
        )
        >= 1
    )

    # Names agree: the collector's translation of every OTLP metric is a scraped series
    for name in receiver.metric_names():
        m = next(x for x in CATALOG if x.name == name)
        translated = collector_prom_name(receiver.metric(name))
        assert translated == m.prom_name, name
        if m.scraped:  # OTLP-only metrics (series budget) are not on /metrics
            assert set(m.prom_series) & scraped, (m.prom_series, sorted(scraped))
        else:
            assert not set(m.prom_series) & scraped, (m.prom_series, sorted(scraped))
