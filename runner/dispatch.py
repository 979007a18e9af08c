"""Claims and dispatch, per subscription, as the real agents-server means them.

A wake event `{"type":"wake","subscription_id","stream","generation","ts"}`
says "subscription S (one per runner and entity) has unacknowledged data on
entity stream X".  It carries no wake id: a claim takes whatever wake of S
is current, whatever generation the event named.  So the unit of work here is
the *subscription*, not the event:

* At most one claim cycle (claim -> handler -> completion) per subscription is
  in flight.  An event for a subscription whose cycle is in flight is
  remembered (`again`) and the subscription is claimed once more after the
  cycle ends - never dropped and never merged into a cycle that started before
  it was read (the upstream runner's coalescing, electric PR #4726, cannot
  happen: the follow-up claim covers every event that arrived meanwhile).
* Nothing is deduplicated on `(subscription_id, generation)`: generations
  restart at 1 with the server; a claim with nothing to do is cheap (409).
* Claim answers: 200 notification -> run the handler; 200 `{"done":true}` ->
  nothing to do (entity paused/stopped; the server re-announces at once, so the
  next claim of that subscription waits DONE_BACKOFF_FIRST_S doubling up to
  DONE_BACKOFF_MAX_S - the upstream hot loop); 204 / 409 `ALREADY_CLAIMED` /
  `NO_PENDING_WORK` -> skip; 400 -> never heals, counted failed and given up;
  anything else (no answer, 5xx, 409 `NOT_RUNNING`, 401/403/404) -> retried
  with a capped backoff, because an unclaimed wake is never announced again.
* While the handler runs, `{epoch}` goes to the claim's `callback` every
  `callback_heartbeat_interval` s (the server's claim lease is 30 s and its
  answer does not say so).  On success: `{epoch, acks:[{path, offset}],
  done:true}` with `Authorization: Bearer <claimToken>`.  A 502
  `WAKE_CALLBACK_FAILED` (FENCED ...) means the claim was lost: logged,
  counted, not retried - the server announces the work again.  A callback that
  got no answer is retried while the lease may still hold.
* A failed handler (non-zero exit, exception, `handler_timeout`) acks nothing
  and stops the lease heartbeats: the claim lease runs out at most
  `claim_lease` s after the last acknowledged heartbeat and the server then
  announces a new generation, which this dispatcher claims like any other
  event.  So a failed wake comes back 20-30 s after the failure with the
  defaults (10 s heartbeats, 30 s lease), a natural retry delay; a release
  would retry a failing handler in a hot loop.
* Offsets (`CommitTracker`): each event read is an item, done once the claim
  cycle that *started after it was read* has ended (handled and completed,
  skipped, done, fenced, or failed - in every such case the server either has
  nothing pending or announces it again).  A cycle cut short by a stop leaves
  its events not done, so the committed offset stays before them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pullwake.core.protocol import (
    CallbackOutcome,
    ClaimResult,
    ErrorCode,
    WakeOutcome,
)
from pullwake.runner.api import Answer
from pullwake.runner.observe import RunnerObserver
from pullwake.runner.offsets import CommitTracker

log = logging.getLogger("pullwake.runner.dispatch")

Handler = Callable[[dict[str, Any]], Awaitable[None]]
CLAIM_RETRY_FIRST_S = 0.25
CLAIM_RETRY_MAX_S = 5.0
DONE_BACKOFF_FIRST_S = 1.0
DONE_BACKOFF_MAX_S = 30.0
COMPLETE_RETRY_S = 1.0
SKIP_CODES = frozenset({ErrorCode.ALREADY_CLAIMED.value, ErrorCode.NO_PENDING_WORK.value})
# ClaimResult -> the diagnostics' `last_claim_result` (the server keeps only these values)
LAST_CLAIM_RESULT = {
    ClaimResult.CLAIMED: "claimed",
    ClaimResult.DONE: "no_work",
    ClaimResult.SKIPPED: "no_work",
    ClaimResult.NOT_RUNNING: "error",
    ClaimResult.FAILED: "error",
}

# kept for older imports: a claim answer is a plain `Answer`
ClaimAnswer = Answer


class ClaimAPI(Protocol):
    async def claim(self, body: dict[str, Any]) -> Answer: ...

    async def callback(self, url: str, token: str, body: dict[str, Any]) -> Answer: ...


def claim_verdict(answer: Answer) -> ClaimResult:
    """Map a claim answer to what the dispatcher does with it (see the module doc)."""
    body = answer.body
    if answer.status == 200 and isinstance(body, dict):
        if _notification_fields(body) is not None:
            return ClaimResult.CLAIMED
        if body.get("done") is True:
            return ClaimResult.DONE
        return ClaimResult.FAILED  # 200 without a usable notification
    if answer.status == 204 or (answer.status == 409 and answer.error_code() in SKIP_CODES):
        return ClaimResult.SKIPPED
    if answer.status == 409 and answer.error_code() == ErrorCode.NOT_RUNNING.value:
        return ClaimResult.NOT_RUNNING
    return ClaimResult.FAILED


def gives_up(answer: Answer) -> bool:
    """A 400 is the server saying the claim itself is wrong: retrying cannot help."""
    return answer.status == 400


def _notification_fields(body: dict[str, Any]) -> tuple[str, str, int] | None:
    callback, token, epoch = body.get("callback"), body.get("claimToken"), body.get("epoch")
    if not isinstance(callback, str) or not isinstance(token, str):
        return None
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        return None
    return callback, token, epoch


def callback_outcome(answer: Answer) -> CallbackOutcome:
    """2xx ok; 502 naming FENCED fenced; 502/4xx rejected (lost too); else failed (retry)."""
    if 200 <= answer.status < 300:
        ok = answer.body.get("ok", True) if isinstance(answer.body, dict) else True
        return CallbackOutcome.OK if ok is not False else CallbackOutcome.REJECTED
    if answer.status == 502 or 400 <= answer.status < 500:
        text = answer.error_message() + (answer.error_code() or "")
        return CallbackOutcome.FENCED if "FENCED" in text else CallbackOutcome.REJECTED
    return CallbackOutcome.FAILED


@dataclass(frozen=True)
class Claim:
    """A claimed wake: the notification and what the runner needs of it."""

    notification: dict[str, Any]
    callback: str
    token: str
    epoch: int
    wake_id: str
    stream_path: str
    stream_offset: str
    entity_url: str
    acks: tuple[dict[str, str], ...]

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Claim:
        fields = _notification_fields(body)
        assert fields is not None
        callback, token, epoch = fields
        streams = body.get("streams")
        acks = tuple(
            {"path": s["path"], "offset": s["offset"]}
            for s in (streams if isinstance(streams, list) else [])
            if isinstance(s, dict)
            and isinstance(s.get("path"), str)
            and isinstance(s.get("offset"), str)
            and s["offset"] not in ("", "-1")  # acking -1 is INVALID_OFFSET
        )
        stream_path = body.get("streamPath")
        if not isinstance(stream_path, str):
            stream_path = acks[0]["path"] if acks else ""
        offset = next((a["offset"] for a in acks if a["path"] == stream_path), "")
        entity = body.get("entity")
        entity_url = entity.get("url") if isinstance(entity, dict) else None
        wake_id = body.get("wakeId", body.get("consumerId"))
        return cls(
            notification=body,
            callback=callback,
            token=token,
            epoch=epoch,
            wake_id=wake_id if isinstance(wake_id, str) else "",
            stream_path=stream_path,
            stream_offset=offset,
            entity_url=entity_url if isinstance(entity_url, str) else "",
            acks=acks,
        )


class HandlerFailed(Exception):
    """The handler did not succeed; nothing is acked and the claim is left to expire."""


class ClaimLost(Exception):
    """The server fenced our claim while the handler ran (lease heartbeat refused).

    `after` says what the server does with the work (see `_after_loss`)."""

    def __init__(self, why: str, after: str = "the server announces the work again") -> None:
        super().__init__(why)
        self.after = after


def handler_env(notification: dict[str, Any]) -> dict[str, str]:
    """The environment a `--handler` command gets on top of the runner's."""
    claim = Claim.parse(notification) if _notification_fields(notification) else None
    if claim is None:
        return {}
    return {
        "PULLWAKE_WAKE_ID": claim.wake_id,
        "PULLWAKE_ENTITY_URL": claim.entity_url,
        "PULLWAKE_STREAM_PATH": claim.stream_path,
        "PULLWAKE_STREAM_OFFSET": claim.stream_offset,
    }


