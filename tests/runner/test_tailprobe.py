"""The idle bound and the tail probe: no healthy idle stream is dropped, whatever the
server says (or does not say) while idle, yet a dead read with wakes waiting ends
`tail_ahead` within interval + grace, and a frozen server ends `idle_timeout`.

Real loopback sockets, a scripted aiohttp stub (tests/support/fakeserver.serve)
playing the real agents-server's idle behaviour (no Stream-Keepalive-Interval
header, no comments) or plain silence; timings scaled down (probe every 0.2 s).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from pullwake.core.protocol import H_NEXT_OFFSET, EndReason, LiveMode
from pullwake.runner import RecordingObserver, Runner
from pullwake.runner import session as session_module
from pullwake.runner.config import RunnerConfig
from pullwake.runner.errors import SessionEnded
from pullwake.runner.session import DEFAULT_IDLE_S, Session, idle_bound
from pullwake.runner.tailprobe import ahead, offset_key
from pullwake.runner.transport import open_stream_session
from tests.support.fakeserver import FakeServer, forever, serve
from tests.support.waits import until

O1 = "0000000000000000_0000000000000127"
O2 = "0000000000000000_0000000000000254"
WAKE = {"type": "wake", "subscription_id": "runner:r1:abc", "stream": "t/e1/main", "generation": 1}


@dataclass
class Stub:
    """The wake stream: `tail` answers HEAD / offset=now; the live read is scripted."""

    tail: str = O1
    head_supported: bool = True
    probes_hang: bool = False
    live_dead: bool = True  # after the first batch the live read never writes again
    chatter: int = 0  # idle control events (every 0.3 s) before the live read goes silent
    deliver: asyncio.Event = field(default_factory=asyncio.Event)
    heads: int = 0
    nows: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD" or request.query.get("offset") == "now":
            if self.probes_hang:
                await forever()
            if request.method == "HEAD":
                self.heads += 1
                if not self.head_supported:
                    return web.Response(status=405)
                return web.Response(headers={H_NEXT_OFFSET: self.tail})
            self.nows += 1
            return web.json_response([], headers={H_NEXT_OFFSET: self.tail})
        if request.query.get("live") == "sse":
            return await self._sse(request)
        if request.query.get("live") == "long-poll":
            if self.live_dead:
                await forever()  # a long-poll that never answers (dead connection)
            await self.deliver.wait()
            return web.json_response([WAKE], headers={H_NEXT_OFFSET: self.tail})
        return web.json_response([WAKE], headers={H_NEXT_OFFSET: O1})  # catch-up

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        # the real server: no keepalive header, no comments
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(
            b'event: data\ndata:[{"type":"wake","subscription_id":"runner:r1:abc"}]\n\n'
            b'event: control\ndata:{"streamNextOffset":"' + O1.encode() + b'","upToDate":true}\n\n'
        )
        for _ in range(self.chatter):
            await asyncio.sleep(0.3)
            await resp.write(
                b'event: control\ndata:{"streamNextOffset":"' + O1.encode() + b'"}\n\n'
            )
        if not self.live_dead:
            await self.deliver.wait()
            await resp.write(
                b'event: data\ndata:[{"type":"wake","subscription_id":"runner:r1:abc"}]\n\n'
                b'event: control\ndata:{"streamNextOffset":"' + O2.encode() + b'"}\n\n'
            )
        await forever()
        return resp


class Hooks:
    def __init__(self) -> None:
        self.idle: float | None = None
        self.offsets: list[str] = []

    def connected(self, idle_timeout: float | None) -> None:
        self.idle = idle_timeout

    def got_bytes(self) -> None:
        pass

    async def wakes(self, events: Any) -> None:
        pass

    def offset(self, next_offset: str) -> None:
        self.offsets.append(next_offset)


async def run_session(
    stub: Stub, within: float, **cfg: Any
) -> tuple[SessionEnded | None, float, Session, Hooks]:
    """Run one session for up to `within` s: (its end or None if still up, seconds, ...)."""
    app_runner, url = await serve(stub.handle)
    config = RunnerConfig(server=url, runner_id="r1", **cfg)
    http = open_stream_session(config)
    hooks = Hooks()
    s = Session(1, http, config, url + "/runners/r1/wake", "-1", hooks)
    started = time.monotonic()
    try:
        async with asyncio.timeout(within):
            await s.run()
    except SessionEnded as end:
        return end, time.monotonic() - started, s, hooks
    except TimeoutError:
        return None, time.monotonic() - started, s, hooks
    finally:
        await http.close()
        await app_runner.cleanup()
    raise AssertionError("a session never returns")


FAST = {"tail_probe_interval": 0.2, "tail_probe_grace": 0.2}


def test_offsets_compare_only_when_concrete() -> None:
    assert ahead(O2, O1) and not ahead(O1, O2) and not ahead(O1, O1)
    assert not ahead(O2, "-1") and not ahead("now", O1) and offset_key("junk") is None


def test_the_idle_bound_without_a_keepalive_header_exceeds_the_real_servers_30_s() -> None:
    config = RunnerConfig(server="http://127.0.0.1:1", runner_id="r1")
    assert idle_bound(config, {}) == DEFAULT_IDLE_S == 45.0 > 30.0


async def test_a_healthy_server_silent_while_idle_is_never_dropped() -> None:
    """No header, no comment, no control event: only the probe's `tail == offset`
    proves the stream healthy, and the idle watchdog (0.5 s here) defers to it for
    ten times its bound."""
    stub = Stub(tail=O1)
    end, _took, session, hooks = await run_session(stub, 5.0, idle_timeout=0.5, **FAST)
    assert end is None, end
    assert hooks.offsets == [O1] and hooks.idle == 0.5
    assert session.probe is not None and session.probe.probes >= 10
    assert stub.heads >= 10


async def test_a_dead_read_with_wakes_waiting_ends_tail_ahead_within_interval_plus_grace() -> None:
    stub = Stub(tail=O2)  # a wake was appended; the live read never delivers it
    end, took, _, _ = await run_session(stub, 10.0, **FAST)
    assert end is not None and end.reason is EndReason.TAIL_AHEAD, end
    assert O2 in end.detail and O1 in end.detail
    assert 0.3 < took < 0.2 + 0.2 + 1.0  # interval + grace (+ ticks, connect, slack)


async def test_a_wake_the_live_read_delivers_within_the_grace_is_no_fault() -> None:
    stub = Stub(tail=O2, live_dead=False)

    async def deliver_late() -> None:
        await asyncio.sleep(0.3)  # after the first probe saw the tail ahead
        stub.deliver.set()

    task = asyncio.create_task(deliver_late())
    end, _, _session, hooks = await run_session(
        stub, 2.0, tail_probe_interval=0.2, tail_probe_grace=0.5
    )
    await task
    assert end is None, end
    assert hooks.offsets == [O1, O2]


async def test_once_the_server_talked_while_idle_silence_past_the_bound_is_death(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that sends control events while idle (the real one: a pair every
    30 s) and then goes silent on this read: good probes (nothing waiting) no
    longer excuse the silence, the watchdog fires at its bound after the last byte."""
    monkeypatch.setattr(session_module, "IDLE_TRAFFIC_GAP_S", 0.2)
    stub = Stub(tail=O1, chatter=3)
    end, took, session, _ = await run_session(stub, 10.0, idle_timeout=1.0, **FAST)
    assert end is not None and end.reason is EndReason.IDLE_TIMEOUT, end
    assert session.idle_traffic
    assert 0.9 + 1.0 <= took < 0.9 + 1.0 + 1.0  # 3 x 0.3 s of chatter, then the 1 s bound


