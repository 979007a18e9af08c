"""Claims and dispatch per subscription, against an in-memory model of the real
agents-server's subscriptions (tests/runner/claims_model.py): bursts while a
handler runs, events remembered while a claim is in flight (electric PR #4726),
done/skip/not-running/5xx/400 answers, lease heartbeats, fenced claims, failed
handlers coming back by lease expiry, offsets, and the shell handler."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pullwake.core.protocol import CallbackOutcome, ClaimResult, WakeOutcome
from pullwake.runner import dispatch
from pullwake.runner.api import Answer
from pullwake.runner.dispatch import (
    Claim,
    Dispatcher,
    Handler,
    HandlerFailed,
    callback_outcome,
    claim_verdict,
    publish_latency,
    shell_handler,
)
from pullwake.runner.observe import RecordingObserver
from pullwake.runner.offsets import CommitTracker
from tests.runner.claims_model import Model, offset
from tests.support.procs import pid_alive
from tests.support.waits import never, until


class Rig:
    """A dispatcher fed from the model's wake stream, one mark per event (its offset)."""

    def __init__(self, model: Model, handler: Handler, **options: Any) -> None:
        self.model = model
        self.tracker = CommitTracker("-1")
        self.commits: list[str] = []
        self.errors: list[str] = []
        self.obs = RecordingObserver()
        options.setdefault("callback_heartbeat_interval", 10.0)
        self.d = Dispatcher(
            model,
            handler,
            self.tracker,
            self.obs,
            self.commits.append,
            on_error=self.errors.append,
            **options,
        )
        self.read = 0
        self._feeder: asyncio.Task[None] | None = None

    async def _feed(self) -> None:
        while True:
            event = await self.model.events.get()
            await self.d.submit(event)
            self.read += 1
            self.d.mark(offset(self.read))

    async def __aenter__(self) -> Rig:
        self.d.start()
        self._feeder = asyncio.create_task(self._feed())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._feeder is not None
        self._feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._feeder
        await self.d.stop()

    async def settled(self, timeout: float = 10.0) -> None:
        """Every event read is done and committed, and nothing is in flight."""
        await until(
            lambda: (
                self.model.events.empty()
                and self.d.in_flight == 0
                and self.tracker.committed == offset(self.read)
            ),
            timeout,
            "the dispatcher to settle",
        )


class Ranges:
    """What handlers handled: per subscription, (start, end] message ranges."""

    def __init__(self) -> None:
        self.got: list[tuple[str, int, int]] = []
        self.acked: dict[str, int] = {}

    def record(self, n: dict[str, Any], model: Model) -> None:
        claimed = model.claims[n["wakeId"]]
        self.got.append((claimed.sid, claimed.start, claimed.end))

    def messages(self, sid: str) -> list[int]:
        return sorted(m for s, a, b in self.got if s == sid for m in range(a + 1, b + 1))


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "CLAIM_RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(dispatch, "CLAIM_RETRY_MAX_S", 0.05)
    monkeypatch.setattr(dispatch, "DONE_BACKOFF_FIRST_S", 0.1)
    monkeypatch.setattr(dispatch, "DONE_BACKOFF_MAX_S", 0.4)
    monkeypatch.setattr(dispatch, "COMPLETE_RETRY_S", 0.01)


@pytest.fixture
async def model() -> AsyncIterator[Model]:
    yield Model()


# --- verdicts -------------------------------------------------------------------
NOTIFICATION: dict[str, Any] = {
    "consumerId": "w_1",
    "epoch": 3,
    "wakeId": "w_1",
    "streamPath": "/t/e1/main",
    "streams": [{"path": "/t/e1/main", "offset": offset(7)}],
    "callback": "http://h/_electric/wake-callbacks/w_1",
    "claimToken": "tok",
    "entity": {"type": "t", "url": "/t/e1"},
}


