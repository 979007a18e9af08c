"""The OTel observer on a real in-process `Runner` (tiny stub servers on real sockets).

`runner.otel` relies on the observer contract (tests/runner/test_observer_contract.py)
instead of working around its absence: these check the spans that come out when the
runner reports as it does - the idle watchdog's event on the session it ends, time to
first byte from the body's first byte, and nothing left open after a stop or a
cancelled `run()` (which reports no STOPPED transition).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from pullwake.core.protocol import RunnerState
from pullwake.core.telemetry import SERVICE_RUNNER, build_telemetry
from pullwake.runner import Runner
from pullwake.runner.otel import HEARTBEAT_SPAN, SESSION_SPAN, WAKE_SPAN, OtelRunnerObserver
from tests.support.fakeserver import FakeServer, forever, sse_headers
from tests.support.waits import until

FIRST_BYTE_DELAY = 0.3  # between the response headers and the body's first byte


class Spans:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.telemetry = build_telemetry(
            SERVICE_RUNNER,
            "r1",
            env={},
            span_processors=[SimpleSpanProcessor(self.exporter)],
            prometheus=False,
        )
        self.observer = OtelRunnerObserver(self.telemetry, "r1")

    def finished(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]


async def late_first_byte_then_silence(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers=sse_headers("0.2"))
    await resp.prepare(request)
    await asyncio.sleep(FIRST_BYTE_DELAY)
    await resp.write(b": hello\n\n")
    await forever()
    return resp


async def two_wakes_then_keepalives(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers=sse_headers("0.2"))
    await resp.prepare(request)
    await resp.write(
        b'event: data\ndata: [{"type":"wake","subscription_id":"s1"},'
        b'{"type":"wake","subscription_id":"s2"}]\n\n'
    )
    while True:
        await asyncio.sleep(0.1)
        await resp.write(b": keepalive\n\n")


@pytest.fixture
async def run_against() -> AsyncIterator[Callable[..., Awaitable[tuple[Runner, Spans]]]]:
    started: list[tuple[Runner, asyncio.Task[None], web.AppRunner, Spans]] = []

    async def start(fake: FakeServer, **options: Any) -> tuple[Runner, Spans]:
        app_runner, url = await fake.start()
        spans = Spans()
        options = {"heartbeat_interval": 5.0, "backoff_max": 0.2} | options
        r = Runner(server=url, runner_id="r1", observer=spans.observer, **options)
        spans.observer.bind(r.snapshot)
        started.append((r, asyncio.create_task(r.run()), app_runner, spans))
        return r, spans

    yield start
    for r, task, app_runner, spans in started:
        r.stop()  # after a cancelled run() a no-op (the cancel already stopped it)
        async with asyncio.timeout(10):
            await asyncio.gather(task, return_exceptions=True)
        await app_runner.cleanup()
        spans.telemetry.shutdown(2)


async def test_idle_timeout_on_its_session_span_and_ttfb_from_the_first_byte(
    run_against: Any,
) -> None:
    _, spans = await run_against(FakeServer(late_first_byte_then_silence), idle_timeout=1.0)
    await until(lambda: spans.finished(SESSION_SPAN))
    first = spans.finished(SESSION_SPAN)[0]
    a = dict(first.attributes or {})
    assert a["pullwake.end.reason"] == "idle_timeout"
    assert first.status.status_code is StatusCode.ERROR
    assert [e.name for e in first.events].count("detector.idle_timeout") == 1
    # the first byte of the body came FIRST_BYTE_DELAY after the headers
    assert a["pullwake.session.ttfb_s"] - a["pullwake.session.connect_s"] >= 0.9 * (
        FIRST_BYTE_DELAY
    )


@pytest.mark.parametrize("how", ["stop", "cancel"])
async def test_nothing_left_open_after_a_stop_or_a_cancelled_run(
    run_against: Any, how: str
) -> None:
    """s1's claim is being handled, s2's waits for the one worker, a heartbeat is in
    flight.  A wake span is one claim cycle (`<subscription>#<n>`): s2's has not begun."""
    handling = asyncio.Event()

    async def handler(wake: dict[str, Any]) -> None:
        handling.set()
        await forever()

    fake = FakeServer(two_wakes_then_keepalives)
    fake.hang_heartbeats = True
    r, spans = await run_against(
        fake,
        handler=handler,
        concurrency=1,
        heartbeat_interval=0.2,
        heartbeat_timeout=30.0,
    )
    await until(lambda: handling.is_set() and r.phase is RunnerState.STREAMING)
    assert spans.finished(WAKE_SPAN) == [] and spans.finished(HEARTBEAT_SPAN) == []
    task = next(t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "Runner.run")
    if how == "stop":
        r.stop()
        await until(lambda: r.phase is RunnerState.STOPPED)
    else:
        task.cancel()
    with pytest.raises(asyncio.CancelledError) if how == "cancel" else contextlib.nullcontext():
        await task
    (session,) = spans.finished(SESSION_SPAN)
    assert dict(session.attributes or {})["pullwake.end.reason"] == "stopped"
    assert session.status.status_code is not StatusCode.ERROR
    wakes = {dict(s.attributes or {})["pullwake.wake.id"]: s for s in spans.finished(WAKE_SPAN)}
    assert set(wakes) == {"s1#1"}
    assert all(dict(s.attributes or {})["pullwake.wake.abandoned"] for s in wakes.values())
    (handle,) = spans.finished(f"{WAKE_SPAN}.handle")
    assert handle.parent is not None and handle.parent.span_id == wakes["s1#1"].context.span_id
    assert spans.finished(HEARTBEAT_SPAN)  # the one cut short ended too
