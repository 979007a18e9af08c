"""The fault matrix: every way a stream dies, against the real server and signals.

For each fault (default profile) the runner must leave `streaming` within its
bound (FIN/RST/EOF: 1 s; silent faults: idle_timeout + 1 s; plus
`LOAD_MARGIN_S` for a shared machine), count reconnects, say
`stream_connected: false` for the whole outage, come back with a new
`stream_connected_since` within the backoff wait + 1 s, and handle every wake
published during a partition exactly once.  The legacy profile must show the
seed's lie under a kill -9 behind the proxy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pullwake.tools.faultproxy import ThreadedFaultProxy
from tests.runner.harness import (
    IDLE_TIMEOUT_S,
    LOAD_MARGIN_S,
    STREAMING,
    Handled,
    Outage,
    publish,
    start_runner,
    unix,
    wait_state,
    wait_streaming,
)
from tests.support.fakeserver import FakeServer, answering
from tests.support.netns import INNER_TIMEOUT_S, in_own_netns
from tests.support.procs import ServerProcess, http_json, running
from tests.support.waits import holds_for

pytestmark = pytest.mark.slow

EOF_BOUND_S = 1.0
SILENT_BOUND_S = IDLE_TIMEOUT_S + 1.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path, keepalive=0.5).start()
    s.register("r1")
    yield s
    s.stop()


# A claim lease longer than the outage, so a handled claim's completion (retried
# while its lease may hold) gets through to the restarted server; short enough that a
# claim the dying server recorded but never answered is re-announced within the test
# (the runner must then handle it, not drop it).
LEASE = ["--claim-lease-ms", "8000"]


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"]
)
def test_server_death_and_restart_on_the_same_db(tmp_path: Path, sig: signal.Signals) -> None:
    """A dead server takes no wakes, so the partition's wakes are the ones it acknowledged
    just before dying (read, claimed or handled maybe, maybe not) and the ones the
    restarted server takes before the runner is back: each handled exactly once."""
    server = ServerProcess(tmp_path, keepalive=0.5, extra=LEASE).start()
    server.register("r1")
    handled = Handled(tmp_path)
    r = start_runner(tmp_path, server.url, "r1", handled)
    with running(server, r):
        outage = Outage(r)
        first = publish(server, "r1", 2)
        handled.wait_for(first, 10)
        in_flight = publish(server, "r1", 3)  # acknowledged; not waited for
        outage.inject()
        server.signal(sig)
        outage.wait_left_streaming(EOF_BOUND_S)
        server.wait(timeout=10)
        outage.assert_down_for(1.5)
        restarted = ServerProcess(
            tmp_path, port=server.port, db=server.db, keepalive=0.5, extra=LEASE
        )
        healed_at = time.time()
        restarted.start()
        with running(restarted):
            early = publish(restarted, "r1", 2)  # most likely before the runner is back
            outage.wait_recovered(healed_at)
            later = publish(restarted, "r1", 3)
            handled.wait_for(in_flight + early + later, 25)
            handled.assert_exactly_once(first + in_flight + early + later)


def test_server_frozen_sigstop_then_sigcont(tmp_path: Path, server: ServerProcess) -> None:
    """Wakes acknowledged just before the freeze, and wakes published into the frozen
    server (they wait in its accept queue and are taken when it thaws): exactly once."""
    handled = Handled(tmp_path)
    r = start_runner(tmp_path, server.url, "r1", handled)
    with running(r), ThreadPoolExecutor(2) as pool:
        outage = Outage(r)
        in_flight = publish(server, "r1", 2)  # acknowledged; not waited for
        outage.inject()
        os.kill(server.pid, signal.SIGSTOP)
        try:
            s = outage.wait_left_streaming(SILENT_BOUND_S)
            assert outage.first_reason == "idle_timeout"
            during = [pool.submit(publish, server, "r1") for _ in range(2)]
            outage.assert_down_for(1.0)
            assert not any(f.done() for f in during)  # the server really is frozen
        finally:
            healed_at = time.time()
            os.kill(server.pid, signal.SIGCONT)
        outage.wait_recovered(healed_at)
        thawed = [w for f in during for w in f.result(10)]
        later = publish(server, "r1", 2)
        handled.wait_for(in_flight + thawed + later, 25)
        handled.assert_exactly_once(in_flight + thawed + later)
        assert s["diagnostics"]["last_reconnect_reason"] == "idle_timeout"


@pytest.mark.parametrize("mode", ["half_open", "blackhole"])
def test_proxy_partition_loses_no_wake(tmp_path: Path, server: ServerProcess, mode: str) -> None:
    handled = Handled(tmp_path)
    with ThreadedFaultProxy(upstream=("127.0.0.1", server.port)) as proxy:
        r = start_runner(tmp_path, proxy.url, "r1", handled)
        with running(r):
            outage = Outage(r)
            before = publish(server, "r1", 2)
            handled.wait_for(before, 10)
            outage.inject()
            proxy.set_mode(mode)
            s = outage.wait_left_streaming(SILENT_BOUND_S)
            assert outage.first_reason in ("idle_timeout", "heartbeat_failures")
            during = publish(server, "r1", 4)  # straight to the server: the runner cannot see
            outage.assert_down_for(1.5)
            assert not set(during) & set(handled.ids())
            healed_at = time.time()
            proxy.set_mode("pass")
            outage.wait_recovered(healed_at)
            handled.wait_for(during, 15)
            after = publish(server, "r1", 2)
            handled.wait_for(after, 10)
            handled.assert_exactly_once(before + during + after)
            assert s["diagnostics"]["stream_connected"] is False


@pytest.mark.parametrize("status", [500, 503])
def test_stream_answering_5xx_backs_off_and_loses_no_wake(
    tmp_path: Path, server: ServerProcess, status: int
) -> None:
    """The live stream is cut and every new stream request answers `status` (a gateway
    whose backend is gone; the runners API still answers): the runner backs off, never
    claims to stream, and when the real server is reachable again it is back within
    the backoff wait + 1 s and handles what was published meanwhile exactly once."""
    handled = Handled(tmp_path)
    stub = FakeServer(answering(status))
    with (
        stub.in_thread() as stub_url,
        ThreadedFaultProxy(upstream=("127.0.0.1", server.port)) as proxy,
    ):
        r = start_runner(tmp_path, proxy.url, "r1", handled)
        with running(r):
            outage = Outage(r)
            before = publish(server, "r1", 2)
            handled.wait_for(before, 10)
            outage.inject()
            stub_port = int(stub_url.rsplit(":", 1)[1])
            proxy.set_upstream(("127.0.0.1", stub_port))  # new connections reach the stub
            proxy.set_mode("close")  # FIN the live stream (and anything else open)
            proxy.set_mode("pass")
            outage.wait_left_streaming(EOF_BOUND_S)
            during = publish(server, "r1", 3)  # straight to the server: the runner cannot see
            outage.assert_down_for(1.0)
            base = outage.before["diagnostics"]["reconnect_count"]
            s = wait_state(
                r,
                lambda s: (
                    s["diagnostics"]["reconnect_count"] >= base + 3
                    and s["diagnostics"]["last_reconnect_reason"] == "http_error"
                ),
                20,
                f"3 reconnects answered {status}",
            )
            assert s["state"] != STREAMING
            assert s["diagnostics"]["stream_connected"] is False
            assert s["diagnostics"]["last_heartbeat_ok"] is True  # the API works; the stream not
            assert str(status) in s["diagnostics"]["last_error"]
            assert http_json("GET", r.status_url + "/readyz")[0] == 503
            waits = [e["wait_s"] for e in s["reconnects"] if e["wait_s"] is not None]
            assert waits and all(0 <= w <= 2.0 for w in waits)
            # backoff, not a storm: one stream request per reconnect attempt
            assert stub.stream_requests <= s["diagnostics"]["reconnect_count"] + 1
            assert not set(during) & set(handled.ids())
            healed_at = time.time()
            proxy.set_upstream(("127.0.0.1", server.port))
            outage.wait_recovered(healed_at)
            handled.wait_for(during, 15)
            after = publish(server, "r1", 2)
            handled.wait_for(after, 10)
            handled.assert_exactly_once(before + during + after)


@pytest.mark.root
@pytest.mark.timeout(INNER_TIMEOUT_S + 60)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a network namespace and iptables)")
@in_own_netns
def test_kernel_blackhole_with_iptables(tmp_path: Path, server: ServerProcess) -> None:
    """DROP on loopback between runner and proxy; the server stays reachable for publish.
    The rules go into the INPUT chain of the test's own network namespace."""
    handled = Handled(tmp_path)
    with ThreadedFaultProxy(upstream=("127.0.0.1", server.port)) as proxy:
        rules = [
            ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(proxy.port), "-j", "DROP"],
            ["INPUT", "-i", "lo", "-p", "tcp", "--sport", str(proxy.port), "-j", "DROP"],
        ]
        r = start_runner(tmp_path, proxy.url, "r1", handled)
        with running(r):
            outage = Outage(r)
            outage.inject()
            added: list[list[str]] = []
            try:
                for rule in rules:
                    subprocess.run(["iptables", "-I", *rule], check=True, timeout=10)
                    added.append(rule)
                outage.wait_left_streaming(SILENT_BOUND_S)
                during = publish(server, "r1", 3)
                outage.assert_down_for(1.0)
            finally:
                for rule in added:
                    subprocess.run(["iptables", "-D", *rule], check=False, timeout=10)
                healed_at = time.time()
            outage.wait_recovered(healed_at)
            handled.wait_for(during, 15)
            handled.assert_exactly_once(during)


