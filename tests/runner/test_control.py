"""Resume/stall detection and reconnect on demand, on real processes: the runner
process is frozen with SIGSTOP longer than its resume threshold, told to reconnect
with SIGHUP, and asked to over HTTP (`POST /reconnect`, token rules included).

Each test reads the runner's own record (`/status`: its sessions' reasons and the
time the new session connected) and checks that no wake is lost on the way.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.runner.harness import Handled, start_runner, unix, wait_state, wait_streaming
from tests.support.procs import RunnerProcess, ServerProcess, http_json, running

NEW_SESSION_BOUND_S = 1.0  # issue 13: a new session within 1 s of SIGCONT / SIGHUP
FROZEN_S = 2.5  # longer than the threshold (= the 1 s heartbeat interval of FAST_RUNNER)
QUIET = ("--idle-timeout", "30")  # only the detector under test may end the session


@pytest.fixture
def server(tmp_path: Path) -> Any:
    s = ServerProcess(tmp_path, keepalive=0.5).start()
    yield s
    s.stop()


def next_session(r: RunnerProcess, after: int, what: str) -> dict[str, Any]:
    """Wait until session `after + 1` (or later) is streaming; its /status."""
    return wait_state(
        r,
        lambda s: s["session"] > after and s["state"] == "running.streaming",
        10,
        what,
    )


def end_of(status: dict[str, Any], session: int) -> dict[str, Any]:
    [entry] = [e for e in status["reconnects"] if e["session"] == session]
    return dict(entry)


def publish_n(server: ServerProcess, runner_id: str, n: int) -> None:
    for _ in range(n):
        server.publish(runner_id)


def assert_all_handled_once(handled: Handled, n: int, timeout: float = 15.0) -> None:
    """`n` wakes published, `n` handler runs, none twice (ids as the handler saw them)."""
    deadline = time.monotonic() + timeout
    while len(handled.ids()) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    ids = handled.ids()
    assert len(ids) == n and len(set(ids)) == n, ids


def test_sigstop_longer_than_the_threshold_is_a_stall_a_new_session_within_1s_no_wake_lost(
    tmp_path: Path, server: ServerProcess
) -> None:
    handled = Handled(tmp_path)
    r = start_runner(tmp_path, server.url, "frozen", handled, *QUIET)
    with running(r):
        before = wait_streaming(r)
        r.signal(signal.SIGSTOP)
        try:
            publish_n(server, "frozen", 3)  # announced while the runner cannot read
            time.sleep(FROZEN_S)  # the fault's duration, not a wait for a condition
        finally:
            r.signal(signal.SIGCONT)
            resumed_at = time.time()
        s = next_session(r, before["session"], "a new session after SIGCONT")
        took = unix(s["diagnostics"]["stream_connected_since"]) - resumed_at
        print(f"\nSIGCONT -> new session streaming: {took * 1000:.0f} ms")
        assert took <= NEW_SESSION_BOUND_S, f"new session {took:.2f}s after SIGCONT"
        assert end_of(s, before["session"])["reason"] == "stalled"
        assert end_of(s, before["session"])["wait_s"] == 0.0  # no backoff
        assert s["diagnostics"]["last_reconnect_reason"] == "stalled"
        # the server heard from the runner at once too (a heartbeat right after SIGCONT)
        wait_state(
            r,
            lambda s: unix(s["diagnostics"]["last_heartbeat_at"] or "1970-01-01") >= resumed_at,
            NEW_SESSION_BOUND_S,
            "a heartbeat after SIGCONT",
        )
        publish_n(server, "frozen", 1)  # and the new session delivers
        assert_all_handled_once(handled, 4)


def test_sighup_ends_the_read_as_forced_and_reconnects_at_once(
    tmp_path: Path, server: ServerProcess
) -> None:
    handled = Handled(tmp_path)
    r = start_runner(tmp_path, server.url, "hup", handled, *QUIET)
    with running(r):
        before = wait_streaming(r)
        sent_at = time.time()
        r.signal(signal.SIGHUP)
        s = next_session(r, before["session"], "a new session after SIGHUP")
        took = unix(s["diagnostics"]["stream_connected_since"]) - sent_at
        print(f"\nSIGHUP -> new session streaming: {took * 1000:.0f} ms")
        assert took <= NEW_SESSION_BOUND_S
        assert end_of(s, before["session"]) | {"at": None} == {
            "at": None,
            "reason": "forced",
            "session": before["session"],
            "wait_s": 0.0,
        }
        assert s["session"] == before["session"] + 1 and r.alive()
        publish_n(server, "hup", 2)
        assert_all_handled_once(handled, 2)


def test_post_reconnect_on_loopback_needs_no_token(tmp_path: Path, server: ServerProcess) -> None:
    handled = Handled(tmp_path)
    r = start_runner(tmp_path, server.url, "post", handled, *QUIET)
    with running(r):
        before = wait_streaming(r)
        sent_at = time.time()
        code, _, body = http_json("POST", f"{r.status_url}/reconnect")
        assert code == 202, body
        assert body["reason"] == "forced" and body["ended_session"] == before["session"]
        s = next_session(r, before["session"], "a new session after POST /reconnect")
        took = unix(s["diagnostics"]["stream_connected_since"]) - sent_at
        print(f"\nPOST /reconnect -> new session streaming: {took * 1000:.0f} ms")
        assert took <= NEW_SESSION_BOUND_S
        assert end_of(s, before["session"])["reason"] == "forced"
        code, _, _ = http_json("GET", f"{r.status_url}/reconnect")
        assert code == 405  # a state change is a POST


def test_post_reconnect_with_a_token_needs_that_bearer_token(
    tmp_path: Path, server: ServerProcess
) -> None:
    handled = Handled(tmp_path)
    r = start_runner(
        tmp_path, server.url, "tok", handled, *QUIET, env={"PULLWAKE_STATUS_TOKEN": "s3cret"}
    )
    with running(r):
        before = wait_streaming(r)
        url = f"{r.status_url}/reconnect"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            code, hdrs, body = http_json("POST", url, headers=headers)
            assert code == 401 and body["error"]["code"] == "UNAUTHORIZED", (headers, body)
            assert hdrs.get("WWW-Authenticate", "").startswith("Bearer")
        assert r.status()["session"] == before["session"]  # refused: nothing happened
        code, _, body = http_json("POST", url, headers={"Authorization": "Bearer s3cret"})
        assert code == 202, body
        next_session(r, before["session"], "a new session after an authorised POST")


def test_post_reconnect_off_loopback_without_a_token_is_forbidden(
    tmp_path: Path, server: ServerProcess
) -> None:
    handled = Handled(tmp_path)
    r = RunnerProcess(
        tmp_path,
        server.url,
        "wide",
        extra=["--handler", handled.command, "--status-listen", "0.0.0.0:0", *QUIET],
    )
    # the listener is on every interface; reach it through loopback
    r.argv[r.argv.index("0.0.0.0:0")] = f"0.0.0.0:{r.status_port}"
    r.start()
    with running(r):
        before = wait_streaming(r)
        code, _, body = http_json("POST", f"{r.status_url}/reconnect")
        assert code == 403 and "--status-token" in body["error"]["message"], body
        assert r.status()["session"] == before["session"]
