"""Resume and stall detection, the heartbeat bridge as a detector, and what a heartbeat
carries - in process: the detectors on scripted clocks and a fake machine, then a real
`Runner` on real sockets (the fake server) whose boot clock jumps as after a suspend."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from pullwake.core.protocol import (
    UPSTREAM_DIAG_BOOLS,
    UPSTREAM_DIAG_COUNTS,
    UPSTREAM_DIAG_STRINGS,
    EndReason,
    RunnerState,
    sanitize_diagnostics,
)
from pullwake.runner import RecordingObserver, Runner
from pullwake.runner.detectors import Gap, HeartbeatBridge, ResumeDetector, SystemClocks
from pullwake.runner.diagnostics import claim_result_word
from pullwake.runner.heartbeat import HeartbeatRecord
from pullwake.runner.machine import Event, Machine, ReconnectNow, ServerBack, StreamReset
from tests.support.fakeserver import FakeServer, keepalives
from tests.support.waits import until

S = RunnerState


class ScriptedClocks:
    """Both clocks under the test's hand."""

    def __init__(self) -> None:
        self.mono = 100.0
        self.boot = 500.0

    def monotonic(self) -> float:
        return self.mono

    def boottime(self) -> float:
        return self.boot

    def run(self, seconds: float) -> None:
        self.mono += seconds
        self.boot += seconds

    def suspend(self, seconds: float) -> None:
        self.boot += seconds  # CLOCK_MONOTONIC stands still while the system sleeps


class SuspendableClocks(SystemClocks):
    """The real clocks, plus a boot clock the test can push ahead: a simulated suspend."""

    def __init__(self) -> None:
        self.slept = 0.0

    def boottime(self) -> float:
        return super().boottime() + self.slept


class Sink:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.events: list[Event] = []

    def feed(self, event: Event) -> None:
        self.events.append(event)


# --- the resume detector on scripted clocks -------------------------------------------
def test_a_suspend_is_a_resume_a_late_timer_is_a_stall_and_a_short_gap_is_nothing() -> None:
    clocks = ScriptedClocks()
    d = ResumeDetector(clocks, threshold=5.0, on_gap=lambda gap: None, tick=1.0)
    clocks.run(1.0)
    assert d.check() is None  # on time
    clocks.run(1.0)
    clocks.suspend(60.0)
    assert d.check() == Gap(EndReason.RESUMED, 60.0)
    clocks.run(1.0 + 7.0)  # the tick fired 7 s late: frozen (SIGSTOP, GC, blocking call)
    assert d.check() == Gap(EndReason.STALLED, 7.0)
    clocks.run(1.0 + 4.9)  # late, but under the threshold
    assert d.check() is None
    clocks.run(1.0)
    clocks.suspend(4.9)
    assert d.check() is None
    clocks.run(1.0)
    clocks.suspend(30.0)
    clocks.run(30.0)  # slept *and* late (a suspend during a long block): a resume
    assert d.check() == Gap(EndReason.RESUMED, 30.0)


def test_the_tick_defaults_to_a_quarter_of_the_threshold_capped_at_half_a_second() -> None:
    clocks = ScriptedClocks()
    assert ResumeDetector(clocks, 1.0, lambda g: None).tick == 0.25
    assert ResumeDetector(clocks, 30.0, lambda g: None).tick == 0.5
    with pytest.raises(ValueError):
        ResumeDetector(clocks, 0.0, lambda g: None)


async def test_the_detector_loop_sees_a_blocked_event_loop() -> None:
    gaps: list[Gap] = []
    d = ResumeDetector(SystemClocks(), threshold=0.3, on_gap=gaps.append, tick=0.05)
    task = asyncio.create_task(d.run())
    try:
        await asyncio.sleep(0.2)
        assert gaps == []  # a healthy loop never comes close
        time.sleep(0.6)  # noqa: ASYNC251 - on purpose: a blocking call freezes the loop
        await until(lambda: gaps, 2.0)
    finally:
        task.cancel()
    assert gaps[0].reason is EndReason.STALLED and gaps[0].seconds >= 0.3


# --- the heartbeat bridge as a detector ------------------------------------------------
class Beats:
    """A heartbeat record fed outcome by outcome, as `Heartbeater.beat` records them."""

    def __init__(self) -> None:
        self.record = HeartbeatRecord()

    def __call__(self, ok: bool) -> HeartbeatRecord:
        r = self.record
        r.last_ok, r.failures_before = ok, r.consecutive_failures
        r.consecutive_failures = 0 if ok else r.consecutive_failures + 1
        return r


