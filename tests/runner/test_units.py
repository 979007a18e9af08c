"""Pure parts of the runner, no sockets: offsets, error mapping, config, reconnect policy."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

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
from tests.support.waits import until


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
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 8_000


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


# --- reconnect waits (real `backoff` sequence, real event loop timers) -----------------
class Elapsed:
    """Records each `elapsed(attempt)` call with its time, and the announced waits."""

    def __init__(self) -> None:
        self.fired: list[tuple[int, float]] = []
        self.waits: list[tuple[float, int, EndReason]] = []

    def __call__(self, attempt: int) -> None:
        self.fired.append((attempt, time.monotonic()))

    def on_wait(self, wait: float, tries: int, reason: EndReason) -> None:
        self.waits.append((wait, tries, reason))


async def test_failures_back_off_and_a_fresh_end_starts_afresh() -> None:
    rec_log = Elapsed()
    rec = Reconnector(rec_log, backoff_max=0.02, on_wait=rec_log.on_wait)
    fail = EndReason.CONNECT_ERROR
    plan = [(fail, False), (fail, False), (EndReason.ROTATED, True), (fail, False)]
    for attempt, (reason, fresh) in enumerate(plan, start=1):
        rec.schedule(attempt, reason, fresh)
        await until(lambda n=attempt: len(rec_log.fired) == n, 5)
    assert [tries for _, tries, _ in rec_log.waits] == [1, 2, 0, 1]  # fresh restarts the count
    assert all(0 <= w <= 0.02 for w, _, _ in rec_log.waits)
    assert rec_log.waits[2][0] == 0.0
    assert [a for a, _ in rec_log.fired] == [1, 2, 3, 4]
    assert rec.cycles == 1 and not rec.waiting


async def test_waits_follow_the_exponential_sequence_with_full_jitter() -> None:
    rec_log = Elapsed()
    seen: list[float] = []

    def no_jitter(value: float) -> float:
        seen.append(value)
        return 0.0

    rec = Reconnector(rec_log, backoff_max=8, on_wait=rec_log.on_wait, jitter=no_jitter)
    for attempt in range(1, 7):
        rec.schedule(attempt, EndReason.ERROR, fresh=False)
    assert seen == [1, 2, 4, 8, 8, 8]
    await until(lambda: len(rec_log.fired) == 1, 5)  # each schedule replaced the last
    assert rec_log.fired[0][0] == 6


async def test_cut_short_ends_a_long_wait_at_once() -> None:
    rec_log = Elapsed()
    rec = Reconnector(rec_log, backoff_max=3600, factor=100, on_wait=rec_log.on_wait)
    rec.schedule(1, EndReason.CONNECT_ERROR, fresh=False)
    rec.schedule(2, EndReason.CONNECT_ERROR, fresh=False)  # waits drawn from [0, 200 s)
    assert rec.waiting and not rec.cut_short(1)  # not the wait in progress
    started = time.monotonic()
    assert rec.cut_short(2)
    await until(lambda: rec_log.fired, 5)
    assert rec_log.fired[0][0] == 2 and rec_log.fired[0][1] - started < 1.0
    assert rec.cycles == 1 and rec.tries == 0  # the cut started a fresh sequence
    rec.schedule(3, EndReason.CONNECT_ERROR, fresh=False)
    assert rec_log.waits[-1][1] == 1
    rec.cancel()
    assert not rec.waiting
