"""The REAL upstream pull-wake runner against our server: every message handled once.

Runs the unmodified runner of `@electric-ax/agents-runtime` 0.6.3 (hosted by
`interop/runner-host.mjs`, as upstream's BuiltinAgentsServer hosts it) against
`pullwake server --compat upstream`.  It registers, reads the wake stream with
the upstream stream client, claims per subscription and completes through the
claim's callback.  Bursts to several entities, some while their claim is in
flight: each message must be covered by exactly one completed run.

Needs what `interop/README.md` prepares once (an electric checkout built into
`~/.cache/pullwake-interop/current` and `interop/node_modules`); skipped
otherwise, so CI without them is unaffected.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import Proc, ServerProcess, running, wait_until
from tests.support.waits import holds_for

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PULLWAKE_INTEROP_HOME", Path.home() / ".cache" / "pullwake-interop"))

pytestmark = pytest.mark.skipif(
    not (
        shutil.which("node")
        and (ROOT / "interop" / "node_modules").is_dir()
        and (CACHE / "current").exists()
    ),
    reason="the upstream runner is not prepared here (see interop/README.md)",
)


def runner_lines(proc: Proc) -> list[dict[str, Any]]:
    out = []
    for line in proc.output().splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def covered(lines: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(stream, after, upto) of every run whose done succeeded, in order per stream."""
    wakes = {ln["notification"]["wakeId"]: ln for ln in lines if ln.get("event") == "wake"}
    last: dict[str, str] = {}
    out = []
    for ln in lines:
        if ln.get("event") == "done" and ln.get("ok"):
            w = wakes[ln["wake_id"]]
            stream, upto = w["stream"], w["offset"]
            out.append((stream, last.get(stream, ""), upto))
            last[stream] = upto
    return out


def handled_counts(runner: Proc, messages: list[dict[str, Any]]) -> dict[str, int]:
    """How many handler runs covered each published message (by stream and offset)."""
    runs = covered(runner_lines(runner))
    return {
        m["txid"]: sum(1 for s, a, u in runs if s == m["stream"] and a < m["offset"] <= u)
        for m in messages
    }


def handled_once(runner: Proc, messages: list[dict[str, Any]]) -> bool:
    return set(handled_counts(runner, messages).values()) == {1}


def wait_every_message_handled(
    runner: Proc, messages: list[dict[str, Any]], timeout: float
) -> None:
    """Wait until some run covered every message; fail with the runner's output."""
    try:
        wait_until(
            lambda: all(n >= 1 for n in handled_counts(runner, messages).values()),
            timeout,
            what="every message",
        )
    except AssertionError:
        raise AssertionError(runner.output()[-4000:]) from None


def test_upstream_runner_handles_every_message_once(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, long_poll_timeout=30, extra=["--compat", "upstream"])
    runner = Proc(
        [
            sys.executable,
            str(ROOT / "interop" / "upstream.py"),
            "runner",
            "--server",
            server.url,
            "--runner-id",
            "up1",
            "--heartbeat-interval-ms",
            "2000",
            "--work-ms",
            "400",
        ],
        tmp_path / "upstream-runner.log",
    )
    with running(server, runner):
        server.start()
        runner.start()
        wait_until(
            lambda: any(ln.get("event") == "started" for ln in runner_lines(runner)),
            60,
            what="the upstream runner to start",
        )
        entities = [f"/pullwake/real-{i}" for i in range(4)]
        with ThreadPoolExecutor(4) as pool:
            first = list(pool.map(lambda e: server.publish("up1", "a", entity=e), entities))
        # while e0's first run works (400 ms), more for it and one more for each other
        wait_until(
            lambda: any(ln.get("event") == "wake" for ln in runner_lines(runner)), 30, what="a run"
        )
        more = [server.publish("up1", f"b{i}", entity=entities[0]) for i in range(3)]
        more += [server.publish("up1", "c", entity=e) for e in entities[1:]]
        messages = first + more

        wait_every_message_handled(runner, messages, 60)
        # A duplicate run would show up within this window.
        holds_for(lambda: handled_once(runner, messages), 1.0, what="every message handled once")
        lines = runner_lines(runner)
        assert not [ln for ln in lines if ln.get("event") == "error"], lines
        health = server.api("GET", "/_electric/runners/up1/health")[2]
        assert health["client"]["claims_failed"] == 0
        assert health["claims"]["active_count"] == 0
        # its first heartbeat always says last_heartbeat_ok=false (upstream's initial value)
        wait_until(
            lambda: (
                server.api("GET", "/_electric/runners/up1/health")[2]["health"]
                == {"status": "healthy", "issues": []}
            ),
            15,
            what="healthy",
        )


def test_upstream_runner_through_a_kill_9_of_the_server_mid_claim(tmp_path: Path) -> None:
    """The server dies while a run works: after the restart (same port, same db) the
    run's done still succeeds (our claims survive) and later messages are handled."""
    db = tmp_path / "s.db"
    server = ServerProcess(tmp_path, db=db, long_poll_timeout=30, extra=["--compat", "upstream"])
    runner = Proc(
        [
            sys.executable,
            str(ROOT / "interop" / "upstream.py"),
            "runner",
            "--server",
            server.url,
            "--runner-id",
            "up1",
            "--heartbeat-interval-ms",
            "1000",
            "--work-ms",
            "3000",
        ],
        tmp_path / "upstream-runner.log",
    )
    again = ServerProcess(
        tmp_path, db=db, port=server.port, long_poll_timeout=30, extra=["--compat", "upstream"]
    )
    with running(again, server, runner):
        server.start()
        runner.start()
        wait_until(
            lambda: any(ln.get("event") == "started" for ln in runner_lines(runner)),
            60,
            what="the upstream runner to start",
        )
        ent = "/pullwake/k9"
        messages = [server.publish("up1", "a", entity=ent)]
        wait_until(
            lambda: any(ln.get("event") == "wake" for ln in runner_lines(runner)), 30, what="a run"
        )
        messages.append(server.publish("up1", "b", entity=ent))  # waits behind the claim
        server.signal(signal.SIGKILL)
        server.wait(5)
        again.start()
        messages.append(again.publish("up1", "c", entity="/pullwake/k9-after"))

        wait_every_message_handled(runner, messages, 90)
        assert handled_once(runner, messages), handled_counts(runner, messages)
        dones = [ln for ln in runner_lines(runner) if ln.get("event") == "done"]
        assert all(d["ok"] for d in dones), dones