def test_legacy_profile_reproduces_the_seed_under_kill_9(
    tmp_path: Path, server: ServerProcess
) -> None:
    """The seed's runner, on purpose: the server dies, the runner says all is well."""
    handled = Handled(tmp_path)
    with ThreadedFaultProxy(upstream=("127.0.0.1", server.port)) as proxy:
        r = start_runner(
            tmp_path, proxy.url, "r1", handled, "--profile", "legacy", "--heartbeat-interval", "0.5"
        )
        with running(r):
            before = wait_streaming(r)
            assert before["live_mode"] == "long-poll"
            server.signal(signal.SIGKILL)
            server.wait(10)
            s = wait_state(
                r,
                lambda s: s["diagnostics"]["consecutive_heartbeat_failures"] >= 3,
                15,
                "heartbeats failing",
            )
            # an outage the runner should have noticed by now, and does not: for a whole
            # second it keeps saying "streaming, connected, no reconnect"
            holds_for(
                lambda: (
                    (st := r.status())["state"] == STREAMING
                    and st["diagnostics"]["reconnect_count"] == 0
                ),
                1.0,
                "the legacy runner's claim to be streaming",
            )
            s = r.status()
            d = s["diagnostics"]
            assert s["state"] == STREAMING
            assert d["stream_connected"] is True
            assert d["reconnect_count"] == 0
            assert d["stream_connected_since"] == before["diagnostics"]["stream_connected_since"]
            assert s["stream_age_seconds"] > before["stream_age_seconds"] + 1.0
            assert d["last_heartbeat_ok"] is False
            assert d["consecutive_heartbeat_failures"] >= 3
            assert s["reconnects"] == []
            # and when the server returns, the read resumes silently: nothing happened
            restarted = ServerProcess(tmp_path, port=server.port, db=server.db, keepalive=0.5)
            with running(restarted.start()):
                wait_state(
                    r, lambda s: s["diagnostics"]["last_heartbeat_ok"] is True, 15, "heartbeat ok"
                )
                wake = publish(restarted, "r1")
                handled.wait_for(wake, 70)  # the hidden retry may sit in a long sleep
                s = r.status()
                assert s["diagnostics"]["reconnect_count"] == 0
                assert (
                    s["diagnostics"]["stream_connected_since"]
                    == (before["diagnostics"]["stream_connected_since"])
                )


