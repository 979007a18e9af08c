"""Pure parts of the runner, no sockets: offsets, error mapping, config, reconnect policy."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pullwake import runner
from pullwake.core.protocol import H_KEEPALIVE, EndReason, LiveMode
from pullwake.runner.config import PROFILES, ConfigError, RunnerConfig, parse_listen, profile_named
from pullwake.runner.errors import SessionEnded, classify, describe
from pullwake.runner.offsets import CommitTracker, OffsetStore
from pullwake.runner.reconnect import Reconnector
from pullwake.runner.session import idle_bound
from pullwake.runner.transport import keepalive_options, stream_timeout


def cfg(**kw: Any) -> RunnerConfig:
    return RunnerConfig(server="http://127.0.0.1:1", runner_id="r1", **kw)


# --- offsets -------------------------------------------------------------------------
def test_commit_waits_for_every_earlier_wake() -> None:
    t = CommitTracker("-1")
    a, b = t.add_item(), t.add_item()
    assert not t.add_mark("o2")
    c = t.add_item()
    assert not t.add_mark("o3")
    assert not t.done(b)  # b finished first: a still runs, nothing moves
    assert t.committed == "-1"
    assert t.done(a)
    assert t.committed == "o2"
    assert t.done(c)
    assert t.committed == "o3"
    assert t.in_flight == 0


def test_mark_with_nothing_pending_commits_at_once() -> None:
    t = CommitTracker("o1")
    assert t.add_mark("o2")
    assert not t.add_mark("o2")  # same offset again: no move


@given(st.permutations(list(range(8))))
def test_commit_never_passes_an_unfinished_wake(order: list[int]) -> None:
    t = CommitTracker("-1")
    tickets = []
    for i in range(8):
        tickets.append(t.add_item())
        t.add_mark(f"o{i:02d}")
    finished: set[int] = set()
    for i in order:
        t.done(tickets[i])
        finished.add(i)
        prefix = 0
        while prefix in finished:
            prefix += 1
        assert t.committed == ("-1" if prefix == 0 else f"o{prefix - 1:02d}")


def test_offset_store_round_trip_and_atomicity(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "offset"
    store = OffsetStore(path)
    assert store.load() == "-1"
    store.save("0000000000000001_0000000000000002")
    assert store.load() == "0000000000000001_0000000000000002"
    store.save("0000000000000001_0000000000000003")
    assert path.read_text() == "0000000000000001_0000000000000003\n"
    assert sorted(os.listdir(path.parent)) == ["offset"]  # no temp files left
    assert OffsetStore(None).load() == "-1"


def test_an_unusable_offset_file_is_one_line_at_start(tmp_path: Path) -> None:
    """Not a stream failing with 400 forever, nor commits that never persist."""
    clobbered = tmp_path / "clobbered"
    clobbered.write_text("<html>oops</html>\n")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    blocked = tmp_path / "a-file"
    blocked.touch()
    for path, message in [
        (tmp_path, "cannot read offset file"),
        (clobbered, "not an offset"),
        (binary, "cannot read offset file"),
        (blocked / "offset", "cannot read offset file"),
        (Path("/proc/pullwake-no-such-dir/offset"), "cannot create offset file directory"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            OffsetStore(path).load()
        assert "\n" not in str(info.value)


# --- error mapping -------------------------------------------------------------------
def test_classify() -> None:
    refused = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None),
        ConnectionRefusedError(111, "refused"),
    )
    assert classify(refused, connected=False) is EndReason.CONNECT_ERROR
    assert classify(TimeoutError(), connected=False) is EndReason.CONNECT_TIMEOUT
    assert classify(aiohttp.SocketTimeoutError(), connected=True) is EndReason.IDLE_TIMEOUT
    assert classify(aiohttp.ClientPayloadError("x"), connected=True) is EndReason.ERROR
    assert classify(ConnectionResetError(), connected=True) is EndReason.ERROR
    assert classify(aiohttp.ServerDisconnectedError(), connected=False) is (EndReason.CONNECT_ERROR)
    assert classify(ValueError("bad json"), connected=True) is EndReason.PROTOCOL_ERROR
    assert "ConnectionResetError" in describe(ConnectionResetError("boom"))


def test_which_ends_reset_the_backoff() -> None:
    assert SessionEnded(EndReason.ROTATED).resets_backoff
    assert SessionEnded(EndReason.ERROR, healthy=True).resets_backoff
    for reason in EndReason:
        if reason is not EndReason.ROTATED:
            assert not SessionEnded(reason).resets_backoff, reason
    assert "idle_timeout" in repr(SessionEnded(EndReason.IDLE_TIMEOUT, session=3))


# --- config and profiles ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"server": "ftp://x"}, "bad server URL"),
        ({"server": "http://x:99999"}, "bad port"),
        ({"runner_id": "no spaces"}, "bad runner id"),
        ({"principal": "nobody"}, "bad principal"),
        ({"heartbeat_interval": 0}, "heartbeat interval"),
        ({"idle_timeout": -1}, "idle timeout"),
        ({"heartbeat_failure_threshold": 0}, "threshold"),
        ({"server": "http://[::1"}, "bad server URL"),
        ({"heartbeat_interval": float("inf")}, "finite"),
        ({"backoff_max": float("inf")}, "finite"),
        ({"idle_timeout": float("inf")}, "finite"),
        ({"handler_timeout": -1}, "handler timeout"),
        ({"handler_timeout": float("nan")}, "handler timeout"),
    ],
)
def test_bad_config_is_one_line(kw: dict[str, Any], message: str) -> None:
    base = {"server": "http://127.0.0.1:1", "runner_id": "r1"} | kw
    with pytest.raises(ConfigError, match=message) as info:
        RunnerConfig(**base)
    assert "\n" not in str(info.value)


def test_profiles_only_configure_the_same_machinery() -> None:
    assert set(PROFILES) == {"default", "upstream", "legacy"}
    d, u, legacy = (profile_named(n) for n in ("default", "upstream", "legacy"))
    assert d.idle_watchdog and d.heartbeat_bridge and d.tcp_keepalive and not d.hidden_retry
    assert u.heartbeat_bridge and not u.idle_watchdog and not u.tcp_keepalive
    assert u.hidden_retry and u.forced_live is LiveMode.LONG_POLL  # legacy + the bridge
    assert legacy.hidden_retry and not (
        legacy.idle_watchdog or legacy.heartbeat_bridge or legacy.tcp_keepalive
    )
    assert cfg(profile=legacy).live_mode is LiveMode.LONG_POLL
    assert cfg(profile=legacy).bridge_threshold is None
    assert cfg(heartbeat_interval=10).lease_ms == 30_000
    with pytest.raises(ConfigError, match="unknown profile"):
        profile_named("nope")
    assert parse_listen("9000") == ("127.0.0.1", 9000)
    assert parse_listen("0.0.0.0:9") == ("0.0.0.0", 9)
    with pytest.raises(ConfigError):
        parse_listen("127.0.0.1:http")


def test_idle_bound_from_the_advertised_keepalive() -> None:
    assert idle_bound(cfg(), {H_KEEPALIVE: "0.5"}) == pytest.approx(1.5)
    # no header (the real agents-server): > its 30 s control-event pairs
    assert idle_bound(cfg(), {}) == 45.0
    assert idle_bound(cfg(), {H_KEEPALIVE: "junk"}) == 45.0
    assert idle_bound(cfg(idle_timeout=2.0), {H_KEEPALIVE: "5"}) == 2.0
    assert idle_bound(cfg(profile=PROFILES["upstream"]), {H_KEEPALIVE: "5"}) is None


def test_stream_timeouts_per_profile() -> None:
    t = stream_timeout(cfg(connect_timeout=3))
    # the tail probe tells a silent server from a dead one: no blind sock_read
    assert t.total is None and t.connect == 3 and t.sock_connect == 3 and t.sock_read is None
    assert stream_timeout(cfg(tail_probe_interval=0)).sock_read
    assert stream_timeout(cfg(profile=PROFILES["legacy"])).sock_read is None
    assert stream_timeout(cfg(profile=PROFILES["upstream"])).sock_read is None


def test_keepalive_options_apply_to_a_real_socket() -> None:
    opts = keepalive_options(runner.TcpKeepalive(idle_s=4, interval_s=1, count=3))
    with socket.socket() as s:
        for level, opt, value in opts:
            s.setsockopt(level, opt, value)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 4
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 10_000


def test_public_api_is_pinned() -> None:
    assert runner.__all__ == [
        "PROFILES",
        "ConfigError",
        "Handler",
        "HandlerFailed",
        "NullObserver",
        "Profile",
        "RecordingObserver",
        "Runner",
        "RunnerConfig",
        "RunnerObserver",
        "RunnerSnapshot",
        "SessionEnded",
        "TcpKeepalive",
    ]
    r = runner.Runner(server="http://127.0.0.1:1", runner_id="r1")
    assert r.phase.value == "stopped" and "r1" in repr(r)
    with pytest.raises(TypeError):
        runner.Runner(cfg(), runner_id="x")


# --- reconnect policy (real `backoff`, scripted attempts) ------------------------------
class Script:
    """Attempts that end with the given SessionEnded, in order; then block forever."""

    def __init__(self, ends: list[SessionEnded]) -> None:
        self.ends = ends
        self.calls: list[float] = []
        self.waits: list[tuple[float, int]] = []
        self.resets: list[EndReason] = []

    async def attempt(self) -> NoReturn:
        self.calls.append(time.monotonic())
        if self.ends:
            raise self.ends.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def run_script(script: Script, backoff_max: float, until: int) -> Reconnector:
    rec = Reconnector(
        script.attempt,
        backoff_max=backoff_max,
        on_wait=lambda w, tries, e: script.waits.append((w, tries)),
        on_reset=lambda e: script.resets.append(e.reason),
    )
    task = asyncio.create_task(rec.run())
    try:
        async with asyncio.timeout(10):
            while len(script.calls) < until:
                await asyncio.sleep(0.005)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return rec


async def test_failures_back_off_and_a_healthy_end_starts_afresh() -> None:
    fail = EndReason.CONNECT_ERROR
    script = Script(
        [
            SessionEnded(fail),
            SessionEnded(fail),
            SessionEnded(EndReason.ERROR, healthy=True),  # giveup: fresh sequence
            SessionEnded(EndReason.ROTATED),  # giveup too
            SessionEnded(fail),
        ]
    )
    rec = await run_script(script, backoff_max=0.02, until=6)
    assert [tries for _, tries in script.waits] == [1, 2, 1]  # tries restart after the reset
    assert all(0 <= w <= 0.02 for w, _ in script.waits)
    assert script.resets == [EndReason.ERROR, EndReason.ROTATED]
    assert rec.cycles == 3


async def test_cut_short_ends_a_long_wait() -> None:
    script = Script([SessionEnded(EndReason.CONNECT_ERROR)] * 3)
    rec = Reconnector(
        script.attempt,
        backoff_max=3600,
        factor=100,  # waits drawn from [0, 100 s): a cut is what ends them
        on_wait=lambda w, tries, e: script.waits.append((w, tries)),
        on_reset=lambda e: None,
    )

    task = asyncio.create_task(rec.run())
    try:
        async with asyncio.timeout(5):
            while not rec.waiting:
                await asyncio.sleep(0.005)
        calls = len(script.calls)
        started = time.monotonic()
        assert rec.cut_short()
        async with asyncio.timeout(5):
            while len(script.calls) == calls:
                await asyncio.sleep(0.005)
        assert time.monotonic() - started < 1.0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert rec.cycles == 2  # the cut started a fresh backoff sequence
