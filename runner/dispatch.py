"""Claims and dispatch: each wake is claimed, handled, completed - never dropped.

Reading the stream only ever waits on `Dispatcher.submit`, which blocks while
the bounded queue is full (backpressure pauses reading; nothing is dropped).
`concurrency` workers take wakes off the queue.  A wake id seen before is
dropped as a duplicate, unless its handling failed or its claim was refused
(409: maybe our own claim whose answer was lost): then the claim is left to
expire, the server announces the wake again, and that second delivery must
get through.  Every wake finishes (handled, skipped, failed or duplicate)
through the `CommitTracker`, so the committed offset never passes a wake
that is still being worked on.
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
from typing import Any, Protocol

from pullwake.protocol import ErrorCode, WakeOutcome
from runner.observe import RunnerObserver
from runner.offsets import CommitTracker

log = logging.getLogger("runner.dispatch")

Handler = Callable[[dict[str, Any]], Awaitable[None]]
SEEN_LIMIT = 10_000
CLAIM_RETRY_FIRST_S = 0.25
CLAIM_RETRY_MAX_S = 5.0
NOT_RUNNING = ErrorCode.NOT_RUNNING.value


@dataclass(frozen=True)
class ClaimAnswer:
    status: int
    body: Any


class ClaimAPI(Protocol):
    async def claim(self, wake: dict[str, Any]) -> ClaimAnswer: ...

    async def complete(self, wake_id: str, claim_token: str) -> int: ...


def _not_running(answer: ClaimAnswer) -> bool:
    """409 NOT_RUNNING: this runner is disabled; the wake waits, it is not skipped."""
    error = answer.body.get("error") if isinstance(answer.body, dict) else None
    return answer.status == 409 and isinstance(error, dict) and error.get("code") == NOT_RUNNING


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
    ) -> None:
        self._api = api
        self._handler = handler
        self._tracker = tracker
        self._observer = observer
        self._on_commit = on_commit
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
                raise
            except Exception:
                log.exception("dispatch of %r failed", wake.get("wake_id"))
            finally:
                self._finish(ticket)

    async def _one(self, wake: dict[str, Any], queued_at: float, run_handler: bool) -> None:
        wake_id = str(wake.get("wake_id", ""))
        started = time.monotonic()
        s = self.stats
        with self._observer.span("claim", {"wake_id": wake_id}):
            answer = await self._claim_until_answered(wake)
        s.last_claim_at = time.time()
        claim_s = time.monotonic() - started
        if answer.status in (204, 409):
            s.claims_skipped += 1
            s.last_claim_result = "skipped"
            # A 409 may be our own earlier claim whose answer was lost (server frozen
            # or killed mid-request): when that lease runs out the server announces
            # the wake again, and that announcement must not be dropped as a duplicate.
            self._forget(wake_id)
            self._observer.claim(WakeOutcome.SKIPPED, claim_s)
            self._observer.wake(WakeOutcome.SKIPPED, wake_id)
            return
        token = answer.body.get("claimToken") if isinstance(answer.body, dict) else None
        if answer.status != 200 or not isinstance(token, str):
            s.claims_failed += 1
            s.last_claim_result = f"failed: {answer.status}"
            self._forget(wake_id)  # let a later announcement of it through
            self._observer.claim(WakeOutcome.FAILED, claim_s)
            self._observer.wake(WakeOutcome.FAILED, wake_id)
            return
        s.claims_succeeded += 1
        s.last_claim_result = "claimed"
        self._observer.claim(WakeOutcome.CLAIMED, claim_s)
        if run_handler:
            if not await self._handle(wake, wake_id):
                return
            s.handled += 1
            self._observer.wake(WakeOutcome.HANDLED, wake_id, time.monotonic() - queued_at)
        await self._complete(wake_id, token)

    async def _claim_until_answered(self, wake: dict[str, Any]) -> ClaimAnswer:
        """Retry while the server cannot answer (down, 5xx) or the runner is disabled
        (409 NOT_RUNNING, until it is enabled again): a wake whose claim was never
        made is never announced again, so giving up here would lose it."""
        delay = CLAIM_RETRY_FIRST_S
        while True:
            try:
                answer = await self._api.claim(wake)
            except Exception as exc:
                answer = ClaimAnswer(0, str(exc))
            if answer.status != 0 and answer.status < 500 and not _not_running(answer):
                return answer
            log.info("claim of %s: %s; retrying in %.1fs", wake.get("wake_id"), answer, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, CLAIM_RETRY_MAX_S)

    async def _handle(self, wake: dict[str, Any], wake_id: str) -> bool:
        s = self.stats
        s.last_dispatch_at = time.time()
        h_started = time.monotonic()
        try:
            with self._observer.span("handle", {"wake_id": wake_id}):
                await self._handler(wake)
        except Exception as exc:
            s.handler_failures += 1
            self._forget(wake_id)
            self._observer.handler(WakeOutcome.FAILED, time.monotonic() - h_started)
            self._observer.wake(WakeOutcome.FAILED, wake_id)
            log.warning("handler failed for wake %s: %s (claim left to expire)", wake_id, exc)
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