def test_bridge_counts_failures_per_session_and_says_when_the_server_is_back() -> None:
    reports: list[tuple[str, Any]] = []
    sink = Sink(Machine(S.STREAMING, session=2, attempt=1))
    bridge = HeartbeatBridge(sink, 2, lambda d, x: reports.append((d, dict(x))))
    beat = Beats()
    bridge.heartbeat(beat(False))
    assert sink.events == []
    bridge.heartbeat(beat(False))
    assert sink.events == [StreamReset(2, EndReason.HEARTBEAT_FAILURES, False)]
    assert reports == [("heartbeat_failures", {"consecutive_failures": 2, "threshold": 2})]
    sink.machine = Machine(S.RECONNECTING, session=2, attempt=2)
    bridge.heartbeat(beat(False))  # no session to reset while waiting
    assert len(sink.events) == 1
    sink.machine = Machine(S.CONNECTING, session=3, attempt=2)
    bridge.heartbeat(beat(False))  # a fresh session gets its own K
    assert len(sink.events) == 1 and bridge.session_failures == 1
    sink.machine = Machine(S.RECONNECTING, session=3, attempt=3)
    bridge.heartbeat(beat(True))
    assert sink.events[-1] == ServerBack(3)
    bridge.heartbeat(beat(True))  # only the first success after failures
    assert len(sink.events) == 2


def test_bridge_off_never_resets() -> None:
    sink = Sink(Machine(S.STREAMING, session=1))
    bridge = HeartbeatBridge(sink, None, lambda d, x: None)
    beat = Beats()
    for _ in range(5):
        bridge.heartbeat(beat(False))
    assert sink.events == []


# --- a real runner that was asleep ------------------------------------------------------
async def test_a_simulated_suspend_ends_the_read_as_resumed_and_reconnects_at_once() -> None:
    clocks = SuspendableClocks()
    obs = RecordingObserver()
    fake = FakeServer(keepalives)
    app_runner, url = await fake.start()
    r = Runner(
        server=url, runner_id="r1", observer=obs, clocks=clocks,
        heartbeat_interval=2.0, backoff_max=30.0,
    )  # fmt: skip
    task = asyncio.create_task(r.run())
    try:
        await until(lambda: r.phase is S.STREAMING, 10)
        await until(lambda: fake.heartbeats >= 1, 5)
        beats = fake.heartbeats
        clocks.slept += 3600.0  # the laptop lid was closed for an hour
        resumed_at = time.monotonic()
        await until(lambda: r.machine.session == 2 and r.phase is S.STREAMING, 5)
        took = time.monotonic() - resumed_at
        print(f"\nsimulated resume -> new session streaming: {took * 1000:.0f} ms")
        assert took < 1.0, f"reconnected {took:.2f}s after the resume"
        await until(lambda: fake.heartbeats > beats, 1.0)  # a heartbeat at once, not in 2 s
        ended = [s for (s,) in obs.of("session_ended")]
        assert [(s.number, s.reason) for s in ended] == [(1, EndReason.RESUMED)]
        fired = [(d, x) for _, d, x in obs.of("detector_fired")]
        assert fired[0][0] == "resumed" and fired[0][1]["gap_s"] >= 3599
        assert obs.of("backoff_wait")[0][:2] == (0.0, 0)  # no backoff
        s = r.status()
        assert s["diagnostics"]["last_reconnect_reason"] == "resumed"
        assert s["diagnostics"]["reconnect_count"] == 1 and s["session"] == 2
        assert [e["reason"] for e in s["reconnects"]] == ["resumed"]
        assert s["detectors"]["resume_threshold_s"] == 2.0
    finally:
        r.stop()
        async with asyncio.timeout(10):
            await task
        await app_runner.cleanup()


async def test_a_resume_during_a_backoff_wait_cuts_it_short() -> None:
    clocks = SuspendableClocks()
    r = Runner(
        server="http://127.0.0.1:1", runner_id="r1", clocks=clocks,
        heartbeat_interval=1.0, backoff_max=3600.0,
    )  # fmt: skip
    task = asyncio.create_task(r.run())
    try:
        await until(lambda: r.machine.attempt >= 3 and r.phase is S.RECONNECTING, 15)
        attempt = r.machine.attempt
        clocks.slept += 60.0
        await until(lambda: r.machine.attempt > attempt, 2.0)
    finally:
        r.stop()
        async with asyncio.timeout(10):
            await task