async def test_a_frozen_server_ends_idle_timeout_at_the_bound() -> None:
    """Silent live read and probes that never answer: nothing proves the stream
    alive, so the watchdog fires at its bound after the last byte."""
    stub = Stub(tail=O1, probes_hang=True)
    end, took, _, _ = await run_session(stub, 10.0, idle_timeout=1.0, connect_timeout=0.3, **FAST)
    assert end is not None and end.reason is EndReason.IDLE_TIMEOUT, end
    assert "no tail probe answered" in end.detail
    assert 1.0 <= took < 1.0 + 1.0


async def test_without_head_the_probe_asks_offset_now() -> None:
    stub = Stub(tail=O2, head_supported=False)
    end, _, _, _ = await run_session(stub, 10.0, **FAST)
    assert end is not None and end.reason is EndReason.TAIL_AHEAD
    assert stub.heads == 1 and stub.nows >= 1  # HEAD tried once, then offset=now


async def test_a_long_poll_that_never_answers_while_wakes_wait_ends_tail_ahead() -> None:
    stub = Stub(tail=O2)
    end, took, _, _ = await run_session(stub, 10.0, live=LiveMode.LONG_POLL, **FAST)
    assert end is not None and end.reason is EndReason.TAIL_AHEAD, end
    assert took < 2.0  # long before the 35 s per-request bound


