"""Every session end maps to one reason: real sockets, tiny in-process stub servers.

The stubs play the misbehaving server (silent after headers, 500/503, garbage,
clean EOF, RST, slow headers) so each detector is shown firing on its own,
within its bound, without the real server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pullwake.protocol import H_KEEPALIVE, EndReason, WakeOutcome
from runner.config import PROFILES, RunnerConfig
from runner.dispatch import ClaimAnswer, Dispatcher, HandlerFailed, shell_handler
from runner.errors import SessionEnded
from runner.observe import RecordingObserver
from runner.offsets import CommitTracker
from runner.session import Session
from runner.transport import open_stream_session

HandlerFn = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


async def stub(handler: HandlerFn) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    r = web.AppRunner(app, shutdown_timeout=0.1)
    await r.setup()
    site = web.TCPSite(r, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return r, f"http://127.0.0.1:{port}"


async def end_of(handler: HandlerFn, **cfg: Any) -> tuple[SessionEnded, Hooks, float]:
    r, url = await stub(handler)
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


def sse_headers(keepalive: str = "0.2") -> dict[str, str]:
    return {"Content-Type": "text/event-stream", H_KEEPALIVE: keepalive}


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


# --- dispatch ---------------------------------------------------------------------------
class ScriptedClaims:
    """The claim API as data: per wake id, the claim status to answer."""

    def __init__(self, answers: dict[str, list[int]]) -> None:
        self.answers = answers
        self.completed: list[str] = []

    async def claim(self, wake: dict[str, Any]) -> ClaimAnswer:
        status = self.answers[wake["wake_id"]].pop(0)
        return ClaimAnswer(status, {"claimToken": "t"} if status == 200 else None)

    async def complete(self, wake_id: str, claim_token: str) -> int:
        self.completed.append(wake_id)
        return 200


@pytest.fixture
async def gate() -> AsyncIterator[asyncio.Event]:
    yield asyncio.Event()


async def test_dispatch_order_backpressure_duplicates_and_failures(
    gate: asyncio.Event,
) -> None:
    handled: list[str] = []

    failed: list[str] = []

    async def handler(wake: dict[str, Any]) -> None:
        if wake["wake_id"] == "slow":
            await gate.wait()
        if wake["wake_id"] == "bad" and not failed:
            failed.append("bad")
            raise RuntimeError("handler failed")
        handled.append(wake["wake_id"])

    claims = ScriptedClaims(
        {"slow": [200], "a": [200], "gone": [409], "bad": [200, 200], "b": [503, 200]}
    )
    commits: list[str] = []
    tracker = CommitTracker("-1")
    obs = RecordingObserver()
    d = Dispatcher(claims, handler, tracker, obs, commits.append, concurrency=2, queue_size=1)
    d.start()
    try:
        await d.submit({"wake_id": "slow"})
        d.mark("o1")
        await d.submit({"wake_id": "a"})
        await d.submit({"wake_id": "a"})  # duplicate: dropped
        await d.submit({"wake_id": "gone"})
        d.mark("o2")
        async with asyncio.timeout(5):
            while "a" not in handled:
                await asyncio.sleep(0.01)
        assert commits == []  # "slow" still runs: nothing may be committed
        gate.set()
        await d.submit({"wake_id": "bad"})
        d.mark("o3")
        async with asyncio.timeout(5):
            while not failed:
                await asyncio.sleep(0.01)
        await d.submit({"wake_id": "bad"})  # re-announced after the failed handling
        await d.submit({"wake_id": "b"})  # first claim 503: retried, not lost
        d.mark("o4")
        async with asyncio.timeout(5):
            while tracker.committed != "o4":
                await asyncio.sleep(0.01)
    finally:
        await d.stop()
    assert sorted(handled) == ["a", "b", "bad", "slow"]  # "bad" failed once, then ok
    assert commits[-1] == "o4" and commits == sorted(commits)
    assert claims.completed.count("a") == 1 and "gone" not in claims.completed
    assert d.stats.duplicates == 1 and d.stats.claims_skipped == 1
    assert d.stats.handler_failures == 1
    assert (WakeOutcome.DUPLICATE, "a") in obs.of("wake")


async def test_full_queue_pauses_reading() -> None:
    release = asyncio.Event()

    async def blocked(wake: dict[str, Any]) -> None:
        await release.wait()

    claims = ScriptedClaims({f"w{i}": [200] for i in range(4)})
    d = Dispatcher(
        claims,
        blocked,
        CommitTracker(),
        RecordingObserver(),
        lambda o: None,
        concurrency=1,
        queue_size=1,
    )
    d.start()
    try:
        await d.submit({"wake_id": "w0"})  # taken by the worker
        await d.submit({"wake_id": "w1"})  # fills the queue
        put = asyncio.create_task(d.submit({"wake_id": "w2"}))
        await asyncio.sleep(0.2)
        assert not put.done()  # the reader waits: nothing is dropped
        release.set()
        async with asyncio.timeout(5):
            await put
    finally:
        await d.stop()
    assert aiohttp is not None


async def test_a_wake_whose_claim_answer_was_lost_comes_through_when_announced_again() -> None:
    """The claim reached the server but its answer did not (server frozen or killed
    mid-request): the retry gets 409, the lease runs out, the server announces the
    wake again - and that announcement must be handled, not dropped as a duplicate."""
    handled: list[str] = []

    async def handler(wake: dict[str, Any]) -> None:
        handled.append(wake["wake_id"])

    claims = ScriptedClaims({"w": [0, 409, 200]})  # 0: no answer, retried
    tracker = CommitTracker("-1")
    d = Dispatcher(claims, handler, tracker, RecordingObserver(), lambda o: None)
    d.start()
    try:
        await d.submit({"wake_id": "w"})
        d.mark("o1")
        async with asyncio.timeout(5):
            while tracker.committed != "o1":
                await asyncio.sleep(0.01)
        assert handled == [] and d.stats.claims_skipped == 1
        await d.submit({"wake_id": "w"})  # re-announced after the lease ran out
        d.mark("o2")
        async with asyncio.timeout(5):
            while tracker.committed != "o2":
                await asyncio.sleep(0.01)
    finally:
        await d.stop()
    assert handled == ["w"] and claims.completed == ["w"]
    assert d.stats.duplicates == 0


async def test_a_healthy_session_ended_by_the_heartbeat_bridge_resets_the_backoff() -> None:
    """Two refused attempts, then a session healthy past `healthy_after`, then the
    heartbeats fail and the bridge ends it: the next wait starts a fresh sequence
    (backoff reset after a healthy session), not try 3 of the old one."""
    from runner import RecordingObserver as Recorder
    from runner import Runner

    state = {"stream_calls": 0, "hb_ok": True}

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and request.path.endswith("/heartbeat"):
            return web.json_response({}, status=200 if state["hb_ok"] else 503)
        if request.method == "POST":
            return web.json_response({"id": "r1", "wake_stream": "/runners/r1/wake"}, status=201)
        state["stream_calls"] += 1
        if state["stream_calls"] <= 2:
            return web.json_response({"error": {"code": "INTERNAL"}}, status=503)
        resp = web.StreamResponse(headers=sse_headers("0.2"))
        await resp.prepare(request)
        while True:
            await resp.write(b": keepalive\n\n")
            await asyncio.sleep(0.1)

    app_runner, url = await stub(handler)
    obs = Recorder()
    r = Runner(
        server=url, runner_id="r1", observer=obs, heartbeat_interval=0.2, backoff_max=0.05,
        healthy_after=0.3,
    )  # fmt: skip
    task = asyncio.create_task(r.run())
    try:
        async with asyncio.timeout(10):
            while r.snapshot().stream_age_s < 0.5:  # healthy by now
                await asyncio.sleep(0.02)
        assert [tries for _, tries, _ in obs.of("backoff_wait")] == [1, 2]
        state["hb_ok"] = False
        async with asyncio.timeout(10):
            while len(obs.of("backoff_wait")) < 3:
                await asyncio.sleep(0.02)
        wait, tries, reason = obs.of("backoff_wait")[2]
        assert reason is EndReason.HEARTBEAT_FAILURES
        assert (wait, tries) == (0.0, 0)  # a healthy end: afresh, at once
    finally:
        r.stop()
        async with asyncio.timeout(10):
            await task
        await app_runner.cleanup()


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


async def test_a_cancelled_shell_handler_leaves_no_process_behind(tmp_path: Path) -> None:
    """Stopping the runner cancels running handlers: what their shell started dies too."""
    pidfile = tmp_path / "pid"
    handle = shell_handler(f"cat >/dev/null; sleep 30 & echo $! > {pidfile}; wait")
    task = asyncio.create_task(handle({"wake_id": "w"}))
    pid = 0
    try:
        async with asyncio.timeout(10):
            while not (pidfile.exists() and pidfile.read_text().strip()):
                await asyncio.sleep(0.02)
        pid = int(pidfile.read_text())
        assert _alive(pid)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(5):
            while _alive(pid):
                await asyncio.sleep(0.02)
    finally:
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)


async def test_shell_handler_gets_the_wake_json_on_stdin_and_its_id_in_env(tmp_path: Path) -> None:
    out = tmp_path / "out"
    wake = {"wake_id": "wk_1", "type": "wake", "stream": "/s", "payload": {"n": 1}}
    await shell_handler(f'cat > {out}; echo "$PULLWAKE_WAKE_ID" >> {out}.id')(wake)
    assert json.loads(out.read_text()) == wake
    assert (tmp_path / "out.id").read_text() == "wk_1\n"
    with pytest.raises(HandlerFailed, match="status 3"):  # the claim is left to expire
        await shell_handler("cat >/dev/null; exit 3")(wake)
