"""Claims and dispatch: each wake is claimed, handled, completed - never dropped.

Reading the stream only ever waits on `Dispatcher.submit`, which blocks while
the bounded queue is full (backpressure pauses reading; nothing is dropped).
`concurrency` workers take wakes off the queue.  A wake id seen before is
dropped as a duplicate, unless its handling failed or its claim was refused
(409: maybe our own claim whose answer was lost): then the claim is left to
expire, the server announces the wake again, and that second delivery must
get through.  Only the explicit skip answers (204, 409 `ALREADY_CLAIMED` /
`NO_PENDING_WORK`) let a wake pass unclaimed; any other answer (no answer,
5xx, 409 `NOT_RUNNING`, 401/403/404/400 ...) is retried with a capped backoff,
because a wake whose claim was never made is never announced again.  Every
wake finishes (handled, skipped, failed or duplicate) through the
`CommitTracker`, so the committed offset never passes a wake that is still
being worked on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pullwake.core.protocol import ErrorCode, WakeOutcome
from pullwake.runner.observe import RunnerObserver
from pullwake.runner.offsets import CommitTracker

log = logging.getLogger("pullwake.runner.dispatch")

Handler = Callable[[dict[str, Any]], Awaitable[None]]
SEEN_LIMIT = 10_000
CLAIM_RETRY_FIRST_S = 0.25
CLAIM_RETRY_MAX_S = 5.0
SKIP_CODES = frozenset({ErrorCode.ALREADY_CLAIMED.value, ErrorCode.NO_PENDING_WORK.value})


@dataclass(frozen=True)
class ClaimAnswer:
    status: int
    body: Any


class ClaimAPI(Protocol):
    async def claim(self, wake: dict[str, Any]) -> ClaimAnswer: ...

    async def complete(self, wake_id: str, claim_token: str) -> int: ...


def _error_code(answer: ClaimAnswer) -> str | None:
    error = answer.body.get("error") if isinstance(answer.body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def claim_verdict(answer: ClaimAnswer) -> str:
    """`claimed`, `skipped` (the server says there is nothing for us to do) or `retry`.

    Everything else is retried, 4xx included: a 401/403 (credentials), 404 (the
    server lost our registration), 400 or 409 `NOT_RUNNING` (disabled) may heal,
    and skipping would commit the offset past a wake that is then never announced
    again.
    """
    if answer.status == 204 or (answer.status == 409 and _error_code(answer) in SKIP_CODES):
        return "skipped"
    token = answer.body.get("claimToken") if isinstance(answer.body, dict) else None
    if answer.status == 200 and isinstance(token, str):
        return "claimed"
    return "retry"


def _describe(answer: ClaimAnswer) -> str:
    if answer.status == 0:
        return f"no answer ({answer.body})"[:200]
    code = _error_code(answer)
    return f"HTTP {answer.status}" + (f" {code}" if code else "")


class HandlerFailed(Exception):
    """The handler did not succeed; the claim is left to expire."""


def shell_handler(cmd: str) -> Handler:
    """Run `cmd` through the shell once per wake: JSON on stdin, PULLWAKE_WAKE_ID in env.

    Each run gets its own process group, and a cancelled run (the runner stops)
    kills the whole group: killing only the shell would leave what it started
    (`sleep`, a script's children) running after the runner is gone.
    """

    async def handle(wake: dict[str, Any]) -> None:
        env = dict(os.environ, PULLWAKE_WAKE_ID=str(wake.get("wake_id", "")))
        proc = await asyncio.create_subprocess_shell(
            cmd, stdin=asyncio.subprocess.PIPE, env=env, start_new_session=True
        )
        try:
            await proc.communicate(json.dumps(wake).encode())
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
    claims_succeeded: int = 0
    claims_skipped: int = 0
    claims_failed: int = 0
    handled: int = 0
    handler_failures: int = 0
    duplicates: int = 0
    last_claim_at: float | None = None
    last_claim_result: str | None = None
    last_dispatch_at: float | None = None


def publish_latency(wake: dict[str, Any], queued_at: float) -> float:
    """Seconds from the wake's publication (its `ts`) to now, the handler's start.

    `ts` is the server's clock; a skewed clock must not give a negative latency,
    so it is clamped at 0.  A wake without a readable `ts` falls back to the time
    since the runner read it off the stream (`queued_at`, monotonic).
    """
    ts = wake.get("ts")
    if isinstance(ts, str):
        try:
            published = datetime.fromisoformat(ts)
        except ValueError:
            published = None
        if published is not None and published.tzinfo is not None:
            return max(0.0, time.time() - published.timestamp())
    return max(0.0, time.monotonic() - queued_at)


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
    ) -> None:
        """`on_error` gets a one-line text for each failed claim (the runner's last_error).

        `handler_timeout`: a handler still running after that many seconds is
        cancelled (`shell_handler` then kills its process group) and the wake
        counts as failed, so a hung handler cannot hold its worker forever."""
        self._api = api
        self._handler = handler
        self._tracker = tracker
        self._observer = observer
        self._on_commit = on_commit
        self._on_error = on_error or (lambda text: None)
        self._handler_timeout = handler_timeout
        self._queue: asyncio.Queue[tuple[int, dict[str, Any], float, bool]] = asyncio.Queue(
            queue_size
        )
        self._concurrency = concurrency
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._uncompleted: set[str] = set()  # handled, but the complete call failed
        self._workers: list[asyncio.Task[None]] = []
        self.stats = DispatchStats()

    def __repr__(self) -> str:
        return f"<Dispatcher queued={self._queue.qsize()} {self._tracker!r}>"

    @property
    def queued(self) -> int:
        return self._queue.qsize()

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

    async def submit(self, wake: dict[str, Any]) -> None:
        """Queue one wake read from the stream; waits while the queue is full."""
        self.stats.events_received += 1
        wake_id = wake.get("wake_id")
        ticket = self._tracker.add_item()
        if isinstance(wake_id, str) and wake_id in self._uncompleted:
            # handled already; only the completion is missing: claim + complete again
            await self._queue.put((ticket, wake, time.monotonic(), False))
            return
        if isinstance(wake_id, str) and wake_id in self._seen:
            self.stats.duplicates += 1
            self._observer.wake(WakeOutcome.DUPLICATE, wake_id)
            self._finish(ticket)
            return
        if isinstance(wake_id, str):
            self._seen[wake_id] = None
            while len(self._seen) > SEEN_LIMIT:
                self._seen.popitem(last=False)
        self._observer.wake(WakeOutcome.RECEIVED, wake_id if isinstance(wake_id, str) else None)
        await self._queue.put((ticket, wake, time.monotonic(), True))

    def mark(self, offset: str) -> None:
        """The stream reached `offset`; commit it once everything before is done."""
        if self._tracker.add_mark(offset):
            self._on_commit(self._tracker.committed)

    def _finish(self, ticket: int) -> None:
        if self._tracker.done(ticket):
            self._on_commit(self._tracker.committed)

    async def _work(self) -> None:
        while True:
            ticket, wake, queued_at, run_handler = await self._queue.get()
            try:
                await self._one(wake, queued_at, run_handler)
            except asyncio.CancelledError:
                # stopped mid-wake: it is not done, so the committed offset must stay
                # before it (its claim may never have been made: nothing would
                # announce it again after a restart)
                raise
            except Exception:
                log.exception("dispatch of %r failed", wake.get("wake_id"))
            self._finish(ticket)

    async def _one(self, wake: dict[str, Any], queued_at: float, run_handler: bool) -> None:
        wake_id = str(wake.get("wake_id", ""))
        started = time.monotonic()
        s = self.stats
        with self._observer.span("claim", {"wake_id": wake_id}):
            answer = await self._claim_until_answered(wake)
        s.last_claim_at = time.time()
        claim_s = time.monotonic() - started
        if claim_verdict(answer) == "skipped":
            s.claims_skipped += 1
            s.last_claim_result = "skipped"
            # A 409 may be our own earlier claim whose answer was lost (server frozen
            # or killed mid-request): when that lease runs out the server announces
            # the wake again, and that announcement must not be dropped as a duplicate.
            self._forget(wake_id)
            self._observer.claim(WakeOutcome.SKIPPED, claim_s)
            self._observer.wake(WakeOutcome.SKIPPED, wake_id)
            return
        token = str(answer.body["claimToken"])
        s.claims_succeeded += 1
        s.last_claim_result = "claimed"
        self._observer.claim(WakeOutcome.CLAIMED, claim_s)
        if run_handler:
            latency_s = publish_latency(wake, queued_at)  # measured as the handler starts
            if not await self._handle(wake, wake_id):
                return
            s.handled += 1
            self._observer.wake(WakeOutcome.HANDLED, wake_id, latency_s)
        await self._complete(wake_id, token)

    async def _claim_until_answered(self, wake: dict[str, Any]) -> ClaimAnswer:
        """Claim until the server claims or skips it (see `claim_verdict`).

        A failed attempt is counted and shown (claims_failed, last_error, the
        observer's `claim` failed), then retried after CLAIM_RETRY_FIRST_S doubling
        up to CLAIM_RETRY_MAX_S: a bounded rate per worker, never a spin."""
        delay = CLAIM_RETRY_FIRST_S
        wake_id = wake.get("wake_id")
        while True:
            started = time.monotonic()
            try:
                answer = await self._api.claim(wake)
            except Exception as exc:
                answer = ClaimAnswer(0, str(exc))
            if claim_verdict(answer) != "retry":
                return answer
            s = self.stats
            s.claims_failed += 1
            s.last_claim_at = time.time()
            s.last_claim_result = f"failed: {answer.status}"
            what = _describe(answer)
            self._observer.claim(WakeOutcome.FAILED, time.monotonic() - started)
            self._on_error(f"claim of wake {wake_id}: {what}; retrying")
            level = logging.INFO if answer.status == 0 or answer.status >= 500 else logging.WARNING
            log.log(level, "claim of wake %s: %s; retrying in %.2fs", wake_id, what, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, CLAIM_RETRY_MAX_S)

    async def _handle(self, wake: dict[str, Any], wake_id: str) -> bool:
        s = self.stats
        s.last_dispatch_at = time.time()
        h_started = time.monotonic()
        limit = asyncio.timeout(self._handler_timeout)
        try:
            with self._observer.span("handle", {"wake_id": wake_id}):
                async with limit:
                    await self._handler(wake)
        except Exception as exc:
            why = str(exc) or type(exc).__name__
            if limit.expired():
                why = f"still running after {self._handler_timeout:g}s: killed"
            s.handler_failures += 1
            self._forget(wake_id)
            self._observer.handler(WakeOutcome.FAILED, time.monotonic() - h_started)
            self._observer.wake(WakeOutcome.FAILED, wake_id)
            log.warning("handler failed for wake %s: %s (claim left to expire)", wake_id, why)
            self._on_error(f"handler for wake {wake_id}: {why}")
            return False
        self._observer.handler(WakeOutcome.HANDLED, time.monotonic() - h_started)
        return True

    async def _complete(self, wake_id: str, token: str) -> None:
        with self._observer.span("complete", {"wake_id": wake_id}):
            try:
                status = await self._api.complete(wake_id, token)
            except Exception as exc:
                status = 0
                log.warning("complete of wake %s failed: %s", wake_id, exc)
        if status in (200, 204):
            self._uncompleted.discard(wake_id)
        else:
            # the claim will expire and the wake be announced again: complete it then
            self._uncompleted.add(wake_id)
            log.warning("complete of wake %s answered %s", wake_id, status)

    def _forget(self, wake_id: str) -> None:
        self._seen.pop(wake_id, None)
