"""Claims and dispatch: order, backpressure, duplicates, failures, lost claim answers,
and the shell handler - against a scripted claim API, no server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pullwake.core.protocol import WakeOutcome
from pullwake.runner import dispatch
from pullwake.runner.dispatch import (
    ClaimAnswer,
    Dispatcher,
    HandlerFailed,
    publish_latency,
    shell_handler,
)
from pullwake.runner.observe import RecordingObserver
from pullwake.runner.offsets import CommitTracker
from tests.support.procs import pid_alive
from tests.support.waits import never

ANSWER_BODIES: dict[int, Any] = {
    200: {"claimToken": "t"},
    409: {"error": {"code": "ALREADY_CLAIMED", "message": "claimed"}},
    401: {"error": {"code": "UNAUTHORIZED", "message": "who are you"}},
    403: {"error": {"code": "FORBIDDEN", "message": "not yours"}},
    404: {"error": {"code": "NOT_FOUND", "message": "no such runner"}},
    400: {"error": {"code": "INVALID_REQUEST", "message": "bad"}},
}


class ScriptedClaims:
    """The claim API as data: per wake id, the claim status to answer."""

    def __init__(self, answers: dict[str, list[int]]) -> None:
        self.answers = answers
        self.completed: list[str] = []

    async def claim(self, wake: dict[str, Any]) -> ClaimAnswer:
        status = self.answers[wake["wake_id"]].pop(0)
        return ClaimAnswer(status, ANSWER_BODIES.get(status))

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
        await never(put.done, within=0.2, what="a submit into a full queue returning")
        release.set()
        async with asyncio.timeout(5):
            await put
    finally:
        await d.stop()


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


@pytest.mark.parametrize("status", [401, 403, 404, 400])
async def test_a_claim_refused_with_a_4xx_is_retried_not_committed_past(
    status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only 204 and 409 ALREADY_CLAIMED/NO_PENDING_WORK skip a wake.  A 401/403/404/400
    (credentials rotated, registration lost ...) must not let the offset pass the wake:
    a wake whose claim was never made is never announced again.  The retries are
    visible (claims_failed, last_error, observer `claim` failed) and rate-bounded."""
    monkeypatch.setattr(dispatch, "CLAIM_RETRY_FIRST_S", 0.02)
    monkeypatch.setattr(dispatch, "CLAIM_RETRY_MAX_S", 0.1)
    handled: list[str] = []

    async def handler(wake: dict[str, Any]) -> None:
        handled.append(wake["wake_id"])

    class Refusing(ScriptedClaims):
        refuse = True
        attempts = 0

        async def claim(self, wake: dict[str, Any]) -> ClaimAnswer:
            self.attempts += 1
            if self.refuse:
                return ClaimAnswer(status, ANSWER_BODIES[status])
            return ClaimAnswer(200, ANSWER_BODIES[200])

    claims = Refusing({})
    tracker = CommitTracker("-1")
    errors: list[str] = []
    obs = RecordingObserver()
    d = Dispatcher(claims, handler, tracker, obs, lambda o: None, on_error=errors.append)
    d.start()
    try:
        await d.submit({"wake_id": "w"})
        d.mark("o1")
        await never(
            lambda: tracker.committed != "-1" or handled, within=1.0, what="a commit or handling"
        )
        # never committed past, never handled, and no spin: 0.02 s doubling to 0.1 s
        # allows about 12 attempts in a second; a spin would make thousands
        assert tracker.committed == "-1" and handled == []
        assert 3 <= claims.attempts <= 15, claims.attempts
        assert d.stats.claims_failed == claims.attempts
        assert d.stats.last_claim_result == f"failed: {status}"
        assert errors and f"HTTP {status}" in errors[-1] and "w" in errors[-1]
        assert [o for o, _ in obs.of("claim")] == [WakeOutcome.FAILED] * claims.attempts
        assert (WakeOutcome.FAILED, "w") not in [w[:2] for w in obs.of("wake")]
        claims.refuse = False  # healed: the wake gets through
        async with asyncio.timeout(5):
            while tracker.committed != "o1":
                await asyncio.sleep(0.01)
    finally:
        await d.stop()
    assert handled == ["w"] and claims.completed == ["w"]
    assert obs.of("claim")[-1][0] is WakeOutcome.CLAIMED