# --- what a heartbeat carries -------------------------------------------------------------
def test_heartbeat_diagnostics_are_only_what_the_real_server_keeps() -> None:
    r = Runner(server="http://127.0.0.1:1", runner_id="r1")
    wire = r.wire_diagnostics()
    allowed = {"status", "last_claim_result", *UPSTREAM_DIAG_BOOLS}
    allowed |= {*UPSTREAM_DIAG_STRINGS, *UPSTREAM_DIAG_COUNTS}
    assert set(wire) == allowed  # all sixteen, nothing else
    assert wire["status"] == "stopped" and wire["last_heartbeat_ok"] is False
    assert wire["stream_connected"] is False and wire["reconnect_count"] == 0
    assert sanitize_diagnostics(wire) == wire
    assert "state" in r.diagnostics() and "state" not in wire  # pullwake's extras: /status only


def test_sanitizer_keeps_the_enums_and_types_upstream_keeps() -> None:
    raw: dict[str, Any] = {
        "status": "bogus",
        "stream_connected": "yes",
        "last_claim_result": "skipped",
        "started_at": 5,
        "reconnect_count": -1,
        "events_received": 1.5,
        "claims_failed": float("inf"),
        "claims_skipped": True,
        "last_error": None,
        "running": True,
    }
    assert sanitize_diagnostics(raw) == {"last_error": None, "events_received": 1.5}
    assert sanitize_diagnostics({"last_claim_result": None}) == {"last_claim_result": None}
    assert [claim_result_word(w) for w in ("claimed", "skipped", "failed: 503", None, "?")] == [
        "claimed",
        "no_work",
        "error",
        None,
        "error",
    ]


def test_reconnect_now_is_refused_when_not_running() -> None:
    r = Runner(server="http://127.0.0.1:1", runner_id="r1")
    assert r.reconnect_now() is False
    r.feed(ReconnectNow(EndReason.FORCED))  # the machine ignores it while stopped
    assert r.phase is S.STOPPED


# --- metrics and spans carry the reason like any other session end ---------------------
async def test_a_resume_shows_in_metrics_and_spans_as_its_own_reason() -> None:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from pullwake.core.telemetry import SERVICE_RUNNER, build_telemetry
    from pullwake.runner.otel import SESSION_SPAN, OtelRunnerObserver

    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = build_telemetry(
        SERVICE_RUNNER,
        "r1",
        env={},
        span_processors=[SimpleSpanProcessor(spans)],
        metric_readers=[reader],
        prometheus=False,
    )
    clocks = SuspendableClocks()
    fake = FakeServer(keepalives)
    app_runner, url = await fake.start()
    observer = OtelRunnerObserver(telemetry, "r1")
    r = Runner(server=url, runner_id="r1", observer=observer, clocks=clocks, heartbeat_interval=2.0)
    observer.bind(r.snapshot)
    task = asyncio.create_task(r.run())
    try:
        await until(lambda: r.phase is S.STREAMING, 10)
        clocks.slept += 120.0
        await until(lambda: r.machine.session == 2 and r.phase is S.STREAMING, 5)
    finally:
        r.stop()
        async with asyncio.timeout(10):
            await task
        await app_runner.cleanup()
    first = next(
        s for s in spans.get_finished_spans()
        if s.name == SESSION_SPAN and dict(s.attributes or {})["pullwake.session.number"] == 1
    )  # fmt: skip
    assert dict(first.attributes or {})["pullwake.end.reason"] == "resumed"
    assert first.status.status_code is not StatusCode.ERROR  # a resume is not a failure
    assert "detector.resumed" in [e.name for e in first.events]
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        (m.name, dict(p.attributes or {}).get("reason")): p
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        for p in m.data.data_points
    }
    assert points[("pullwake.stream.reconnects", "resumed")].value == 1  # type: ignore[union-attr]
    telemetry.shutdown(1.0)


def test_threshold_defaults_to_the_heartbeat_interval_in_the_default_profile_only() -> None:
    from pullwake.runner.config import PROFILES, ConfigError

    assert Runner(server="http://h:1", runner_id="r", heartbeat_interval=7).resume_threshold == 7
    assert Runner(server="http://h:1", runner_id="r", resume_threshold=3).resume_threshold == 3
    off = Runner(server="http://h:1", runner_id="r", resume_threshold=0)
    assert off.resume_threshold == 0 and off.status()["detectors"]["resume_threshold_s"] is None
    for name in ("upstream", "legacy"):  # they reproduce the originals, which had none
        r = Runner(server="http://h:1", runner_id="r", profile=PROFILES[name])
        assert r.resume_threshold == 0
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError):
            Runner(server="http://h:1", runner_id="r", resume_threshold=bad)