@pytest.mark.parametrize(
    ("answer", "result"),
    [
        (Answer(200, NOTIFICATION), ClaimResult.CLAIMED),
        (Answer(200, {"done": True}), ClaimResult.DONE),
        (Answer(204, None), ClaimResult.SKIPPED),
        (Answer(409, {"error": {"code": "ALREADY_CLAIMED", "message": "{}"}}), ClaimResult.SKIPPED),
        (Answer(409, {"error": {"code": "NO_PENDING_WORK", "message": ""}}), ClaimResult.SKIPPED),
        (Answer(409, {"error": {"code": "NOT_RUNNING", "message": ""}}), ClaimResult.NOT_RUNNING),
        (Answer(200, {"claimToken": "t"}), ClaimResult.FAILED),  # no callback: unusable
        (Answer(503, None), ClaimResult.FAILED),
        (Answer(0, "refused"), ClaimResult.FAILED),
        (Answer(400, {"error": {"code": "INVALID_REQUEST", "message": ""}}), ClaimResult.FAILED),
    ],
)
def test_claim_verdicts(answer: Answer, result: ClaimResult) -> None:
    assert claim_verdict(answer) is result


def test_callback_outcomes() -> None:
    fenced = 'Subscription ack failed: 409 {"error":{"code":"FENCED"}}'
    token = 'Subscription ack failed: 401 {"error":{"code":"TOKEN_INVALID"}}'
    assert callback_outcome(Answer(200, {"ok": True})) is CallbackOutcome.OK
    assert callback_outcome(Answer(502, _err("WAKE_CALLBACK_FAILED", fenced))) is (
        CallbackOutcome.FENCED
    )
    assert callback_outcome(Answer(502, _err("WAKE_CALLBACK_FAILED", token))) is (
        CallbackOutcome.REJECTED
    )
    assert callback_outcome(Answer(404, _err("WAKE_CALLBACK_NOT_FOUND", ""))) is (
        CallbackOutcome.REJECTED
    )
    assert callback_outcome(Answer(0, "timeout")) is CallbackOutcome.FAILED
    assert callback_outcome(Answer(503, None)) is CallbackOutcome.FAILED


def test_a_refused_completion_says_whether_the_work_comes_back() -> None:
    # The real agents-server forgets subscriptions on restart: its 502 then names
    # SUBSCRIPTION_NOT_FOUND (later TOKEN_INVALID) and nothing is announced again;
    # FENCED means a newer generation exists, so the work does come back.
    forgot = 'Subscription ack failed: 404 {"error":{"code":"SUBSCRIPTION_NOT_FOUND"}}'
    token = 'Subscription ack failed: 401 {"error":{"code":"TOKEN_INVALID"}}'
    fenced = 'Subscription ack failed: 409 {"error":{"code":"FENCED"}}'
    for message in (forgot, token):
        said = dispatch._after_loss(Answer(502, _err("WAKE_CALLBACK_FAILED", message)))
        assert "forgot the claim" in said and "announces the work again" not in said
    said = dispatch._after_loss(Answer(502, _err("WAKE_CALLBACK_FAILED", fenced)))
    assert "announces the work again" in said


def test_claim_parse_acks_every_stream_but_never_minus_one() -> None:
    n = dict(NOTIFICATION, streams=[*NOTIFICATION["streams"], {"path": "/x", "offset": "-1"}])
    c = Claim.parse(n)
    assert c.acks == ({"path": "/t/e1/main", "offset": offset(7)},)
    assert (c.wake_id, c.epoch, c.stream_offset, c.entity_url) == ("w_1", 3, offset(7), "/t/e1")