@pytest.mark.parametrize("interval", [0.0])
async def test_probe_off_means_the_plain_watchdog(interval: float) -> None:
    stub = Stub(tail=O2)
    end, took, session, _ = await run_session(
        stub, 10.0, idle_timeout=0.5, tail_probe_interval=interval
    )
    assert session.probe is None
    assert end is not None and end.reason is EndReason.IDLE_TIMEOUT
    assert 0.5 <= took < 1.5


async def test_the_runner_reports_tail_ahead_before_the_session_it_ends() -> None:
    """In-process Runner: the probe's firing reaches observers (a span event on the
    session in OTel) before the session ends `tail_ahead`, and the runner reconnects."""
    stub = Stub(tail=O2)
    fake = FakeServer(stub.handle)
    app_runner, url = await fake.start()
    obs = RecordingObserver()
    r = Runner(
        server=url, runner_id="r1", observer=obs, heartbeat_interval=5.0, backoff_max=0.2,
        handler=_ignore, **FAST,
    )  # fmt: skip
    task = asyncio.create_task(r.run())
    try:
        await until(lambda: len(obs.of("session_ended")) >= 1, 10, "a session end")
        (first,) = obs.of("session_ended")[:1]
        assert first[0].reason is EndReason.TAIL_AHEAD
        fired = [i for i, (m, a) in enumerate(obs.calls) if m == "detector_fired"]
        ended = [i for i, (m, a) in enumerate(obs.calls) if m == "session_ended"]
        assert fired and fired[0] < ended[0]
        assert obs.calls[fired[0]][1][1] == "tail_ahead"
        await until(lambda: len(obs.of("session_started")) >= 2, 10, "a reconnect")
    finally:
        r.stop()
        async with asyncio.timeout(10):
            await task
        await app_runner.cleanup()


async def test_a_stream_that_went_back_is_ended_as_gone() -> None:
    """The resumed offset is past the stream's tail: a recreated stream (fresh
    database).  Ended as 410, so the runner reads it from the start."""
    stub = Stub(tail=O1)
    app_runner, url = await serve(stub.handle)
    config = RunnerConfig(server=url, runner_id="r1", live=LiveMode.LONG_POLL)
    http = open_stream_session(config)
    s = Session(1, http, config, url + "/runners/r1/wake", O2, Hooks())
    try:
        with pytest.raises(SessionEnded) as ended:
            async with asyncio.timeout(10):
                await s.run()
    finally:
        await http.close()
        await app_runner.cleanup()
    assert ended.value.status == 410 and "went back" in ended.value.detail


async def _ignore(n: dict[str, Any]) -> None:
    pass


async def test_the_wake_stream_path_is_requested_raw() -> None:
    """A Durable Streams server keys streams by the raw path: `/runners/a%40b/wake` is
    not `/runners/a@b/wake`.  Reads and probes send the path as the server named it."""
    stub = Stub(tail=O2)
    seen: list[str] = []

    async def recording(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.raw_path.split('?')[0]}")
        return await stub.handle(request)

    app_runner, url = await serve(recording)
    config = RunnerConfig(server=url, runner_id="r1", **FAST)
    http = open_stream_session(config)
    s = Session(1, http, config, url + "/runners/a%40b/wake", "-1", Hooks())
    try:
        with pytest.raises(SessionEnded):
            async with asyncio.timeout(10):
                await s.run()
    finally:
        await http.close()
        await app_runner.cleanup()
    assert set(seen) == {"GET /runners/a%40b/wake", "HEAD /runners/a%40b/wake"}