def test_upstream_profile_detects_by_heartbeat_bridge_only(
    tmp_path: Path, server: ServerProcess
) -> None:
    """No idle watchdog, errors retried inside the stream layer: a half-open proxy is
    noticed only when K=2 heartbeats fail (the original's mitigation, reproduced)."""
    with ThreadedFaultProxy(upstream=("127.0.0.1", server.port)) as proxy:
        r = start_runner(
            tmp_path, proxy.url, "r1", Handled(tmp_path), "--profile", "upstream",
            "--heartbeat-interval", "0.5",
        )  # fmt: skip
        with running(r):
            outage = Outage(r)
            assert outage.before["detectors"]["idle_watchdog"] is False
            outage.inject()
            proxy.set_mode("half_open")
            # K=2 heartbeats of 0.5 s interval, each bounded by a 0.5 s timeout
            s = outage.wait_left_streaming(2 * 0.5 + 0.5 + 1.0)
            assert outage.first_reason == "heartbeat_failures"
            assert s["diagnostics"]["consecutive_heartbeat_failures"] >= 2
            # with no connect timeout, each new attempt hangs on the held connection
            # until K more heartbeats fail: the bridge keeps cycling it
            s = outage.assert_down_for(2.0)
            reasons = {e["reason"] for e in s["reconnects"][1:]}
            assert reasons <= {"heartbeat_failures", "connect_error"}, reasons


