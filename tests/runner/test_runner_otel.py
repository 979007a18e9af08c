"""`runner.otel.OtelRunnerObserver` driven through the observer seam.

The observer is fed the calls the runner makes (no runner process here: the
end-to-end tests in test_e2e_*.py do that); spans land in an in-memory
exporter, metrics are read from the real Prometheus text, and traceparent
propagation goes over a real loopback HTTP request.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from aiohttp import ClientSession, web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from pullwake.core.catalog import CATALOG
from pullwake.core.protocol import (
    CallbackOutcome,
    ClaimResult,
    EndReason,
    HeartbeatErrorType,
    HeartbeatOutcome,
    LiveMode,
    RunnerState,
    WakeOutcome,
)
from pullwake.core.telemetry import SERVICE_RUNNER, Telemetry, build_telemetry
from pullwake.runner.observe import Observers, RunnerSnapshot, SessionInfo, Transition
from pullwake.runner.otel import CONNECT_SPAN, SESSION_SPAN, WAKE_SPAN, OtelRunnerObserver
from tests.support.fakeserver import serving


class Rig:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.telemetry: Telemetry = build_telemetry(
            SERVICE_RUNNER, "r1", env={}, span_processors=[SimpleSpanProcessor(self.spans)]
        )
        self.obs = OtelRunnerObserver(self.telemetry, "r1")

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if name is None or s.name == name]

    def sample(self, metric: str, **labels: str) -> float | None:
        text = self.telemetry.prometheus_text().decode()
        for line in text.splitlines():
            m = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
            if not m or m.group(1) != metric:
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            if all(got.get(k) == v for k, v in labels.items()):
                return float(m.group(3))
        return None


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.telemetry.shutdown(2)


def session(n: int, **kw: object) -> SessionInfo:
    base: dict[str, object] = {
        "number": n,
        "mode": LiveMode.SSE,
        "start_offset": "0000000000000001_0000000000000000",
        "started_at": time.time(),
    }
    base.update(kw)
    return SessionInfo(**base)  # type: ignore[arg-type]


def test_one_span_per_session_failure_is_error_with_detector_event(rig: Rig) -> None:
    s1 = session(1)
    rig.obs.session_started(s1)
    t0 = s1.started_at
    rig.obs.session_connected(session(1, started_at=t0, connected_at=t0 + 0.01))
    rig.obs.detector_fired(s1, "idle_timeout", {"idle_s": 3.1, "limit_s": 3.0})
    rig.obs.transition(
        Transition(
            RunnerState.STREAMING, RunnerState.RECONNECTING, "StreamEnded", EndReason.IDLE_TIMEOUT
        )
    )
    rig.obs.session_ended(
        session(
            1,
            started_at=t0,
            connected_at=t0 + 0.01,
            first_byte_at=t0 + 0.4,  # the body's first byte, well after the headers
            ended_at=t0 + 5,
            end_offset="0000000000000001_0000000000000007",
            wakes_received=7,
            reason=EndReason.IDLE_TIMEOUT,
            error="no byte for 3.0s",
        )
    )
    (span,) = rig.finished(SESSION_SPAN)
    a = dict(span.attributes or {})
    assert a["runner.id"] == "r1" and a["pullwake.session.number"] == 1
    assert a["pullwake.live.mode"] == "sse"
    assert a["pullwake.offset.end"].endswith("07") and a["pullwake.wakes.received"] == 7
    assert a["pullwake.end.reason"] == "idle_timeout"
    assert a["pullwake.session.ttfb_s"] == pytest.approx(0.4, abs=1e-3)
    assert a["pullwake.session.connect_s"] == pytest.approx(0.01, abs=1e-3)
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events].count("detector.idle_timeout") == 1
    assert span.end_time is not None and span.start_time is not None
    assert (span.end_time - span.start_time) / 1e9 == pytest.approx(5, abs=0.01)
    assert rig.sample("pullwake_stream_reconnects_total", reason="idle_timeout") == 1


def test_failed_connect_is_its_own_span_with_the_backoff_before_it(rig: Rig) -> None:
    rig.obs.backoff_wait(2.0, 3, EndReason.CONNECT_ERROR)
    s = session(4)
    rig.obs.session_started(s)
    rig.obs.session_ended(
        session(4, started_at=s.started_at, ended_at=time.time(), reason=EndReason.CONNECT_ERROR)
    )
    assert rig.finished(SESSION_SPAN) == []
    (span,) = rig.finished(CONNECT_SPAN)
    a = dict(span.attributes or {})
    assert a["pullwake.backoff.wait_s"] == 2.0 and a["pullwake.backoff.tries"] == 3
    assert a["pullwake.backoff.after_reason"] == "connect_error"
    assert span.status.status_code is StatusCode.ERROR


def test_stopped_session_is_not_an_error(rig: Rig) -> None:
    s = session(1, connected_at=time.time())
    rig.obs.session_started(s)
    rig.obs.session_ended(
        session(
            1,
            started_at=s.started_at,
            connected_at=s.connected_at,
            ended_at=time.time(),
            reason=EndReason.STOPPED,
        )
    )
    (span,) = rig.finished(SESSION_SPAN)
    assert span.status.status_code is not StatusCode.ERROR
    # connected, but no body byte before the stop: no time to first byte
    assert "pullwake.session.ttfb_s" not in (span.attributes or {})


def test_heartbeat_span_links_to_session_and_counts_failures(rig: Rig) -> None:
    rig.obs.session_started(session(1))
    session_ctx = rig.obs._current.get_span_context()  # type: ignore[union-attr]
    with rig.obs.span("heartbeat", {"attempt": 1}):
        rig.obs.heartbeat(HeartbeatOutcome.FAILED, 0.004, HeartbeatErrorType.CONNECT)
    with rig.obs.span("heartbeat", {}):
        rig.obs.heartbeat(HeartbeatOutcome.OK, 0.002, None)
    hb = rig.finished("pullwake.heartbeat")
    assert len(hb) == 2
    assert [link.context.span_id for link in hb[0].links] == [session_ctx.span_id]
    assert hb[0].status.status_code is StatusCode.ERROR
    assert dict(hb[0].attributes or {})["error.type"] == "connect"
    assert rig.sample("pullwake_heartbeat_failures_total", error_type="connect") == 1
    assert dict(hb[1].attributes or {})["pullwake.heartbeat.outcome"] == "ok"


def test_wake_claim_handle_complete_share_one_trace(rig: Rig) -> None:
    rig.obs.session_started(session(1))
    rig.obs.wake(WakeOutcome.RECEIVED, "w1")
    with rig.obs.span("claim", {"wake_id": "w1"}):
        pass
    with rig.obs.span("handle", {"wake_id": "w1"}):
        pass
    rig.obs.wake(WakeOutcome.HANDLED, "w1", 0.05)
    with rig.obs.span("complete", {"wake_id": "w1"}):
        pass
    (root,) = rig.finished(WAKE_SPAN)
    steps = {s.name: s for s in rig.finished() if s.name.startswith(WAKE_SPAN + ".")}
    assert set(steps) == {f"{WAKE_SPAN}.claim", f"{WAKE_SPAN}.handle", f"{WAKE_SPAN}.complete"}
    for s in steps.values():
        assert s.parent is not None and s.parent.span_id == root.context.span_id
        assert s.context.trace_id == root.context.trace_id
        # the ids live on the root only (cost: see runner.otel_wakes)
        assert not s.attributes
    assert dict(root.attributes or {})["pullwake.wake.id"] == "w1"
    assert dict(root.attributes or {})["runner.id"] == "r1"
    assert root.links  # linked to the session that received it
    # final outcomes only (series budget): received and claimed are steps of the span
    assert rig.sample("pullwake_wakes_total", outcome="received") is None
    assert rig.sample("pullwake_wakes_total", outcome="handled") == 1
    assert rig.sample("pullwake_wake_latency_seconds_count") == 1
    # a skipped wake ends its span too
    rig.obs.wake(WakeOutcome.RECEIVED, "w2")
    rig.obs.wake(WakeOutcome.SKIPPED, "w2")
    assert len(rig.finished(WAKE_SPAN)) == 2


def test_a_lost_claim_is_a_fenced_wake(rig: Rig) -> None:
    """Claim answers and callback requests have no metric of their own (each is a
    request in http.client.request.duration); a fenced claim counts as a `fenced`
    wake and ends its wake span as an error."""
    for result in (ClaimResult.FAILED, ClaimResult.NOT_RUNNING, ClaimResult.CLAIMED):
        rig.obs.claim_result(result)
    rig.obs.claim_result(ClaimResult.DONE)
    rig.obs.claim_result(ClaimResult.SKIPPED)
    for _ in range(3):
        rig.obs.callback_heartbeat(CallbackOutcome.OK, 0.002)
    rig.obs.callback_heartbeat(CallbackOutcome.FENCED, 0.002)
    rig.obs.completion(CallbackOutcome.OK, 0.004)
    rig.obs.completion(CallbackOutcome.FENCED, 0.004)
    families = set(re.findall(r"^# TYPE (\w+) ", rig.telemetry.prometheus_text().decode(), re.M))
    assert families <= {m.prom_name for m in CATALOG} | {"target_info"}, families
    with rig.obs.span("claim", {"wake_id": "s1#1"}):
        pass
    rig.obs.wake(WakeOutcome.FENCED, "s1#1")
    (root,) = rig.finished(WAKE_SPAN)
    assert dict(root.attributes or {})["pullwake.wake.outcome"] == "fenced"
    assert root.status.status_code is StatusCode.ERROR
    assert rig.sample("pullwake_wakes_total", outcome="fenced") == 1
    rig.obs.wake(WakeOutcome.DEFERRED, None)
    assert rig.sample("pullwake_wakes_total", outcome="deferred") is None  # a step


def test_gauges_read_the_snapshot(rig: Rig) -> None:
    assert rig.sample("pullwake_stream_connected") is None  # nothing bound yet
    now = time.time()
    snap = RunnerSnapshot(
        runner_id="r1",
        state=RunnerState.STREAMING,
        stream_connected=True,
        stream_connected_since=now - 12,
        stream_age_s=12.0,
        stream_idle_s=0.5,
        idle_timeout_s=3.0,
        reconnect_count=2,
        consecutive_heartbeat_failures=3,
        last_heartbeat_success_at=now - 30,
        last_heartbeat_ok=False,
        last_reconnect_reason=EndReason.ERROR,
        session_number=3,
        committed_offset="-1",
    )
    rig.obs.bind(lambda: snap)
    assert rig.sample("pullwake_stream_connected", runner_id="r1") == 1
    assert rig.sample("pullwake_stream_age_seconds") == 12
    assert rig.sample("pullwake_stream_idle_seconds") == 0.5
    assert rig.sample("pullwake_stream_idle_timeout_seconds") == 3
    assert rig.sample("pullwake_heartbeat_consecutive_failures") == 3
    last = rig.sample("pullwake_heartbeat_last_success_timestamp_seconds")
    assert last == pytest.approx(now - 30)
    assert rig.sample("pullwake_runner_state", state="running.streaming") == 1
    assert rig.sample("pullwake_runner_state", state="running.reconnecting") == 0
    assert rig.sample("pullwake_runner_state", state="stopped") is None  # running phases only


def test_a_broken_snapshot_does_not_break_the_scrape(rig: Rig) -> None:
    def boom() -> RunnerSnapshot:
        raise RuntimeError("snapshot failed")

    rig.obs.bind(boom)
    rig.obs.heartbeat(HeartbeatOutcome.FAILED, 0.001, HeartbeatErrorType.TIMEOUT)
    assert rig.sample("pullwake_heartbeat_failures_total", error_type="timeout") == 1


def test_observer_errors_never_reach_the_runner(rig: Rig) -> None:
    fanout = Observers(rig.obs)
    fanout.detector_fired(None, "idle_timeout", {})  # no session: ignored
    fanout.session_ended(session(99, reason=EndReason.ERROR))  # unknown session: ignored
    fanout.heartbeat(HeartbeatOutcome.FAILED, 0.1, None)
    assert rig.sample("pullwake_heartbeat_failures_total", error_type="other") == 1


async def test_traceparent_on_runner_requests(rig: Rig) -> None:
    seen: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers.get("traceparent", ""))
        return web.Response(text="ok")

    async with serving(echo) as base:
        url = f"{base}/x"
        async with ClientSession(trace_configs=[rig.obs.trace_config()]) as http:
            rig.obs.session_started(session(1))
            async with http.get(url) as resp:  # the stream GET: the session's context
                await resp.read()
            with rig.obs.span("heartbeat", {}):
                async with http.get(url) as resp:
                    await resp.read()
            rig.obs.heartbeat(HeartbeatOutcome.OK, 0.001, None)
    session_span = rig.obs._current
    assert session_span is not None
    (hb,) = rig.finished("pullwake.heartbeat")
    tid = f"{session_span.get_span_context().trace_id:032x}"
    assert seen[0].split("-")[1] == tid
    assert seen[1].split("-")[1] == f"{hb.context.trace_id:032x}"
    # the request's own CLIENT span (runner.otel_http), a child of the active span
    clients = {f"{s.context.span_id:016x}": s for s in rig.finished() if s.name == "GET"}
    stream, hb_request = clients[seen[0].split("-")[2]], clients[seen[1].split("-")[2]]
    assert stream.parent is not None and stream.parent.span_id == (
        session_span.get_span_context().span_id
    )
    assert hb_request.parent is not None and hb_request.parent.span_id == hb.context.span_id


def test_a_stop_ends_wake_spans_once_the_runner_has_stopped(rig: Rig) -> None:
    """On a stop the session ends `stopped` while the dispatcher still runs; the
    wakes it leaves in flight are ended at the STOPPED transition, after it."""
    s = session(1)
    rig.obs.session_started(s)
    rig.obs.wake(WakeOutcome.RECEIVED, "in-flight")
    rig.obs.transition(Transition(RunnerState.STREAMING, RunnerState.STOPPING, "Stop"))
    rig.obs.session_ended(session(1, started_at=s.started_at, reason=EndReason.STOPPED))
    (attempt,) = rig.finished(CONNECT_SPAN)  # never connected
    assert dict(attempt.attributes or {})["pullwake.end.reason"] == "stopped"
    assert attempt.status.status_code is not StatusCode.ERROR
    assert rig.finished(WAKE_SPAN) == []  # still being dispatched
    rig.obs.transition(Transition(RunnerState.STOPPING, RunnerState.STOPPED, "StopComplete"))
    (wake,) = rig.finished(WAKE_SPAN)
    assert dict(wake.attributes or {})["pullwake.wake.abandoned"] is True


@pytest.mark.parametrize("reason", [EndReason.IDLE_TIMEOUT, EndReason.HEARTBEAT_FAILURES])
def test_detector_reported_before_the_end_is_one_event_on_an_error_span(
    rig: Rig, reason: EndReason
) -> None:
    s = session(1, connected_at=time.time())
    rig.obs.session_started(s)
    rig.obs.detector_fired(s, reason.value, {"limit_s": 1.5})
    rig.obs.session_ended(
        session(
            1,
            started_at=s.started_at,
            connected_at=s.connected_at,
            ended_at=time.time(),
            reason=reason,
        )
    )
    (span,) = rig.finished(SESSION_SPAN)
    (event,) = [e for e in span.events if e.name.startswith("detector.")]
    assert event.name == f"detector.{reason.value}"
    assert dict(event.attributes or {})["pullwake.limit_s"] == 1.5
    assert span.status.status_code is StatusCode.ERROR


def test_wake_steps_as_events_keep_one_span_per_wake() -> None:
    spans = InMemorySpanExporter()
    t = build_telemetry(
        SERVICE_RUNNER, "r1", env={}, span_processors=[SimpleSpanProcessor(spans)], prometheus=False
    )
    obs = OtelRunnerObserver(t, "r1", wake_step_spans=False)
    obs.wake(WakeOutcome.RECEIVED, "w1")
    for step in ("claim", "handle", "complete"):
        with obs.span(step, {"wake_id": "w1"}):
            pass
    (wake,) = spans.get_finished_spans()
    assert wake.name == WAKE_SPAN
    assert [e.name for e in wake.events] == [
        f"{s}.{edge}" for s in ("claim", "handle", "complete") for edge in ("start", "end")
    ]


def test_heartbeat_outcome_reported_after_the_block_lands_on_its_span() -> None:
    """runner/heartbeat.py reports the outcome just after the span's block."""
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    spans = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    t = build_telemetry(
        SERVICE_RUNNER,
        "r1",
        env={},
        span_processors=[SimpleSpanProcessor(spans)],
        metric_readers=[reader],
        prometheus=False,
    )
    obs = OtelRunnerObserver(t, "r1")
    obs.session_started(session(1))
    with obs.span("heartbeat", {"runner_id": "r1"}):
        pass
    assert spans.get_finished_spans() == ()  # held open for the outcome
    obs.heartbeat(HeartbeatOutcome.FAILED, 0.01, HeartbeatErrorType.TIMEOUT)
    (hb,) = spans.get_finished_spans()
    assert hb.status.status_code is StatusCode.ERROR
    assert dict(hb.attributes or {})["error.type"] == "timeout"
    assert dict(hb.attributes or {})["runner.id"] == "r1"
    data = reader.get_metrics_data()
    assert data is not None
    exemplars = [
        e
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "pullwake.heartbeat.failures"
        for p in m.data.data_points
        for e in p.exemplars  # type: ignore[union-attr]
    ]
    assert exemplars and exemplars[0].trace_id == hb.context.trace_id
    # a heartbeat whose outcome never comes is ended by the next one
    with obs.span("heartbeat", {}):
        pass
    with obs.span("heartbeat", {}):
        pass
    assert len(spans.get_finished_spans()) == 2


