"""The observer contract, as `RecordingObserver` sees it from an in-process `Runner`
against real sockets (tiny stub servers): every session ends exactly once (a stop or
a cancelled `run()` included, reason `stopped`), a detector firing is reported
before the end of the session it ends, and `first_byte_at` is filled in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from pullwake.core.protocol import EndReason, RunnerState
from pullwake.runner import RecordingObserver, Runner
from tests.support.fakeserver import (
    Behaviour,
    FakeServer,
    forever,
    headers_never_come,
    keepalives,
    sse_headers,
)
from tests.support.waits import until


async def one_comment_then_silence(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers=sse_headers("0.2"))
    await resp.prepare(request)
    await asyncio.sleep(0.05)  # the body's first byte comes after the headers
    await resp.write(b": hello\n\n")
    await forever()
    return resp


@pytest.fixture
async def run_against() -> AsyncIterator[Callable[..., Awaitable[tuple[Runner, Any]]]]:
    started: list[tuple[Runner, asyncio.Task[None], web.AppRunner]] = []

    async def start(fake: FakeServer, **options: Any) -> tuple[Runner, RecordingObserver]:
        app_runner, url = await fake.start()
        obs = RecordingObserver()
        options = {"heartbeat_interval": 5.0, "backoff_max": 0.2} | options
        r = Runner(server=url, runner_id="r1", observer=obs, **options)
        started.append((r, asyncio.create_task(r.run()), app_runner))
        return r, obs

    yield start
    for r, task, app_runner in started:
        r.stop()
        async with asyncio.timeout(10):
            await asyncio.gather(task, return_exceptions=True)
        await app_runner.cleanup()


def ends(obs: RecordingObserver) -> list[tuple[int, EndReason | None]]:
    return [(s.number, s.reason) for (s,) in obs.of("session_ended")]


def index(obs: RecordingObserver, method: str, pred: Callable[[tuple[Any, ...]], bool]) -> int:
    return next(i for i, (m, args) in enumerate(obs.calls) if m == method and pred(args))


async def test_idle_timeout_fires_before_its_session_ends_and_first_byte_is_set(
    run_against: Any,
) -> None:
    _, obs = await run_against(FakeServer(one_comment_then_silence), idle_timeout=0.5)
    await until(lambda: obs.of("session_ended"))
    [(ended,)] = obs.of("session_ended")[:1]
    assert ended.reason is EndReason.IDLE_TIMEOUT
    fired = index(obs, "detector_fired", lambda a: a[1] == "idle_timeout")
    assert obs.calls[fired][1][0].number == 1
    assert fired < index(obs, "session_ended", lambda a: a[0].number == 1)
    assert ended.connected_at is not None and ended.first_byte_at is not None
    assert ended.started_at <= ended.connected_at <= ended.first_byte_at <= ended.ended_at


async def test_heartbeat_bridge_fires_before_its_session_ends(run_against: Any) -> None:
    hb = {"status": 200}
    r, obs = await run_against(
        FakeServer(keepalives, heartbeat_status=lambda: hb["status"]),
        heartbeat_interval=0.2,
        healthy_after=60.0,
    )
    await until(lambda: r.phase is RunnerState.STREAMING)
    hb["status"] = 503
    await until(lambda: obs.of("session_ended"))
    [(ended,)] = obs.of("session_ended")[:1]
    assert ended.reason is EndReason.HEARTBEAT_FAILURES
    fired = index(obs, "detector_fired", lambda a: a[1] == "heartbeat_failures")
    assert fired < index(obs, "session_ended", lambda a: a[0].number == 1)


@pytest.mark.parametrize(
    ("behaviour", "phase"),
    [(keepalives, RunnerState.STREAMING), (headers_never_come, RunnerState.CONNECTING)],
)
async def test_a_stop_ends_the_session_once_as_stopped(
    run_against: Any, behaviour: Behaviour, phase: RunnerState
) -> None:
    fake = FakeServer(behaviour)
    r, obs = await run_against(fake, connect_timeout=20.0)
    await until(lambda: r.phase is phase and obs.of("session_started"))
    # well inside the session: the stream request is at the server, and when streaming
    # a body byte has been read (the snapshot's idle clock runs only after one)
    if phase is RunnerState.STREAMING:
        await until(lambda: r.snapshot().stream_idle_s > 0, what="a body byte read")
    else:
        await until(lambda: fake.stream_requests == 1, what="the stream request at the server")
    r.stop()
    await until(lambda: r.phase is RunnerState.STOPPED)
    assert ends(obs) == [(1, EndReason.STOPPED)]
    [(ended,)] = obs.of("session_ended")
    assert (ended.first_byte_at is not None) is (phase is RunnerState.STREAMING)


async def test_a_cancelled_run_ends_its_session_as_stopped_and_leaves_no_worker(
    run_against: Any,
) -> None:
    """An embedding app may cancel `run()` instead of calling `stop()`."""
    r, obs = await run_against(FakeServer(keepalives))
    await until(lambda: r.phase is RunnerState.STREAMING)
    task = next(t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "Runner.run")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ends(obs) == [(1, EndReason.STOPPED)]
    left = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("dispatch-")]
    assert left == []
