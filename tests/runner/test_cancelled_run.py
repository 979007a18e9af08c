"""A cancelled `run()` (an embedding app's `task.cancel()`) stops the runner as
`stop()` does: observers see `stopping` then `stopped`, every open session ends
once as `stopped`, the workers are gone, the committed offset stays before an
unhandled wake, a goodbye heartbeat is sent, `CancelledError` comes back out;
a `stop()` afterwards is a quiet no-op.  In-process `Runner`, real sockets,
the scripted fake server (`tests.support.fakeserver`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from pullwake.core.protocol import OFFSET_START, EndReason, HeartbeatOutcome, RunnerState
from pullwake.runner import RecordingObserver, Runner
from pullwake.runner.observe import Transition
from tests.support.fakeserver import FakeServer, keepalives, sse_headers, unavailable
from tests.support.waits import never, until

S = RunnerState
WORKERS = ("reconnect", "heartbeat", "shutdown", "session-", "dispatch-")


async def one_wake_then_keepalives(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers=sse_headers("0.2"))
    await resp.prepare(request)
    await resp.write(b'event: data\ndata: [{"wake_id":"w1"}]\n\n')
    await resp.write(b'event: control\ndata: {"streamNextOffset":"o1","upToDate":true}\n\n')
    while True:
        await asyncio.sleep(0.1)
        await resp.write(b": keepalive\n\n")


class CancelOnBackoff(RecordingObserver):
    """Cancels `task` the moment a real backoff wait begins: the cancel lands in it."""

    task: asyncio.Task[None] | None = None

    def backoff_wait(self, seconds: float, tries: int, reason: EndReason | None) -> None:
        if seconds > 0 and self.task is not None:
            self.task.cancel()


Start = Callable[..., Awaitable[tuple[Runner, RecordingObserver, FakeServer, "asyncio.Task[None]"]]]


@pytest.fixture
async def run_against() -> AsyncIterator[Start]:
    started: list[tuple[Runner, asyncio.Task[None], web.AppRunner]] = []

    async def start(
        server: FakeServer, obs: RecordingObserver | None = None, **options: Any
    ) -> tuple[Runner, RecordingObserver, FakeServer, asyncio.Task[None]]:
        app_runner, url = await server.start()
        obs = obs if obs is not None else RecordingObserver()
        options = {"heartbeat_interval": 5.0, "backoff_max": 0.2} | options
        r = Runner(server=url, runner_id="r1", observer=obs, **options)
        task = asyncio.create_task(r.run())
        started.append((r, task, app_runner))
        return r, obs, server, task

    yield start
    for r, task, app_runner in started:
        r.stop()
        async with asyncio.timeout(10):
            await asyncio.gather(task, return_exceptions=True)
        await app_runner.cleanup()


def ends(obs: RecordingObserver) -> list[tuple[int, EndReason | None]]:
    return [(s.number, s.reason) for (s,) in obs.of("session_ended")]


def moves(obs: RecordingObserver) -> list[tuple[S, S, str]]:
    return [(t.old, t.new, t.event) for (t,) in obs.of("transition") if isinstance(t, Transition)]


def workers_left() -> list[str]:
    me = asyncio.current_task()
    return [
        t.get_name()
        for t in asyncio.all_tasks()
        if t is not me and not t.done() and t.get_name().startswith(WORKERS)
    ]


async def cancelled(task: asyncio.Task[None]) -> None:
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(10):
            await task
    assert task.cancelled()


async def test_cancel_during_a_backoff_wait_goes_through_stopping_to_stopped(
    run_against: Any,
) -> None:
    obs = CancelOnBackoff()
    r, obs, _, task = await run_against(FakeServer(unavailable), obs, backoff_max=30.0)
    obs.task = task
    await cancelled(task)
    assert r.phase is S.STOPPED
    assert moves(obs)[-2:] == [
        (S.RECONNECTING, S.STOPPING, "Stop"),
        (S.STOPPING, S.STOPPED, "StopComplete"),
    ]
    # session 1 ended once, by the 503; no session was open to end as stopped
    assert [n for n, _ in ends(obs)] == [1]
    assert ends(obs)[0][1] is not EndReason.STOPPED
    assert [(s.number,) for (s,) in obs.of("session_started")] == [(1,)]
    stopping = next(
        i for i, (m, a) in enumerate(obs.calls) if m == "transition" and a[0].new is S.STOPPING
    )
    goodbye = [a for m, a in obs.calls[stopping:] if m == "heartbeat"]
    assert [o for o, *_ in goodbye] == [HeartbeatOutcome.OK]
    assert workers_left() == []


async def test_cancel_while_streaming_ends_the_session_once_and_commits_only_what_was_handled(
    run_against: Any,
) -> None:
    handling = asyncio.Event()

    async def never_finishes(wake: dict[str, Any]) -> None:
        handling.set()
        await asyncio.Event().wait()

    r, obs, server, task = await run_against(
        FakeServer(one_wake_then_keepalives), handler=never_finishes
    )
    await until(lambda: r.phase is S.STREAMING and handling.is_set() and r.read_offset == "o1")
    task.cancel()
    await cancelled(task)
    assert r.phase is S.STOPPED
    assert moves(obs)[-2:] == [
        (S.STREAMING, S.STOPPING, "Stop"),
        (S.STOPPING, S.STOPPED, "StopComplete"),
    ]
    assert ends(obs) == [(1, EndReason.STOPPED)]
    [(ended,)] = obs.of("session_ended")
    assert ended.end_offset == "o1" and ended.wakes_received == 1
    # the wake was claimed but its handler never finished: nothing past it is committed
    assert server.claims == ["w1"] and server.completed == []
    assert r.committed_offset == OFFSET_START
    assert workers_left() == []


async def test_stop_after_a_cancelled_run_is_a_quiet_no_op(
    run_against: Any, caplog: pytest.LogCaptureFixture
) -> None:
    r, obs, server, task = await run_against(FakeServer(keepalives))
    await until(lambda: r.phase is S.STREAMING and obs.of("heartbeat"))
    task.cancel()
    await cancelled(task)
    calls, heartbeats = len(obs.calls), server.heartbeats
    assert heartbeats >= 2  # the first one, and the goodbye of the cancelled run
    caplog.clear()
    with caplog.at_level(logging.INFO):
        r.stop()
        r.stop()
        assert workers_left() == []  # no second shutdown was started
        # were one started anyway, it would call the observer or send a heartbeat
        await never(
            lambda: obs.calls[calls:] or server.heartbeats != heartbeats or workers_left(),
            within=0.3,
            what="a second shutdown",
        )
    assert r.phase is S.STOPPED
    assert obs.calls[calls:] == []
    assert server.heartbeats == heartbeats
    ours = [rec for rec in caplog.records if rec.name.startswith("runner")]  # not the stub's
    assert not [rec.getMessage() for rec in ours if rec.levelno >= logging.WARNING]
    assert not [rec.getMessage() for rec in ours if "heartbeat" in rec.getMessage()]


async def test_a_second_cancel_during_the_shutdown_still_ends_stopped(run_against: Any) -> None:
    """The goodbye heartbeat hangs (its bound: 1 s); cancelling again cuts it short."""
    r, obs, server, task = await run_against(FakeServer(keepalives), heartbeat_timeout=20.0)
    await until(lambda: r.phase is S.STREAMING and obs.of("heartbeat"))
    server.hang_heartbeats = True
    beats = server.heartbeats
    task.cancel()
    await until(lambda: r.phase is S.STOPPING and server.heartbeats > beats)
    task.cancel()
    await cancelled(task)
    assert r.phase is S.STOPPED
    assert moves(obs)[-2:] == [
        (S.STREAMING, S.STOPPING, "Stop"),
        (S.STOPPING, S.STOPPED, "StopComplete"),
    ]
    assert ends(obs) == [(1, EndReason.STOPPED)]
    assert [o for o, *_ in obs.of("heartbeat")] == [HeartbeatOutcome.OK]  # goodbye: cut
    assert workers_left() == []
