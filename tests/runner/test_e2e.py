"""The runner process against the real server process: delivery, offsets, handler
failures, status endpoints, signals, config errors."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pullwake.core.protocol import DIAGNOSTIC_FIELDS, sanitize_diagnostics
from tests.runner.harness import (
    Handled,
    publish,
    start_runner,
    unix,
    wait_state,
    wait_streaming,
    wake_tail,
)
from tests.support.procs import (
    RunnerProcess,
    ServerProcess,
    free_port,
    http_json,
    pid_alive,
    running,
    wait_until,
)


@pytest.fixture
def server(tmp_path: Path) -> ServerProcess:
    s = ServerProcess(tmp_path, keepalive=0.5).start()
    yield s
    s.stop()


def test_wakes_are_handled_once_and_the_offset_survives_a_restart(
    tmp_path: Path, server: ServerProcess
) -> None:
    handled = Handled(tmp_path)
    offset_file = tmp_path / "offset"
    server.register("r1")
    before = publish(server, "r1", 3)  # published before the runner ever ran
    r = start_runner(tmp_path, server.url, "r1", handled, "--offset-file", str(offset_file))
    with running(r):
        wait_streaming(r)
        live = publish(server, "r1", 5)
        tail = wake_tail(server, "r1")  # one wake event per message (fresh entities)
        handled.wait_for(before + live, 10)
        # handled is not yet committed (complete, then the commit): wait for the
        # commit to reach the tail, not merely to catch up with what was read so far
        s = wait_state(
            r,
            lambda s: s["committed_offset"] == s["read_offset"] == tail,
            5,
            "offset committed up to the last wake",
        )
        assert offset_file.read_text().strip() == tail
        d = s["diagnostics"]
        assert d["events_received"] == 8 and d["claims_succeeded"] == 8
        assert d["last_claim_result"] == "claimed" and d["reconnect_count"] == 0

        # the server's view of the runner: diagnostics arrive with each heartbeat
        def server_saw_all() -> bool:
            code, _, health = server.api("GET", "/_electric/runners/r1/health")
            return code == 200 and health["client"]["events_received"] == 8

        wait_until(server_saw_all, 5, what="a heartbeat carrying events_received 8")
        assert r.stop(signal.SIGTERM) == 0
    committed = offset_file.read_text().strip()
    assert committed == tail

    after = publish(server, "r1", 2)  # while the runner is down
    r2 = start_runner(tmp_path, server.url, "r1", handled, "--offset-file", str(offset_file))
    with running(r2):
        s = wait_streaming(r2)
        handled.wait_for(after, 10)
        handled.assert_exactly_once(before + live + after)
        s = wait_state(r2, lambda s: s["committed_offset"] > committed, 5, "offset moves on")
        assert s["diagnostics"]["events_received"] == 2  # resumed at the committed offset


def test_an_offset_the_server_no_longer_has_means_reading_what_it_retains(
    tmp_path: Path,
) -> None:
    """The server comes back on a fresh database: the runner's saved offset belongs to
    an earlier incarnation of its wake stream, which now answers a tail *before* it.
    Resuming there would skip wakes (and an unclaimed wake is never announced again);
    the runner ends that session as a 410 and reads the new stream from its start.
    (A recreated stream already longer than the saved offset cannot be told apart by
    offsets alone: delete the offset file with the database.)"""
    handled = Handled(tmp_path)
    offset_file = tmp_path / "offset"
    first = ServerProcess(tmp_path, keepalive=0.5, db=tmp_path / "one.db").start()
    with running(first):
        first.register("r1")
        early = publish(first, "r1", 2)
        r = start_runner(tmp_path, first.url, "r1", handled, "--offset-file", str(offset_file))
        with running(r):
            handled.wait_for(early, 10)
            tail = wake_tail(first, "r1")
            wait_until(lambda: offset_file.read_text().strip() == tail, 5, what="a commit")
    second = ServerProcess(tmp_path, port=first.port, db=tmp_path / "two.db", keepalive=0.5)
    with running(second.start()):
        second.register("r1")
        r2 = start_runner(tmp_path, second.url, "r1", handled, "--offset-file", str(offset_file))
        with running(r2):
            wait_state(r2, lambda s: s["reconnects"], 10, "the stale offset noticed")
            wait_streaming(r2)
            late = publish(second, "r1", 3)
            handled.wait_for(late, 15)
            handled.assert_exactly_once(early + late)
            s = r2.status()
            assert [e["reason"] for e in s["reconnects"]] == ["http_error"]  # once
            assert "went back" in s["diagnostics"]["last_error"]


def test_wakes_for_a_disabled_runner_wait_for_it_to_be_enabled(
    tmp_path: Path, server: ServerProcess
) -> None:
    """Claims answer 409 NOT_RUNNING while the runner is disabled.  Skipping them would
    commit past wakes the server never announces again; they must wait instead."""
    handled = Handled(tmp_path)
    r = start_runner(tmp_path, server.url, "r1", handled)
    with running(r):
        wait_streaming(r)
        assert server.api("POST", "/_electric/runners/r1/disable")[0] == 200
        wakes = publish(server, "r1", 2)
        tail = wake_tail(server, "r1")
        s = wait_state(r, lambda s: s["read_offset"] == tail, 10, "the wakes read")
        assert s["committed_offset"] < tail and handled.ids() == []
        assert server.api("POST", "/_electric/runners/r1/enable")[0] == 200
        handled.wait_for(wakes, 15)  # claim retries back off to at most 5 s
        handled.assert_exactly_once(wakes)
        wait_state(r, lambda s: s["committed_offset"] == tail, 5, "committed past them now")


def test_failed_handler_leaves_the_claim_to_expire_and_the_wake_comes_again(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path, keepalive=0.5, extra=["--claim-lease-ms", "1000"]).start()
    marker = tmp_path / "failed-once"
    log = tmp_path / "handled.txt"
    cmd = (
        f"cat >/dev/null; if [ ! -e {marker} ]; then touch {marker}; exit 3; fi; "
        f'echo "$PULLWAKE_ENTITY_URL" >> {log}'
    )
    r = RunnerProcess(
        tmp_path, server.url, "r1", extra=["--heartbeat-interval", "1", "--handler", cmd]
    )
    with running(server, r):
        server.register("r1")
        r.start()
        wait_streaming(r)
        [wake] = publish(server, "r1")
        wait_until(
            lambda: log.exists() and log.read_text().split() == [wake], 15, what="redelivery"
        )
        assert marker.exists()
        s = r.status()
        assert s["diagnostics"]["claims_succeeded"] >= 2  # claimed, failed, claimed again


def test_a_hung_handler_is_killed_at_its_timeout_and_the_wake_comes_again(
    tmp_path: Path,
) -> None:
    """`--handler-timeout 1`: the first run hangs in a real `sleep`; it is killed with
    its process group, the claim expires and the redelivered wake is handled."""
    server = ServerProcess(tmp_path, keepalive=0.5, extra=["--claim-lease-ms", "1000"]).start()
    pidfile = tmp_path / "sleep.pid"
    log = tmp_path / "handled.txt"
    cmd = (
        f"cat >/dev/null; if [ ! -e {pidfile} ]; then sleep 60 & echo $! > {pidfile}; wait; fi; "
        f'echo "$PULLWAKE_ENTITY_URL" >> {log}'
    )
    r = RunnerProcess(
        tmp_path,
        server.url,
        "r1",
        extra=["--heartbeat-interval", "1", "--handler", cmd, "--handler-timeout", "1"],
    )
    pid = 0
    try:
        with running(server, r):
            server.register("r1")
            r.start()
            wait_streaming(r)
            [wake] = publish(server, "r1")
            wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, what="sleep")
            pid = int(pidfile.read_text())
            wait_until(
                lambda: log.exists() and log.read_text().split() == [wake], 20, what="redelivery"
            )
            assert not pid_alive(pid)  # killed at the timeout, not left behind
            s = r.status()
            assert s["diagnostics"]["claims_succeeded"] >= 2  # claimed, killed, claimed again
            assert "still running after 1s" in (s["diagnostics"]["last_error"] or "")
    finally:
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_runner_killed_mid_handler_gets_the_wake_again_after_restart(tmp_path: Path) -> None:
    """kill -9 while a handler runs: the wake was claimed, never completed, never
    committed.  The restarted runner reads it again and gets 409 (the dead runner's
    claim is still live); when that lease runs out the server announces it again and
    this time it must be handled, not dropped as a duplicate of the 409."""
    server = ServerProcess(tmp_path, keepalive=0.5, extra=["--claim-lease-ms", "2000"]).start()
    started = tmp_path / "started"
    log = tmp_path / "handled.txt"
    cmd = (
        f"cat >/dev/null; if [ ! -e {started} ]; then echo $$ > {started}; exec sleep 60; fi; "
        f'echo "$PULLWAKE_ENTITY_URL" >> {log}'
    )
    offset_file = tmp_path / "offset"
    extra = ["--heartbeat-interval", "1", "--handler", cmd, "--offset-file", str(offset_file)]
    r = RunnerProcess(tmp_path, server.url, "r1", extra=extra)
    r2 = RunnerProcess(tmp_path, server.url, "r1", extra=extra)
    try:
        with running(server, r, r2):
            server.register("r1")
            r.start()
            wait_streaming(r)
            wake = server.publish("r1")["entity"]
            tail = wake_tail(server, "r1")
            wait_until(lambda: started.exists() and started.read_text().strip(), 10, what="handler")
            r.signal(signal.SIGKILL)
            r.wait(10)
            assert offset_file.read_text().strip() < tail  # not committed
            r2.start()
            wait_until(lambda: log.exists() and log.read_text().split() == [wake], 20, what="wake")
            s = r2.status()
            assert s["diagnostics"]["claims_skipped"] >= 1  # the 409 came first
    finally:
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(started.read_text()), signal.SIGKILL)  # the orphaned first handler


def test_status_endpoints_and_python_observer_free_metrics_hook(
    tmp_path: Path, server: ServerProcess
) -> None:
    r = start_runner(tmp_path, server.url, "r1", Handled(tmp_path))
    with running(r):
        wait_streaming(r)
        base = r.status_url
        assert http_json("GET", base + "/healthz")[0] == 200
        wait_until(lambda: http_json("GET", base + "/readyz")[0] == 200, 5, what="ready")
        code = http_json("GET", base + "/metrics")[0]
        assert code in (200, 404)  # 404 until the telemetry layer hangs its hook
        s = r.status()
        assert s["runner_id"] == "r1" and s["profile"] == "default"
        assert s["detectors"]["idle_timeout_s"] == pytest.approx(1.5)
        assert s["detectors"]["heartbeat_failure_threshold"] == 2
        assert s["detectors"]["tcp_keepalive"]["count"] == 3
        assert s["detectors"]["tail_probe"] == {"interval_s": 10.0, "grace_s": 2.0}
        assert {"at", "reason", "wait_s"} <= set().union(*(e.keys() for e in s["reconnects"])) or (
            s["reconnects"] == []
        )

        # what each heartbeat carries: lease 3 x interval, the committed offset, and the
        # original's sixteen diagnostics, nothing of pullwake's
        committed = wait_state(r, lambda s: s["committed_offset"] != "-1", 5, "first commit")[
            "committed_offset"
        ]

        def server_view() -> dict[str, Any] | None:
            code, _, h = server.api("GET", "/_electric/runners/r1/health")
            client = h.get("client") if code == 200 else None
            streaming = client and client.get("status") == "streaming"
            return h if streaming and h["runner"]["wake_stream_offset"] == committed else None

        h = wait_until(server_view, 5, what="a heartbeat with the committed offset")
        # only what the real agents-server keeps is sent (upstream-protocol.md section 3)
        assert set(h["client"]) <= set(DIAGNOSTIC_FIELDS) and "state" not in h["client"]
        assert h["client"] == sanitize_diagnostics(h["client"])
        assert h["client"]["stream_connected"] is True
        lease_s = unix(h["runner"]["lease_expires_at"]) - unix(h["runner"]["last_seen_at"])
        assert lease_s == pytest.approx(3 * 1.0, abs=0.01)  # --heartbeat-interval 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signals_stop_cleanly_with_exit_0(
    tmp_path: Path, server: ServerProcess, sig: signal.Signals
) -> None:
    r = start_runner(tmp_path, server.url, "r1", Handled(tmp_path))
    with running(r):
        wait_streaming(r)
        r.signal(sig)
        assert r.wait(timeout=10) == 0, r.output()[-2000:]
        assert "Traceback" not in r.output()


def test_unreachable_server_at_start_means_connecting_with_backoff(tmp_path: Path) -> None:
    port = free_port()
    r = start_runner(tmp_path, f"http://127.0.0.1:{port}", "r1", Handled(tmp_path))
    with running(r):
        s = wait_state(
            r, lambda s: s["diagnostics"]["reconnect_count"] >= 2, 15, "reconnect attempts"
        )
        assert s["state"] in ("running.connecting", "running.reconnecting")
        assert s["diagnostics"]["last_reconnect_reason"] == "connect_error"
        assert all(e["wait_s"] is None or e["wait_s"] <= 2.0 for e in s["reconnects"])
        assert http_json("GET", r.status_url + "/readyz")[0] == 503
        # the server appears: the runner gets there by itself
        server = ServerProcess(tmp_path, port=port, keepalive=0.5).start()
        with running(server):
            wait_streaming(r, timeout=10)
        assert r.alive()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--profile", "nope"], {}, "unknown profile"),
        (["--server", "not-a-url"], {}, "bad server URL"),
        (["--heartbeat-interval", "ten"], {}, "not a number"),
        ([], {"PULLWAKE_IDLE_TIMEOUT": "-3"}, "idle timeout must be > 0"),
        (["--live", "websocket"], {}, "--live"),
        (["--status-listen", "127.0.0.1:http"], {}, "listen address"),
        (["--server", "http://[::1"], {}, "bad server URL"),
        (["--heartbeat-interval", "inf"], {}, "finite"),
        (["--offset-file", "/"], {}, "cannot read offset file"),
        ([], {"PULLWAKE_HANDLER_TIMEOUT": "-1"}, "handler timeout"),
        (["--handler-timeout", "soon"], {}, "--handler-timeout: not a number"),
    ],
)
def test_bad_config_is_one_line_exit_2(args: list[str], env: dict[str, str], message: str) -> None:
    argv = [sys.executable, "-m", "pullwake", "run", "--runner-id", "r1"]
    if "--server" not in args:
        argv += ["--server", "http://127.0.0.1:9"]
    proc = subprocess.run(
        argv + args, capture_output=True, text=True, timeout=30, env=os.environ | env
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert lines[0].startswith("pullwake: error:")


def test_options_come_from_env_and_help_names_them(tmp_path: Path, server: ServerProcess) -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "pullwake", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    for env in (
        "PULLWAKE_SERVER",
        "PULLWAKE_RUNNER_ID",
        "PULLWAKE_HEARTBEAT_INTERVAL",
        "PULLWAKE_PROFILE",
        "PULLWAKE_OFFSET_FILE",
        "PULLWAKE_HANDLER",
        "PULLWAKE_HANDLER_TIMEOUT",
    ):
        assert env in help_text
    port = free_port()
    env = {
        "PULLWAKE_SERVER": server.url,
        "PULLWAKE_RUNNER_ID": "from-env",
        "PULLWAKE_PROFILE": "upstream",
        "PULLWAKE_HEARTBEAT_INTERVAL": "0.5",
        "PULLWAKE_STATUS_LISTEN": f"127.0.0.1:{port}",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "pullwake", "run"],
        env=os.environ | env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def status() -> dict[str, object] | None:
            code, _, body = http_json("GET", f"http://127.0.0.1:{port}/status", timeout=1)
            return body if code == 200 and body["state"] == "running.streaming" else None

        s = wait_until(status, 15, what="runner configured from env")
        assert s["runner_id"] == "from-env" and s["profile"] == "upstream"
        assert s["detectors"]["heartbeat_interval_s"] == 0.5
        assert s["detectors"]["idle_watchdog"] is False
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_planned_rotation_reconnects_at_once_and_is_not_counted(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, keepalive=0.5, extra=["--sse-rotate-seconds", "1"]).start()
    handled = Handled(tmp_path)
    r = start_runner(tmp_path, server.url, "r1", handled)
    with running(server, r):
        wait_streaming(r)
        s = wait_state(r, lambda s: len(s["reconnects"]) >= 2, 10, "two rotations")
        assert {e["reason"] for e in s["reconnects"]} == {"rotated"}
        assert all(e["wait_s"] == 0.0 for e in s["reconnects"] if e["wait_s"] is not None)
        assert s["diagnostics"]["reconnect_count"] == 0
        wakes = publish(server, "r1", 3)
        handled.wait_for(wakes, 10)
        handled.assert_exactly_once(wakes)


def test_long_poll_mode_delivers_and_notices_a_kill(tmp_path: Path, server: ServerProcess) -> None:
    handled = Handled(tmp_path)
    r = start_runner(tmp_path, server.url, "r1", handled, "--live", "long-poll")
    with running(r):
        wait_streaming(r)
        wakes = publish(server, "r1", 3)
        handled.wait_for(wakes, 10)
        server.signal(signal.SIGKILL)
        s = wait_state(r, lambda s: s["state"] != "running.streaming", 5, "left streaming")
        assert s["live_mode"] == "long-poll"
        assert s["diagnostics"]["stream_connected"] is False


def test_a_burst_to_one_entity_while_its_handler_runs_is_handled_exactly_once(
    tmp_path: Path, server: ServerProcess
) -> None:
    """Messages sent to an entity whose claim is held make no wake event (the server
    coalesces them); the done ack leaves them pending, the next generation is
    announced at once and one more claim covers them all.  Handler runs of that
    entity: offsets strictly increasing (no range handled twice), the last one at the
    last message, every message inside exactly one run's range; no claim left over."""
    gate = tmp_path / "gate"
    log = tmp_path / "runs.txt"
    cmd = (
        f'cat >/dev/null; echo "$PULLWAKE_ENTITY_URL $PULLWAKE_STREAM_OFFSET" >> {log}; '
        f"while [ ! -e {gate} ]; do sleep 0.05; done"
    )
    r = RunnerProcess(tmp_path, server.url, "r1", extra=["--heartbeat-interval", "1",
                                                         "--handler", cmd])  # fmt: skip
    entity = "/burst/e1"
    with running(r):
        r.start()
        wait_streaming(r)
        offsets = [server.publish("r1", entity=entity)["offset"]]
        wait_until(lambda: log.exists() and log.read_text().strip(), 10, what="the first run")
        offsets += [server.publish("r1", {"n": i}, entity=entity)["offset"] for i in range(20)]
        gate.touch()
        wait_until(
            lambda: log.read_text().split()[-1:] == [offsets[-1]], 20, what="a run up to the last"
        )
        runs = [line.split() for line in log.read_text().splitlines()]
        ends = [off for ent, off in runs if ent == entity]
        assert ends == sorted(set(ends)), ends  # strictly increasing: nothing twice
        starts = ["-1", *ends[:-1]]
        for m in offsets:  # each message in exactly one run's (start, end] range
            inside = [e for s, e in zip(starts, ends, strict=True) if s < m <= e]
            assert len(inside) == 1, (m, runs)
        assert 2 <= len(ends) <= 3  # the first run, then one (rarely two) for the burst

        def settled() -> dict[str, Any] | None:
            code, _, h = server.api("GET", "/_electric/runners/r1/health")
            return h if code == 200 and h["claims"]["active_count"] == 0 else None

        wait_until(settled, 10, what="no claim left active")