def shell_handler(cmd: str) -> Handler:
    """Run `cmd` through the shell once per claim: the claim notification JSON on stdin,
    PULLWAKE_WAKE_ID / _ENTITY_URL / _STREAM_PATH / _STREAM_OFFSET in its environment.

    Each run gets its own process group, and a cancelled run (the runner stops,
    the handler timed out, the claim was lost) kills the whole group: killing
    only the shell would leave what it started running after the runner is gone.
    """

    async def handle(notification: dict[str, Any]) -> None:
        env = dict(os.environ, **handler_env(notification))
        proc = await asyncio.create_subprocess_shell(
            cmd, stdin=asyncio.subprocess.PIPE, env=env, start_new_session=True
        )
        try:
            await proc.communicate(json.dumps(notification).encode())
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group outlives a finished shell
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise HandlerFailed(f"handler exited with status {proc.returncode}")

    return handle


@dataclass
class DispatchStats:
    events_received: int = 0
    deferred: int = 0  # events read while their subscription's cycle was in flight
    claims_succeeded: int = 0
    claims_skipped: int = 0  # skip and done answers (the upstream runner's counting)
    claims_done: int = 0
    claims_failed: int = 0
    handled: int = 0
    handler_failures: int = 0
    completions: int = 0
    fenced: int = 0  # claims lost (heartbeat or completion fenced/rejected)
    callback_heartbeats: int = 0
    callback_heartbeat_failures: int = 0
    duplicates: int = 0  # always 0 now: nothing is deduplicated (kept for readers)
    last_claim_at: float | None = None
    last_claim_result: str | None = None
    last_dispatch_at: float | None = None


