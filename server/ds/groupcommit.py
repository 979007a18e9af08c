"""Group commit: the store's one writer thread and the batches it commits.

Every write (`DSStore.call`) is a `Job` on a queue.  The writer takes whatever is
queued (up to MAX_BATCH), runs it in ONE SQLite transaction (each call's `tx()` a
savepoint, so a refused call rolls back alone), COMMITs once - one flush for all -
and only then hands the jobs back to their event loops.  Nothing is acknowledged
before it is on disk, and concurrent appends (on one stream or many) share flushes.

Pre-commit phase: when a batch holds appends that some listener wants to see early
(`early(effects)`: a subscription links the stream), the writer keeps the
transaction open for at most PRECOMMIT_WAIT while the loop starts those listeners
(`precommit(phase, jobs)`).  A listener's first write (a wake event) settles its
share of the phase; once all are settled the writer runs what was queued meanwhile
in the same transaction and commits: a send and its wake event share one flush.
A listener slower than that simply writes in the next batch, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("pullwake.server.ds.groupcommit")

MAX_BATCH = 512  # calls sharing one commit at most
PRECOMMIT_WAIT = 0.01  # s the writer holds a batch open for its early listeners' writes


class BatchCore(Protocol):
    """What the writer needs of `StoreCore`."""

    def begin_batch(self) -> None: ...

    def commit_batch(self, written: Any) -> None: ...

    def take_effects(self) -> Any: ...


class Job:
    """One queued call: run by the writer, handed back to `loop` after the commit."""

    __slots__ = ("args", "effects", "exc", "fn", "future", "kwargs", "listening", "loop", "result")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        effects: Any,
    ) -> None:
        self.fn, self.args, self.kwargs, self.loop = fn, args, kwargs, loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.result: Any = None
        self.exc: BaseException | None = None
        self.effects = effects  # what the call changed (the store's _Effects)
        self.listening: asyncio.Task[None] | None = None  # listeners started before the commit


class Phase:
    """A batch's pre-commit phase.  `open` counts listener tasks not yet settled
    (finished, or queued their first write); the writer waits for zero."""

    def __init__(self, tails: dict[str, str]) -> None:
        self.tails = tails  # path -> its tail once this batch commits
        self.open = 0
        self.done = threading.Event()

    def settle(self) -> None:
        self.open -= 1
        if self.open <= 0:
            self.done.set()


class Settle:
    """One early listener task's mark (in its context, `PHASE`): settles once."""

    __slots__ = ("phase", "settled")

    def __init__(self, phase: Phase) -> None:
        self.phase = phase
        self.settled = False

    def settle(self) -> None:
        if not self.settled:
            self.settled = True
            self.phase.settle()


PHASE: contextvars.ContextVar[Settle | None] = contextvars.ContextVar(
    "pullwake_ds_precommit", default=None
)


def resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def resolve_after(fut: asyncio.Future[None], _task: asyncio.Task[None]) -> None:
    resolve(fut)


class Writer:
    """The writer thread (see the module doc).  `deliver(jobs)` runs on each job's loop
    after the commit; `early(effects)` (writer thread) picks jobs for the pre-commit
    phase and `precommit(phase, jobs)` (on the loop) starts their listeners."""

    def __init__(
        self,
        core: BatchCore,
        *,
        deliver: Callable[[list[Job]], None],
        early: Callable[[Any], bool],
        precommit: Callable[[Phase, list[Job]], None],
    ) -> None:
        self.core = core
        self._deliver = deliver
        self._early = early
        self._precommit = precommit
        self.commits = 0  # group commits done (tests and benchmarks look)
        self.committed_calls = 0  # calls they carried
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._write_loop, name="pullwake-ds-writer", daemon=True
        )
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def stop(self) -> None:
        """Finish what is queued, then end the thread (joined)."""
        self._queue.put(None)
        self._thread.join()

    def _write_loop(self) -> None:
        q = self._queue
        while True:
            first = q.get()
            if first is None:
                return
            jobs = [first]
            if not self._drain(jobs) or not self._run_batch(jobs):
                self._flush_stop()
                return

    def _drain(self, jobs: list[Job]) -> bool:
        """Add what is queued (up to MAX_BATCH); False if the stop mark was met."""
        while len(jobs) < MAX_BATCH:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return True
            if nxt is None:
                return False
            jobs.append(nxt)
        return True

    def _flush_stop(self) -> None:
        """Stopping: whatever is still queued is failed, never left waiting."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.exc = RuntimeError("the store is closed")
                self._hand_over([job])

    def _run_batch(self, jobs: list[Job]) -> bool:
        """Run `jobs` in one transaction and commit once; False if the stop mark was
        drained meanwhile (the batch still completes)."""
        core = self.core
        try:
            core.begin_batch()
        except BaseException as exc:
            log.exception("could not begin a write batch")
            for job in jobs:
                job.exc = exc
            self._hand_over(jobs)
            return True
        written: list[Any] = []
        self._run_jobs(jobs, written)
        going = True
        phase: Phase | None = None
        early = [j for j in jobs if j.exc is None and self._early(j.effects)]
        early = [j for j in early if j.loop is early[0].loop]  # one loop runs the phase
        if early:
            tails = {a.path: a.tail for j in early for a in j.effects.appended}
            phase = Phase(tails)
            try:
                early[0].loop.call_soon_threadsafe(self._precommit, phase, early)
            except RuntimeError:  # that loop is closed
                phase.done.set()
            phase.done.wait(PRECOMMIT_WAIT)
            more: list[Job] = []
            going = self._drain(more)
            self._run_jobs(more, written)
            jobs.extend(more)
        try:
            core.commit_batch(written)
        except BaseException as exc:
            log.exception("a write batch failed to commit")
            for job in jobs:
                job.result, job.exc, job.effects = None, exc, core.take_effects()
        if phase is not None:
            # committed (or failed): contexts that outlive the phase (timers armed by a
            # listener) must see committed tails from now on
            phase.tails = {}
        self.commits += 1
        self.committed_calls += len(jobs)
        self._hand_over(jobs)
        return going

    def _run_jobs(self, jobs: list[Job], written: list[Any]) -> None:
        core = self.core
        for job in jobs:
            try:
                job.result = job.fn(core, *job.args, **job.kwargs)
            except BaseException as exc:
                job.exc = exc
            job.effects = core.take_effects()
            written.extend(job.effects.written)

    def _hand_over(self, jobs: list[Job]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Job]] = {}
        for job in jobs:
            by_loop.setdefault(job.loop, []).append(job)
        for loop, group in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(self._deliver, group)
