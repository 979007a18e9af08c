"""Claims and dispatch: order, backpressure, duplicates, failures, lost claim answers,
and the shell handler - against a scripted claim API, no server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pullwake.protocol import WakeOutcome
from runner.dispatch import ClaimAnswer, Dispatcher, HandlerFailed, shell_handler
from runner.observe import RecordingObserver
from runner.offsets import CommitTracker


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
