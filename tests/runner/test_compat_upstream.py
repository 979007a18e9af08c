"""The runner process against `pullwake server --compat upstream`: the real agents-server's
idle behaviour (no keepalive header, no comments, a pair of `control` events every
long-poll timeout on SSE, long-poll 204s).  A healthy idle stream stays up with no
reconnect; a live read made dead by a half-open proxy is found by the tail probe as
soon as a wake waits, and that wake is handled once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pullwake.tools.faultproxy import ThreadedFaultProxy
from tests.runner.harness import (
    LOAD_MARGIN_S,
    Handled,
    publish,
    start_runner,
    unix,
    wait_state,
    wait_streaming,
)
from tests.support.procs import ServerProcess, running
from tests.support.waits import holds_for

CONTROL_EVERY_S = 1.0  # the server's idle cycle (upstream: 30 s)


@pytest.fixture
def server(tmp_path: Path) -> ServerProcess:
    s = ServerProcess(
        tmp_path,
        long_poll_timeout=CONTROL_EVERY_S,
        extra=["--compat", "upstream"],
    ).start()
    yield s
    s.stop()


@pytest.mark.parametrize("live", ["sse", "long-poll"])
def test_an_idle_stream_stays_up_and_still_delivers(
    tmp_path: Path, server: ServerProcess, live: str
) -> None:
    """Idle bound 2.5 s (> the 1 s control cycle), watched for 4 x that: no reconnect."""
    handled = Handled(tmp_path)
    r = start_runner(
        tmp_path, server.url, "r1", handled, "--live", live, "--idle-timeout", "2.5",
        "--tail-probe-interval", "0.5",
    )  # fmt: skip
    with running(r):
        s = wait_streaming(r)
        # SSE: the idle bound; long-poll: the per-request bound (--long-poll-timeout 35)
        assert s["detectors"]["idle_timeout_s"] == (2.5 if live == "sse" else 35.0)
        holds_for(
            lambda: (
                r.status()["session"] == s["session"] and r.status()["state"] == "running.streaming"
            ),
            10.0,
            "the first session streaming",
        )
        wakes = publish(server, "r1", 3)
        handled.wait_for(wakes, 10)
        handled.assert_exactly_once(wakes)
        assert r.status()["diagnostics"]["reconnect_count"] == 0


@pytest.mark.parametrize("live", ["sse", "long-poll"])
def test_a_dead_live_read_is_found_by_the_tail_probe_when_a_wake_waits(
    tmp_path: Path, server: ServerProcess, live: str
) -> None:
    """half_open then pass: the live read's upstream is gone, its client side held open
    and silent; heartbeats and probes get through on new connections.  Nothing else
    can tell (the idle bound is 60 s, the heartbeats succeed): the probe sees the
    wake's event beyond the read offset and ends the session `tail_ahead` within
    probe interval + grace (+ tick, margin)."""
    handled = Handled(tmp_path)
    with ThreadedFaultProxy(upstream=("127.0.0.1", server.port)) as proxy:
        r = start_runner(
            tmp_path, proxy.url, "r1", handled, "--live", live, "--idle-timeout", "60",
            "--long-poll-timeout", "60", "--tail-probe-interval", "1",
            "--tail-probe-grace", "0.5",
        )  # fmt: skip
        with running(r):
            wait_streaming(r)
            first = publish(server, "r1")
            handled.wait_for(first, 10)
            proxy.set_mode("half_open")
            proxy.set_mode("pass")
            published_at = time.time()
            [wake] = publish(server, "r1")
            s = wait_state(
                r,
                lambda s: any(e["reason"] == "tail_ahead" for e in s["reconnects"]),
                1 + 0.5 + 1 + LOAD_MARGIN_S + 5,
                "a tail_ahead end",
            )
            end = next(e for e in s["reconnects"] if e["reason"] == "tail_ahead")
            assert unix(end["at"]) - published_at <= 1 + 0.5 + 1 + LOAD_MARGIN_S
            handled.wait_for([wake], 10)
            handled.assert_exactly_once([*first, wake])