def publish_latency(wake: dict[str, Any], queued_at: float) -> float:
    """Seconds from the wake's publication (its `ts`) to now, the handler's start.

    `ts` is integer milliseconds upstream (ISO text from older servers).  It is
    the server's clock; a skewed clock must not give a negative latency, so it
    is clamped at 0.  Without a readable `ts`: the time since the runner read
    the event (`queued_at`, monotonic).
    """
    ts = wake.get("ts")
    published: float | None = None
    if isinstance(ts, (int, float)) and not isinstance(ts, bool) and ts > 1e12:  # ms, 2001+
        published = ts / 1000.0
    elif isinstance(ts, str):
        try:
            parsed = datetime.fromisoformat(ts)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            published = parsed.timestamp()
    if published is not None:
        return max(0.0, time.time() - published)
    return max(0.0, time.monotonic() - queued_at)


def subscription_key(event: dict[str, Any]) -> str:
    """The unit of claiming: `subscription_id`, else the entity stream, else the runner."""
    sid = event.get("subscription_id")
    if isinstance(sid, str) and sid:
        return sid
    stream = event.get("stream")
    return f"stream:{stream}" if isinstance(stream, str) and stream else ""


@dataclass
class _Sub:
    """One subscription's dispatch state."""

    key: str
    event: dict[str, Any]  # the latest event read (its body is the claim's)
    first: tuple[dict[str, Any], float] | None = None  # oldest waiting event, read at
    tickets: list[int] = field(default_factory=list)  # events waiting for the next cycle
    busy: bool = False  # queued, in a cycle, or waiting out a done backoff
    done_backoff: float = 0.0
    not_before: float = 0.0  # monotonic; no claim before (after a `done` answer)
    timer: asyncio.TimerHandle | None = None