@pytest.mark.parametrize("status", [503, 401])
async def test_a_stop_mid_claim_does_not_commit_past_the_wake(
    status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped while a wake's claim is still being retried: the wake is not done, and
    a committed offset past it would lose it (no claim, so nothing announces it
    again after the restart reads from that offset)."""
    monkeypatch.setattr(dispatch, "CLAIM_RETRY_FIRST_S", 0.02)
    claims = ScriptedClaims({"w": [status] * 1000})
    commits: list[str] = []
    tracker = CommitTracker("-1")
    d = Dispatcher(claims, _never, tracker, RecordingObserver(), commits.append)
    d.start()
    try:
        await d.submit({"wake_id": "w"})
        d.mark("o1")
        async with asyncio.timeout(5):
            while d.stats.claims_failed < 2:
                await asyncio.sleep(0.01)
    finally:
        await d.stop()
    assert commits == [] and tracker.committed == "-1"


async def _never(wake: dict[str, Any]) -> None:
    raise AssertionError("never claimed, never handled")


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
        assert pid_alive(pid)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(5):
            while pid_alive(pid):
                await asyncio.sleep(0.02)
    finally:
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


async def test_a_handler_past_its_timeout_is_killed_group_and_all_and_the_wake_fails(
    tmp_path: Path,
) -> None:
    """A hung handler must not hold its worker forever: after `handler_timeout` the
    shell and what it started (a real `sleep`) are killed, the wake counts as failed
    (not completed: its claim expires and the server announces it again), and that
    second announcement is handled, not dropped as a duplicate."""
    pidfile = tmp_path / "pid"
    handle = shell_handler(
        f"cat >/dev/null; if [ ! -e {pidfile} ]; then sleep 30 & echo $! > {pidfile}; wait; fi"
    )
    claims = ScriptedClaims({"w": [200, 200]})
    tracker = CommitTracker("-1")
    errors: list[str] = []
    obs = RecordingObserver()
    d = Dispatcher(
        claims, handle, tracker, obs, lambda o: None, on_error=errors.append, handler_timeout=0.5
    )
    d.start()
    pid = 0
    try:
        await d.submit({"wake_id": "w"})
        d.mark("o1")
        async with asyncio.timeout(10):  # 0.5 s, plus slack for a loaded machine
            while tracker.committed != "o1":
                await asyncio.sleep(0.02)
        pid = int(pidfile.read_text())
        async with asyncio.timeout(5):
            while pid_alive(pid):
                await asyncio.sleep(0.02)
        assert d.stats.handler_failures == 1 and claims.completed == []
        assert (WakeOutcome.FAILED, "w") in [w[:2] for w in obs.of("wake")]
        assert obs.of("handler")[0][0] is WakeOutcome.FAILED
        assert "still running after 0.5s" in errors[-1]
        await d.submit({"wake_id": "w"})  # announced again once the claim expired
        d.mark("o2")
        async with asyncio.timeout(10):
            while tracker.committed != "o2":
                await asyncio.sleep(0.02)
    finally:
        await d.stop()
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert claims.completed == ["w"] and d.stats.handled == 1


async def test_shell_handler_gets_the_wake_json_on_stdin_and_its_id_in_env(tmp_path: Path) -> None:
    out = tmp_path / "out"
    wake = {"wake_id": "wk_1", "type": "wake", "stream": "/s", "payload": {"n": 1}}
    await shell_handler(f'cat > {out}; echo "$PULLWAKE_WAKE_ID" >> {out}.id')(wake)
    assert json.loads(out.read_text()) == wake
    assert (tmp_path / "out.id").read_text() == "wk_1\n"
    with pytest.raises(HandlerFailed, match="status 3"):  # the claim is left to expire
        await shell_handler("cat >/dev/null; exit 3")(wake)


def test_wake_latency_runs_from_publication_to_handler_start() -> None:
    """The catalog's wake latency: published (the wake's `ts`) -> handler start."""
    now = time.monotonic()
    two_s_ago = (datetime.now(UTC) - timedelta(seconds=2)).isoformat().replace("+00:00", "Z")
    # read off the stream just now, but published 2 s ago: the 2 s count
    assert 1.9 <= publish_latency({"ts": two_s_ago}, now) < 3.0
    # a server clock ahead of ours never gives a negative latency
    ahead = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
    assert publish_latency({"ts": ahead}, now) == 0.0
    # no usable ts (missing, garbage, no zone): time since the runner read it
    for wake in ({}, {"ts": "yesterday"}, {"ts": "2026-01-01T00:00:00"}, {"ts": 17}):
        assert 0.0 <= publish_latency(wake, now - 0.5) < 1.5