def test_a_heartbeat_that_gets_through_cuts_a_long_backoff_wait_short(
    tmp_path: Path, server: ServerProcess
) -> None:
    r = start_runner(
        tmp_path, server.url, "r1", Handled(tmp_path), "--backoff-max", "30",
        "--heartbeat-interval", "0.5",
    )  # fmt: skip
    with running(r):
        wait_streaming(r)
        server.signal(signal.SIGKILL)
        server.wait(10)

        def long_wait(s: dict[str, Any]) -> bool:
            last = s["reconnects"][-1] if s["reconnects"] else {}
            return (last.get("wait_s") or 0) >= 3.0

        s = wait_state(r, long_wait, 40, "a backoff wait of 3 s or more")
        wait_ends = unix(s["reconnects"][-1]["at"]) + s["reconnects"][-1]["wait_s"]
        restarted = ServerProcess(tmp_path, port=server.port, db=server.db, keepalive=0.5)
        with running(restarted.start()):
            back = time.time()
            if back > wait_ends - 1.0:
                pytest.skip("server restart took most of the drawn wait; nothing to cut")
            s = wait_streaming(r, timeout=30)
            took = time.time() - back
            assert time.time() < wait_ends, "waited the backoff out instead of cutting it"
            assert took <= 0.5 + 0.5 + 1.0 + LOAD_MARGIN_S  # next heartbeat + connect


@pytest.mark.root
@pytest.mark.timeout(INNER_TIMEOUT_S + 60)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a network namespace and iptables)")
@in_own_netns
def test_tcp_keepalive_alone_catches_a_dead_path(tmp_path: Path, server: ServerProcess) -> None:
    """Idle watchdog pushed out to 60 s: TCP keepalive (5 s + 3 x 1 s) must end the stream."""
    with ThreadedFaultProxy(upstream=("127.0.0.1", server.port)) as proxy:
        r = start_runner(
            tmp_path, proxy.url, "r1", Handled(tmp_path), "--idle-timeout", "60",
            "--heartbeat-failure-threshold", "1000",
        )  # fmt: skip
        rules = [
            ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(proxy.port), "-j", "DROP"],
            ["INPUT", "-i", "lo", "-p", "tcp", "--sport", str(proxy.port), "-j", "DROP"],
        ]
        with running(r):
            outage = Outage(r)
            added: list[list[str]] = []
            try:
                outage.inject()
                for rule in rules:
                    subprocess.run(["iptables", "-I", *rule], check=True, timeout=10)
                    added.append(rule)
                outage.wait_left_streaming(5 + 3 * 1 + 1.0)
                assert outage.first_reason == "error"  # ETIMEDOUT from the kernel
                assert outage.detected_s >= 4.0  # not the watchdog, not the bridge
            finally:
                for rule in added:
                    subprocess.run(["iptables", "-D", *rule], check=False, timeout=10)