class Dispatcher:
    def __init__(
        self,
        api: ClaimAPI,
        handler: Handler,
        tracker: CommitTracker,
        observer: RunnerObserver,
        on_commit: Callable[[str], None],
        *,
        concurrency: int = 4,
        queue_size: int = 64,
        on_error: Callable[[str], None] | None = None,
        handler_timeout: float | None = None,
        callback_heartbeat_interval: float = 10.0,
        claim_lease: float = 30.0,
    ) -> None:
        """`on_error` gets a one-line text for each failure (the runner's last_error).

        `handler_timeout`: a handler still running after that many seconds is
        cancelled (`shell_handler` then kills its process group) and the wake
        counts as failed, so a hung handler cannot hold its worker forever.
        `queue_size` bounds the subscriptions waiting for a worker: `submit`
        waits while it is reached (backpressure pauses reading, nothing dropped)."""
        self._api = api
        self._handler = handler
        self._tracker = tracker
        self._observer = observer
        self._on_commit = on_commit
        self._on_error = on_error or (lambda text: None)
        self._handler_timeout = handler_timeout
        self._hb_interval = callback_heartbeat_interval
        self._lease = claim_lease
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queue_size = queue_size
        self._dequeued = asyncio.Event()
        self._concurrency = concurrency
        self._subs: dict[str, _Sub] = {}
        self._cycles = 0
        self._workers: list[asyncio.Task[None]] = []
        self.stats = DispatchStats()

    def __repr__(self) -> str:
        return f"<Dispatcher queued={self._queue.qsize()} subs={len(self._subs)} {self._tracker!r}>"

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def in_flight(self) -> int:
        """Subscriptions queued, being claimed/handled, or backing off."""
        return sum(1 for s in self._subs.values() if s.busy)

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"dispatch-{i}")
            for i in range(self._concurrency)
        ]

    async def stop(self) -> None:
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        for sub in self._subs.values():
            if sub.timer is not None:
                sub.timer.cancel()
                sub.timer = None

    async def submit(self, event: dict[str, Any]) -> None:
        """One item read from the stream; waits while `queue_size` subscriptions wait."""
        ticket = self._tracker.add_item()
        if event.get("type", "wake") != "wake":  # not a wake: nothing to claim
            self._finish([ticket])
            return
        self.stats.events_received += 1
        self._observer.wake(WakeOutcome.RECEIVED, None)
        key = subscription_key(event)
        sub = self._subs.get(key)
        if sub is None:
            sub = self._subs[key] = _Sub(key, event)
        sub.event = event
        if sub.first is None:
            sub.first = (event, time.monotonic())
        sub.tickets.append(ticket)
        if sub.busy:
            # claimed again after the cycle in flight: this event is not lost
            self.stats.deferred += 1
            self._observer.wake(WakeOutcome.DEFERRED, None)
            return
        sub.busy = True
        delay = sub.not_before - time.monotonic()
        if delay > 0:
            self._later(sub, delay)
            return
        while self._queue.qsize() >= self._queue_size:
            self._dequeued.clear()
            await self._dequeued.wait()
        self._queue.put_nowait(key)

    def mark(self, offset: str) -> None:
        """The stream reached `offset`; commit it once everything before is done."""
        if self._tracker.add_mark(offset):
            self._on_commit(self._tracker.committed)

    def _finish(self, tickets: list[int]) -> None:
        moved = False
        for t in tickets:
            moved = self._tracker.done(t) or moved
        if moved:
            self._on_commit(self._tracker.committed)

    def _later(self, sub: _Sub, delay: float) -> None:
        def enqueue() -> None:
            sub.timer = None
            self._queue.put_nowait(sub.key)

        sub.timer = asyncio.get_running_loop().call_later(delay, enqueue)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._dequeued.set()
            sub = self._subs[key]
            tickets, sub.tickets = sub.tickets, []
            first, sub.first = sub.first, None
            result: ClaimResult | None = None
            try:
                result = await self._cycle(sub, first)
            except asyncio.CancelledError:
                # stopped mid-cycle: its events are not done, so the committed offset
                # stays before them (their claim may never have been made)
                sub.tickets[:0] = tickets
                raise
            except Exception:
                log.exception("dispatch of subscription %r failed", key)
            self._finish(tickets)
            self._after_cycle(sub, result)

    def _after_cycle(self, sub: _Sub, result: ClaimResult | None) -> None:
        if result is ClaimResult.DONE:
            sub.done_backoff = min(
                max(sub.done_backoff * 2, DONE_BACKOFF_FIRST_S), DONE_BACKOFF_MAX_S
            )
            sub.not_before = time.monotonic() + sub.done_backoff
        elif result is not None:
            sub.done_backoff = 0.0
            sub.not_before = 0.0
        if sub.tickets:  # events arrived during the cycle: claim once more
            delay = sub.not_before - time.monotonic()
            if delay > 0:
                self._later(sub, delay)
            else:
                self._queue.put_nowait(sub.key)
            return
        sub.busy = False
        if sub.done_backoff == 0.0:
            del self._subs[sub.key]

    # --- one cycle: claim -> handler (with lease heartbeats) -> completion -----------
    async def _cycle(self, sub: _Sub, first: tuple[dict[str, Any], float] | None) -> ClaimResult:
        self._cycles += 1
        trace_id = f"{sub.key}#{self._cycles}"  # one wake trace per cycle
        body = {"subscription_id": sub.key} if sub.event.get("subscription_id") else sub.event
        with self._observer.span("claim", {"wake_id": trace_id}):
            answer, result = await self._claim_until_answered(sub.key, body)
        s = self.stats
        s.last_claim_at = time.time()
        if result is not ClaimResult.CLAIMED:
            if result is ClaimResult.DONE:
                s.claims_done += 1
                log.info("claim of %s: done (entity paused or stopped)", sub.key)
            if result in (ClaimResult.DONE, ClaimResult.SKIPPED):
                s.claims_skipped += 1
            outcome = WakeOutcome.FAILED if result is ClaimResult.FAILED else WakeOutcome.SKIPPED
            self._observer.wake(outcome, trace_id)
            return result
        claim = Claim.parse(answer.body)
        s.claims_succeeded += 1
        self._observer.wake(WakeOutcome.CLAIMED, trace_id)
        event, read_at = first if first is not None else (sub.event, time.monotonic())
        await self._run_claimed(claim, trace_id, publish_latency(event, read_at))
        return result

    async def _claim_until_answered(
        self, key: str, body: dict[str, Any]
    ) -> tuple[Answer, ClaimResult]:
        """Claim until the server claims, skips or says done (see `claim_verdict`).

        A failed attempt is counted and shown (claims_failed, last_error, the
        observer), then retried after CLAIM_RETRY_FIRST_S doubling up to
        CLAIM_RETRY_MAX_S: a bounded rate per worker, never a spin."""
        delay = CLAIM_RETRY_FIRST_S
        s = self.stats
        while True:
            answer = await self._api.claim(body)
            result = claim_verdict(answer)
            self._observer.claim_result(result)
            s.last_claim_result = LAST_CLAIM_RESULT[result]
            if result not in (ClaimResult.FAILED, ClaimResult.NOT_RUNNING):
                return answer, result
            s.claims_failed += 1
            s.last_claim_at = time.time()
            what = _describe(answer)
            if gives_up(answer):
                self._on_error(f"claim of {key}: {what}; given up")
                log.error("claim of %s: %s; the server refuses it, given up", key, what)
                return answer, result
            self._on_error(f"claim of {key}: {what}; retrying")
            level = logging.INFO if answer.status == 0 or answer.status >= 500 else logging.WARNING
            log.log(level, "claim of %s: %s; retrying in %.2fs", key, what, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, CLAIM_RETRY_MAX_S)

    async def _run_claimed(self, claim: Claim, trace_id: str, latency_s: float) -> None:
        s = self.stats
        s.last_dispatch_at = time.time()
        lease = _Lease(time.monotonic())
        beats = asyncio.create_task(self._lease_heartbeats(claim, lease), name="claim-lease")
        try:
            handled = await self._handle(claim, trace_id, latency_s, beats)
        finally:
            beats.cancel()
            with contextlib.suppress(BaseException):
                await beats
        if handled:
            await self._complete(claim, trace_id, lease)

    async def _handle(
        self, claim: Claim, trace_id: str, latency_s: float, beats: asyncio.Task[None]
    ) -> bool:
        """Run the handler while the lease heartbeats hold the claim; True if it succeeded."""
        s = self.stats
        limit = asyncio.timeout(self._handler_timeout)
        run: asyncio.Future[None] | None = None
        try:
            with self._observer.span("handle", {"wake_id": trace_id}):
                # started inside the span: the handler's task (and its log lines) carry the trace
                run = asyncio.ensure_future(self._handler(claim.notification))
                async with limit:
                    done, _ = await asyncio.wait({run, beats}, return_when=asyncio.FIRST_COMPLETED)
                    if run not in done:  # the lease heartbeats ended: the claim is lost
                        lost = beats.exception() if not beats.cancelled() else None
                        if isinstance(lost, ClaimLost):
                            raise lost
                        raise ClaimLost(str(lost or "claim lost"))
                    await run
        except ClaimLost as exc:
            s.fenced += 1
            self._observer.wake(WakeOutcome.FENCED, trace_id)
            log.warning(
                "claim %s lost while its handler ran (%s): handler stopped; %s",
                claim.wake_id,
                exc,
                exc.after,
            )
            self._on_error(f"claim {claim.wake_id} lost: {exc}")
            return False
        except Exception as exc:
            why = str(exc) or type(exc).__name__
            if limit.expired():
                why = f"still running after {self._handler_timeout:g}s: killed"
            return self._failed(claim, trace_id, why)
        finally:
            if run is not None and not run.done():  # lost, timed out or stopped: it goes too
                run.cancel()
                with contextlib.suppress(BaseException):
                    await run
        s.handled += 1
        self._observer.wake(WakeOutcome.HANDLED, trace_id, latency_s)
        return True

    def _failed(self, claim: Claim, trace_id: str, why: str) -> bool:
        self.stats.handler_failures += 1
        self._observer.wake(WakeOutcome.FAILED, trace_id)
        log.warning(
            "handler failed for %s (wake %s): %s; nothing acked, the claim lease (%gs after"
            " the last heartbeat) runs out and the server announces the work again",
            claim.stream_path,
            claim.wake_id,
            why,
            self._lease,
        )
        self._on_error(f"handler for {claim.stream_path}: {why}")
        return False

    async def _lease_heartbeats(self, claim: Claim, lease: _Lease) -> None:
        """`{epoch}` every interval; returns (ending the handler) once the claim is lost."""
        s = self.stats
        while True:
            await asyncio.sleep(self._hb_interval)
            started = time.monotonic()
            answer = await self._api.callback(claim.callback, claim.token, {"epoch": claim.epoch})
            outcome = callback_outcome(answer)
            self._observer.callback_heartbeat(outcome, time.monotonic() - started)
            if outcome is CallbackOutcome.OK:
                s.callback_heartbeats += 1
                lease.acked_at = time.monotonic()
                continue
            s.callback_heartbeat_failures += 1
            what = _describe(answer)
            if outcome is not CallbackOutcome.FAILED:
                raise ClaimLost(f"lease heartbeat {what}", _after_loss(answer))
            if time.monotonic() - lease.acked_at >= self._lease:
                raise ClaimLost(f"no lease heartbeat acknowledged for {self._lease:g}s ({what})")
            log.info(
                "lease heartbeat of %s: %s; next in %gs", claim.wake_id, what, self._hb_interval
            )

    async def _complete(self, claim: Claim, trace_id: str, lease: _Lease) -> None:
        """`{epoch, acks, done:true}`; retried only while no answer came and the lease may hold."""
        s = self.stats
        body = {"epoch": claim.epoch, "acks": [dict(a) for a in claim.acks], "done": True}
        with self._observer.span("complete", {"wake_id": trace_id}):
            while True:
                started = time.monotonic()
                answer = await self._api.callback(claim.callback, claim.token, body)
                outcome = callback_outcome(answer)
                self._observer.completion(outcome, time.monotonic() - started)
                if outcome is CallbackOutcome.OK:
                    s.completions += 1
                    more = isinstance(answer.body, dict) and answer.body.get("next_wake") is True
                    log.debug("completed %s (next wake: %s)", claim.wake_id, more)
                    return
                what = _describe(answer)
                if outcome is CallbackOutcome.FAILED and (
                    time.monotonic() - lease.acked_at + COMPLETE_RETRY_S < self._lease
                ):
                    log.info("completion of %s: %s; retrying", claim.wake_id, what)
                    await asyncio.sleep(COMPLETE_RETRY_S)
                    continue
                s.fenced += 1
                self._observer.wake(WakeOutcome.FENCED, trace_id)
                log.warning(
                    "completion of %s: %s; the claim is lost and %s (its work is done: it may"
                    " be handled once more)",
                    claim.wake_id,
                    what,
                    _after_loss(answer),
                )
                self._on_error(f"completion of {claim.wake_id}: {what}")
                return


@dataclass
class _Lease:
    acked_at: float  # monotonic: the claim, then every acknowledged lease heartbeat


# In a refused completion's DS error: the server no longer knows the claim at
# all - a restart of a server that keeps subscriptions in memory only (the real
# agents-server does).  It announces nothing again for it.
FORGOTTEN_CLAIM_CODES = ("SUBSCRIPTION_NOT_FOUND", "TOKEN_INVALID")


def _after_loss(answer: Answer) -> str:
    """What the server does with the work of a claim it refused (heartbeat or completion)."""
    if any(code in answer.error_message() for code in FORGOTTEN_CLAIM_CODES):
        return (
            "the server forgot the claim (restarted without its subscriptions): it announces"
            " nothing again until the entity gets another message"
        )
    return "the server announces the work again"


def _describe(answer: Answer) -> str:
    if answer.status == 0:
        return f"no answer ({answer.body})"[:200]
    code = answer.error_code()
    text = f"HTTP {answer.status}" + (f" {code}" if code else "")
    message = answer.error_message()
    if "FENCED" in message:
        text += " (FENCED)"
    return text
