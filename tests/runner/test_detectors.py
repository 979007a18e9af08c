"""Every session end maps to one reason: real sockets, tiny in-process stub servers.

The stubs play the misbehaving server (silent after headers, 500/503, garbage,
clean EOF, RST, slow headers) so each detector is shown firing on its own,
within its bound, without the real server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from pullwake.core.protocol import EndReason
from pullwake.runner.config import PROFILES, RunnerConfig
from pullwake.runner.errors import SessionEnded
from pullwake.runner.session import Session
from pullwake.runner.transport import open_stream_session
from tests.support.fakeserver import Behaviour, FakeServer, keepalives, serve, sse_headers
from tests.support.waits import until

HandlerFn = Behaviour


class Hooks:
    def __init__(self) -> None:
        self.connected_with: float | str | None = "never"
        self.got: list[dict[str, Any]] = []
        self.offsets: list[str] = []
        self.bytes = 0

    def connected(self, idle_timeout: float | None) -> None:
        self.connected_with = idle_timeout

    def got_bytes(self) -> None:
        self.bytes += 1

    async def wakes(self, events: Any) -> None:
        self.got += events

    def offset(self, next_offset: str) -> None:
        self.offsets.append(next_offset)


async def end_of(handler: HandlerFn, **cfg: Any) -> tuple[SessionEnded, Hooks, float]:
    r, url = await serve(handler)
    config = RunnerConfig(server=url, runner_id="r1", **cfg)
    http = open_stream_session(config)
    hooks = Hooks()
    s = Session(1, http, config, url + "/runners/r1/wake", "-1", hooks)
    started = time.monotonic()
    try:
        async with asyncio.timeout(20):
            await s.run()
    except SessionEnded as end:
        return end, hooks, time.monotonic() - started
    finally:
        await http.close()
        await r.cleanup()
    raise AssertionError("a session must never return")


async def sse_then(
    request: web.Request, after: Callable[[web.StreamResponse], Awaitable[None]]
) -> web.StreamResponse:
    resp = web.StreamResponse(headers=sse_headers())
    await resp.prepare(request)
    await resp.write(
        b': connected\n\nevent: data\ndata: [{"wake_id":"w1"}]\n\n'
        b'event: control\ndata: {"streamNextOffset":"o1","upToDate":true}\n\n'
    )
    await after(resp)
    return resp


async def test_silence_after_headers_is_an_idle_timeout_sized_from_the_header() -> None:
    async def silent(request: web.Request) -> web.StreamResponse:
        return await sse_then(request, lambda r: asyncio.sleep(30))

    end, hooks, took = await end_of(silent)
    assert end.reason is EndReason.IDLE_TIMEOUT
    assert hooks.connected_with == pytest.approx(0.6)  # 3 x the advertised 0.2 s
    assert hooks.got == [{"wake_id": "w1"}] and hooks.offsets == ["o1"]
    assert 0.5 < took < 0.6 + 1.5


async def test_keepalive_comments_keep_the_watchdog_quiet_until_eof() -> None:
    async def chatty(request: web.Request) -> web.StreamResponse:
        async def comments(resp: web.StreamResponse) -> None:
            for _ in range(8):  # 1.2 s of keepalives, twice the idle bound
                await resp.write(b": keepalive\n\n")
                await asyncio.sleep(0.15)

        return await sse_then(request, comments)

    end, hooks, took = await end_of(chatty)
    assert end.reason is EndReason.EOF  # a clean end is an end, never success
    assert took > 1.0 and hooks.bytes >= 8


async def test_rotate_comment_makes_a_clean_end_a_rotation() -> None:
    async def rotating(request: web.Request) -> web.StreamResponse:
        return await sse_then(request, lambda r: r.write(b": rotate\n\n"))

    end, _, _ = await end_of(rotating)
    assert end.reason is EndReason.ROTATED and end.resets_backoff


@pytest.mark.parametrize("status", [500, 503, 404])
async def test_http_errors(status: int) -> None:
    async def failing(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text="nope")

    end, hooks, took = await end_of(failing)
    assert end.reason is EndReason.HTTP_ERROR and end.status == status
    assert hooks.connected_with == "never" and took < 1.0


async def test_garbage_is_a_protocol_error() -> None:
    async def garbage(request: web.Request) -> web.StreamResponse:
        return await sse_then(request, lambda r: r.write(b"event: data\ndata: {oops\n\n"))

    end, _, _ = await end_of(garbage)
    assert end.reason is EndReason.PROTOCOL_ERROR


async def test_stream_closed_control() -> None:
    async def closing(request: web.Request) -> web.StreamResponse:
        ctl = b'event: control\ndata: {"streamNextOffset":"o9","streamClosed":true}\n\n'
        return await sse_then(request, lambda r: r.write(ctl))

    end, hooks, _ = await end_of(closing)
    assert end.reason is EndReason.CLOSED and hooks.offsets[-1] == "o9"


async def test_rst_mid_stream_is_an_error_at_once() -> None:
    async def reset(request: web.Request) -> web.StreamResponse:
        async def rst(resp: web.StreamResponse) -> None:
            await asyncio.sleep(0.1)
            sock = request.transport.get_extra_info("socket")  # type: ignore[union-attr]
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.abort()  # type: ignore[union-attr]
            await asyncio.sleep(5)

        return await sse_then(request, rst)

    end, _, took = await end_of(reset)
    assert end.reason is EndReason.ERROR and took < 1.0


async def test_slow_headers_are_a_connect_timeout() -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(10)
        return web.Response()

    end, _, took = await end_of(slow, connect_timeout=0.3)
    assert end.reason is EndReason.CONNECT_TIMEOUT and took < 1.5


async def test_refused_is_a_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = RunnerConfig(server=f"http://127.0.0.1:{port}", runner_id="r1")
    http = open_stream_session(config)
    try:
        with pytest.raises(SessionEnded) as info:
            await Session(1, http, config, config.server + "/w", "-1", Hooks()).run()
    finally:
        await http.close()
    assert info.value.reason is EndReason.CONNECT_ERROR


async def test_without_the_watchdog_only_the_server_ends_a_silent_stream() -> None:
    async def silent(request: web.Request) -> web.StreamResponse:
        return await sse_then(request, lambda r: asyncio.sleep(1.5))

    no_watchdog = dataclasses.replace(PROFILES["default"], idle_watchdog=False)
    end, hooks, took = await end_of(silent, profile=no_watchdog)
    assert hooks.connected_with is None  # no bound: only the server's EOF ends it
    assert end.reason is EndReason.EOF and took >= 1.4


async def test_long_poll_reads_and_hidden_retry_of_legacy() -> None:
    calls: list[str] = []

    async def lp(request: web.Request) -> web.StreamResponse:
        calls.append(request.query.get("live", "catch-up"))
        n = len(calls)
        if n == 1:
            return web.json_response([{"wake_id": "a"}], headers={"Stream-Next-Offset": "o1"})
        if n in (2, 3):
            return web.Response(status=503)  # legacy swallows these
        if n == 4:
            return web.json_response([{"wake_id": "b"}], headers={"Stream-Next-Offset": "o2"})
        return web.Response(
            status=204, headers={"Stream-Next-Offset": "o2", "Stream-Closed": "true"}
        )

    end, hooks, _ = await end_of(lp, profile=PROFILES["legacy"])
    assert end.reason is EndReason.CLOSED
    assert [w["wake_id"] for w in hooks.got] == ["a", "b"]
    assert calls == ["catch-up", "long-poll", "long-poll", "long-poll", "long-poll"]

    calls.clear()
    end, _, _ = await end_of(lp, live="long-poll")  # default profile reports the 503
    assert end.reason is EndReason.HTTP_ERROR and end.status == 503


async def test_a_healthy_session_ended_by_the_heartbeat_bridge_resets_the_backoff() -> None:
    """Two refused attempts, then a session healthy past `healthy_after`, then the
    heartbeats fail and the bridge ends it: the next wait starts a fresh sequence
    (backoff reset after a healthy session), not try 3 of the old one."""
    from pullwake.runner import RecordingObserver as Recorder
    from pullwake.runner import Runner

    hb_ok = True
    refused = 0

    async def refused_twice_then_keepalives(request: web.Request) -> web.StreamResponse:
        nonlocal refused
        if refused < 2:
            refused += 1
            return web.json_response({"error": {"code": "INTERNAL"}}, status=503)
        return await keepalives(request)

    fake = FakeServer(refused_twice_then_keepalives, heartbeat_status=lambda: 200 if hb_ok else 503)
    app_runner, url = await fake.start()
    obs = Recorder()
    r = Runner(
        server=url, runner_id="r1", observer=obs, heartbeat_interval=0.2, backoff_max=0.05,
        healthy_after=0.3,
    )  # fmt: skip
    task = asyncio.create_task(r.run())
    try:
        await until(lambda: r.snapshot().stream_age_s >= 0.5, what="a healthy session")
        assert [tries for _, tries, _ in obs.of("backoff_wait")] == [1, 2]
        hb_ok = False
        await until(lambda: len(obs.of("backoff_wait")) >= 3, what="the bridge's backoff wait")
        wait, tries, reason = obs.of("backoff_wait")[2]
        assert reason is EndReason.HEARTBEAT_FAILURES
        assert (wait, tries) == (0.0, 0)  # a healthy end: afresh, at once
    finally:
        r.stop()
        async with asyncio.timeout(10):
            await task
        await app_runner.cleanup()