def _err(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


# --- the cycle ------------------------------------------------------------------
async def test_a_burst_while_the_handler_runs_is_handled_exactly_once(model: Model) -> None:
    """Messages sent while a claim is held make no event (the server coalesces); the
    done ack leaves them pending, the server announces the next generation at once,
    and the follow-up claim covers all of them: each message handled once."""
    gate = asyncio.Event()
    ranges = Ranges()

    async def handler(n: dict[str, Any]) -> None:
        ranges.record(n, model)
        if len(ranges.got) == 1:
            await gate.wait()

    e1 = model.entity("e1")
    async with Rig(model, handler) as rig:
        model.append(e1)
        await until(lambda: ranges.got, what="the first handler run")
        for _ in range(20):
            model.append(e1)
        assert model.events.empty()  # claimed: appends announce nothing
        gate.set()
        await rig.settled()
    assert ranges.messages(e1.sid) == list(range(1, 22))  # every message exactly once
    assert len(ranges.got) == 2 and e1.acked == 21
    dones = model.callbacks("done")
    assert dones[0] == {
        "epoch": 1,
        "acks": [{"path": "/t/e1/main", "offset": offset(1)}],
        "done": True,
    }
    assert dones[1]["epoch"] == 2 and dones[1]["acks"][0]["offset"] == offset(21)
    assert set(model.callback_headers) == {c.token for c in model.claims.values()}
    assert model.claim_requests()[0] == {"subscription_id": e1.sid}


async def test_events_read_while_a_claim_is_in_flight_are_claimed_after_it(
    model: Model,
) -> None:
    """electric PR #4726: the upstream runner kept one deferred event per stream and
    lost distinct generations.  Here every event read during a cycle makes the
    subscription claimed once more after it; stale replays get NO_PENDING_WORK."""
    gate = asyncio.Event()
    ranges = Ranges()

    async def handler(n: dict[str, Any]) -> None:
        ranges.record(n, model)
        if len(ranges.got) == 1:
            await gate.wait()

    e1 = model.entity("e1")
    async with Rig(model, handler) as rig:
        model.append(e1)
        await until(lambda: ranges.got, what="the first handler run")
        # old generations replayed (a reader restarted from -1) while the claim is held
        for g in (1, 1, 1):
            model.events.put_nowait(
                {"type": "wake", "subscription_id": e1.sid, "stream": e1.stream, "generation": g}
            )
        await until(lambda: rig.d.stats.deferred == 3, what="three deferred events")
        model.append(e1, 2)  # more work: no event, the claim is held
        gate.set()
        await rig.settled()
    assert ranges.messages(e1.sid) == [1, 2, 3]
    assert rig.d.stats.deferred >= 3
    assert (WakeOutcome.DEFERRED, None) in [w[:2] for w in rig.obs.of("wake")]


async def test_many_entities_at_once_each_message_once(model: Model) -> None:
    ranges = Ranges()

    async def handler(n: dict[str, Any]) -> None:
        ranges.record(n, model)
        await asyncio.sleep(0.01)

    subs = [model.entity(f"e{i}") for i in range(12)]
    async with Rig(model, handler, concurrency=4, queue_size=3) as rig:
        for round_ in range(5):
            for s in subs:
                model.append(s, round_ + 1)
            await asyncio.sleep(0.005)
        await rig.settled(20)
    for s in subs:
        assert ranges.messages(s.sid) == list(range(1, 16)), s.sid


async def test_generations_restarting_with_the_server_are_claimed_not_deduplicated(
    model: Model,
) -> None:
    ranges = Ranges()

    async def handler(n: dict[str, Any]) -> None:
        ranges.record(n, model)

    e1 = model.entity("e1")
    async with Rig(model, handler) as rig:
        model.append(e1)
        await rig.settled()
        model.restart()  # subscriptions and generations gone
        e1b = model.entity("e1")
        model.append(e1b)  # generation 1 again, same subscription id
        await rig.settled()
    assert len(ranges.got) == 2  # both generation-1 events were claimed and handled


async def test_done_answers_back_off_before_the_next_claim(model: Model, fast: None) -> None:
    """200 {"done":true}: the entity is paused, the server re-announces at once; the
    runner spaces its claims (0.1, 0.2, 0.4 s here) instead of looping hot, and
    handles the work once the entity runs again."""
    ranges = Ranges()

    async def handler(n: dict[str, Any]) -> None:
        ranges.record(n, model)

    e1 = model.entity("e1")
    e1.paused = True
    async with Rig(model, handler) as rig:
        model.append(e1)
        await until(lambda: rig.d.stats.claims_done >= 3, 5, "three done answers")
        assert len(model.claim_requests()) <= 4  # no hot loop: ~0.3 s for three
        e1.paused = False
        await rig.settled()
    assert ranges.messages(e1.sid) == [1]
    assert ClaimResult.DONE in [r[0] for r in rig.obs.of("claim_result")]
    assert rig.d.stats.last_claim_result == "claimed"


async def test_skips_retries_and_give_ups(model: Model, fast: None) -> None:
    """204/409 skip at once; no answer, 5xx, 401, 409 NOT_RUNNING are retried until
    the claim is made; a 400 (the claim itself is wrong) is given up, logged."""
    ranges = Ranges()

    async def handler(n: dict[str, Any]) -> None:
        ranges.record(n, model)

    e1 = model.entity("e1")
    model.answer_override = [
        Answer(0, "connection refused"),
        Answer(503, None),
        Answer(401, _err("UNAUTHORIZED", "")),
        Answer(409, _err("NOT_RUNNING", "Runner is disabled")),
    ]
    async with Rig(model, handler) as rig:
        model.append(e1)
        await rig.settled()
        assert ranges.messages(e1.sid) == [1]
        assert rig.d.stats.claims_failed == 4 and rig.d.stats.claims_succeeded == 1
        assert "NOT_RUNNING" in rig.errors[-1]
        results = [r[0] for r in rig.obs.of("claim_result")]
        assert results == [ClaimResult.FAILED] * 3 + [ClaimResult.NOT_RUNNING, ClaimResult.CLAIMED]
        # a replayed event of a settled subscription: 409 NO_PENDING_WORK, skipped
        model.events.put_nowait({"type": "wake", "subscription_id": e1.sid, "generation": 1})
        await until(lambda: rig.d.stats.claims_skipped == 1, what="a skip")
        model.answer_override = [Answer(400, _err("INVALID_REQUEST", "does not match runner"))]
        model.events.put_nowait({"type": "wake", "subscription_id": "runner:other:x"})
        await rig.settled()
        assert "given up" in rig.errors[-1]
    assert rig.d.stats.last_claim_result == "error"


async def test_lease_heartbeats_while_the_handler_runs(model: Model) -> None:
    gate = asyncio.Event()

    async def handler(n: dict[str, Any]) -> None:
        await gate.wait()

    e1 = model.entity("e1")
    async with Rig(model, handler, callback_heartbeat_interval=0.05) as rig:
        model.append(e1)
        await until(lambda: len(model.callbacks("heartbeat")) >= 3, what="three heartbeats")
        gate.set()
        await rig.settled()
    beats = model.callbacks("heartbeat")
    assert all(b == {"epoch": 1} for b in beats)
    assert model.callbacks()[-1]["done"] is True  # the completion comes last
    assert rig.d.stats.callback_heartbeats == len(beats)
    assert [o for o, _ in rig.obs.of("callback_heartbeat")] == [CallbackOutcome.OK] * len(beats)
    assert rig.obs.of("completion")[0][0] is CallbackOutcome.OK


async def test_a_fenced_heartbeat_stops_the_handler_and_the_work_comes_back(
    model: Model,
) -> None:
    runs: list[str] = []
    cancelled = asyncio.Event()

    async def handler(n: dict[str, Any]) -> None:
        runs.append(n["wakeId"])
        if len(runs) == 1:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

    e1 = model.entity("e1")
    async with Rig(model, handler, callback_heartbeat_interval=0.05) as rig:
        model.append(e1)
        await until(lambda: runs, what="the handler")
        model.expire(e1)  # the lease ran out on the server: generation 2 announced
        await rig.settled()
    assert cancelled.is_set() and len(runs) == 2
    assert rig.d.stats.fenced == 1 and e1.acked == 1
    assert len(model.callbacks("done")) == 1  # only the second claim completes
    assert CallbackOutcome.FENCED in [o for o, _ in rig.obs.of("callback_heartbeat")]
    assert tuple(w[0] for w in rig.obs.of("wake") if w[0] is WakeOutcome.FENCED) == (
        WakeOutcome.FENCED,
    )


async def test_lease_heartbeats_without_answer_for_a_lease_lose_the_claim(model: Model) -> None:
    """The server is unreachable while the handler runs: heartbeats get no answer;
    once a whole lease (0.3 s here) passed without an acknowledged one, the claim
    counts as lost: the handler is stopped, nothing completes."""
    real = model.callback
    down = True

    async def unreachable(url: str, token: str, body: dict[str, Any]) -> Answer:
        if down:
            model.requests.append(("callback", body))
            return Answer(0, "connection refused")
        return await real(url, token, body)

    model.callback = unreachable  # type: ignore[method-assign]
    cancelled = asyncio.Event()

    async def handler(n: dict[str, Any]) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    e1 = model.entity("e1")
    async with Rig(model, handler, callback_heartbeat_interval=0.05, claim_lease=0.3) as rig:
        model.append(e1)
        await until(cancelled.is_set, 5, "the handler stopped")
        await rig.settled()
    assert rig.d.stats.fenced == 1 and rig.d.stats.completions == 0
    assert model.callbacks("done") == [] and len(model.callbacks("heartbeat")) >= 4
    assert "no lease heartbeat acknowledged" in rig.errors[-1]


async def test_a_fenced_completion_is_not_retried_and_the_work_comes_back(model: Model) -> None:
    runs: list[str] = []
    gate = asyncio.Event()

    async def handler(n: dict[str, Any]) -> None:
        runs.append(n["wakeId"])
        if len(runs) == 1:
            await gate.wait()

    e1 = model.entity("e1")
    async with Rig(model, handler) as rig:  # heartbeats every 10 s: none in this test
        model.append(e1)
        await until(lambda: runs, what="the handler")
        model.expire(e1)  # generation 2 announced; our done will be FENCED
        gate.set()
        await rig.settled()
    dones = model.callbacks("done")
    assert [d["epoch"] for d in dones] == [1, 2]  # the fenced one sent once, not retried
    assert rig.d.stats.fenced == 1 and rig.d.stats.completions == 1 and len(runs) == 2
    assert [o for o, _ in rig.obs.of("completion")] == [CallbackOutcome.FENCED, CallbackOutcome.OK]
    assert "FENCED" in rig.errors[0]


async def test_a_completion_that_got_no_answer_is_retried_within_the_lease(
    model: Model, fast: None
) -> None:
    e1 = model.entity("e1")
    real = model.callback
    failures = [Answer(0, "timeout"), Answer(503, None)]

    async def flaky(url: str, token: str, body: dict[str, Any]) -> Answer:
        if body.get("done") and failures:
            model.requests.append(("callback", body))
            return failures.pop(0)
        return await real(url, token, body)

    model.callback = flaky  # type: ignore[method-assign]
    async with Rig(model, _ok) as rig:
        model.append(e1)
        await rig.settled()
    assert len(model.callbacks("done")) == 3 and e1.acked == 1
    assert rig.d.stats.completions == 1 and rig.d.stats.fenced == 0


async def _ok(n: dict[str, Any]) -> None:
    pass


async def test_a_failed_handler_acks_nothing_and_the_lease_expiry_brings_it_back(
    model: Model,
) -> None:
    """Chosen policy: no ack, no release; the lease heartbeats stop, the server's
    lease expires (<= 30 s after the last acknowledged heartbeat) and announces a
    new generation, which is claimed and handled like any other."""
    runs: list[int] = []

    async def handler(n: dict[str, Any]) -> None:
        runs.append(n["epoch"])
        if len(runs) == 1:
            raise RuntimeError("boom")

    e1 = model.entity("e1")
    async with Rig(model, handler, callback_heartbeat_interval=0.05) as rig:
        model.append(e1)
        await until(lambda: rig.d.stats.handler_failures == 1, what="the failure")
        sent = len(model.callbacks())
        await never(lambda: len(model.callbacks()) > sent, 0.3, "a callback after the failure")
        assert e1.acked == 0 and e1.holder is not None  # still held until the lease runs out
        await rig.settled()  # committed past: the server announces the work again
        model.expire(e1)
        await rig.settled()
    assert runs == [1, 2] and e1.acked == 1
    assert "boom" in rig.errors[0]


async def test_a_stop_mid_claim_does_not_commit_past_the_event(model: Model, fast: None) -> None:
    model.answer_override = [Answer(503, None)] * 1000
    e1 = model.entity("e1")
    rig = Rig(model, _ok)
    async with rig:
        model.append(e1)
        await until(lambda: rig.d.stats.claims_failed >= 2, what="two failed claims")
    assert rig.commits == [] and rig.tracker.committed == "-1"


async def test_a_full_queue_pauses_reading() -> None:
    """`queue_size` subscriptions waiting for a worker: submit blocks (nothing dropped)."""
    release = asyncio.Event()
    model = Model()

    async def blocked(n: dict[str, Any]) -> None:
        await release.wait()

    d = Dispatcher(
        model,
        blocked,
        CommitTracker(),
        RecordingObserver(),
        lambda o: None,
        concurrency=1,
        queue_size=1,
    )
    subs = [model.entity(f"e{i}") for i in range(3)]
    for s in subs:
        model.append(s)
    d.start()
    try:
        await d.submit(model.events.get_nowait())  # taken by the worker
        await until(lambda: d.queued == 0, what="the worker taking it")
        await d.submit(model.events.get_nowait())  # fills the queue
        put = asyncio.create_task(d.submit(model.events.get_nowait()))
        await never(put.done, within=0.2, what="a submit into a full queue returning")
        release.set()
        async with asyncio.timeout(5):
            await put
    finally:
        await d.stop()


# --- the shell handler ------------------------------------------------------------
async def test_shell_handler_gets_the_notification_on_stdin_and_its_env(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env_out = tmp_path / "env"
    cmd = (
        f'cat > {out}; printf \'%s|%s|%s|%s\' "$PULLWAKE_WAKE_ID" "$PULLWAKE_ENTITY_URL"'
        f' "$PULLWAKE_STREAM_PATH" "$PULLWAKE_STREAM_OFFSET" > {env_out}'
    )
    await shell_handler(cmd)(NOTIFICATION)
    assert json.loads(out.read_text()) == NOTIFICATION
    assert env_out.read_text() == f"w_1|/t/e1|/t/e1/main|{offset(7)}"
    with pytest.raises(HandlerFailed, match="status 3"):
        await shell_handler("cat >/dev/null; exit 3")(NOTIFICATION)


async def test_a_cancelled_shell_handler_leaves_no_process_behind(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    handle = shell_handler(f"cat >/dev/null; sleep 30 & echo $! > {pidfile}; wait")
    task = asyncio.ensure_future(handle(NOTIFICATION))
    pid = 0
    try:
        await until(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the pid")
        pid = int(pidfile.read_text())
        assert pid_alive(pid)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: not pid_alive(pid), 5, "the handler's child to die")
    finally:
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


async def test_a_handler_past_its_timeout_is_killed_and_the_work_comes_back(
    tmp_path: Path, model: Model
) -> None:
    pidfile = tmp_path / "pid"
    handle = shell_handler(
        f"cat >/dev/null; if [ ! -e {pidfile} ]; then sleep 30 & echo $! > {pidfile}; wait; fi"
    )
    e1 = model.entity("e1")
    pid = 0
    async with Rig(model, handle, handler_timeout=0.5) as rig:
        try:
            model.append(e1)
            await until(lambda: rig.d.stats.handler_failures == 1, 10, "the timeout")
            pid = int(pidfile.read_text())
            await until(lambda: not pid_alive(pid), 5, "the killed handler's child to die")
            assert model.callbacks("done") == []
            assert "still running after 0.5s" in rig.errors[-1]
            model.expire(e1)
            await rig.settled()
        finally:
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert rig.d.stats.handled == 1 and e1.acked == 1


# --- latency ------------------------------------------------------------------------
def test_wake_latency_runs_from_publication_to_handler_start() -> None:
    now = time.monotonic()
    two_s_ago_ms = int((time.time() - 2) * 1000)  # the real server: integer ms
    assert 1.9 <= publish_latency({"ts": two_s_ago_ms}, now) < 3.0
    iso = (datetime.now(UTC) - timedelta(seconds=2)).isoformat().replace("+00:00", "Z")
    assert 1.9 <= publish_latency({"ts": iso}, now) < 3.0
    assert publish_latency({"ts": int((time.time() + 5) * 1000)}, now) == 0.0
    for wake in ({}, {"ts": "yesterday"}, {"ts": "2026-01-01T00:00:00"}, {"ts": 17}):
        assert 0.0 <= publish_latency(wake, now - 0.5) < 1.5