def test_a_step_that_raises_is_an_error_a_cancelled_one_is_not(rig: Rig) -> None:
    import asyncio

    rig.obs.wake(WakeOutcome.RECEIVED, "w1")
    with pytest.raises(RuntimeError), rig.obs.span("handle", {"wake_id": "w1"}):
        raise RuntimeError("handler broke")
    with pytest.raises(asyncio.CancelledError), rig.obs.span("complete", {"wake_id": "w1"}):
        raise asyncio.CancelledError
    (handle,) = rig.finished(f"{WAKE_SPAN}.handle")
    assert handle.status.status_code is StatusCode.ERROR
    assert [e.name for e in handle.events] == ["exception"]
    (complete,) = rig.finished(f"{WAKE_SPAN}.complete")
    assert complete.status.status_code is StatusCode.UNSET
    assert len(rig.finished(WAKE_SPAN)) == 1  # complete ended the wake even when cancelled
    from opentelemetry import trace

    assert not trace.get_current_span().get_span_context().is_valid  # context restored


def test_wakes_counter_is_a_monotonic_cumulative_sum_on_otlp() -> None:
    """`pullwake.wakes` is counted in a dict and observed: same shape as a counter."""
    from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader, Sum

    reader = InMemoryMetricReader()
    t = build_telemetry(SERVICE_RUNNER, "r1", env={}, metric_readers=[reader])
    obs = OtelRunnerObserver(t, "r1")
    for _ in range(3):
        obs.wake(WakeOutcome.RECEIVED, None)
        obs.wake(WakeOutcome.HANDLED, None)
    obs.wake(WakeOutcome.DUPLICATE, "w9")
    obs.wake(WakeOutcome.SKIPPED, "w8")
    data = reader.get_metrics_data()
    assert data is not None
    (wakes,) = [
        m
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "pullwake.wakes"
    ]
    assert isinstance(wakes.data, Sum) and wakes.data.is_monotonic
    assert wakes.data.aggregation_temporality is AggregationTemporality.CUMULATIVE
    got = {dict(p.attributes or {})["outcome"]: p.value for p in wakes.data.data_points}
    assert got == {"handled": 3, "skipped": 1}  # final outcomes only (series budget)
    assert all(dict(p.attributes or {})["runner.id"] == "r1" for p in wakes.data.data_points)
    text = t.prometheus_text().decode()
    assert "# TYPE pullwake_wakes_total counter" in text
    assert re.search(r'^pullwake_wakes_total\{[^}]*outcome="handled"[^}]*\} 3\.0$', text, re.M)
    t.shutdown(2)
