"""In-memory view of live reads: who is streaming right now, and wake-ups.

`LiveReads` counts the open live reads of each runner's wake stream (SSE
responses, in-flight long-polls) and remembers since when the stream has been
continuously open.  A long-poll client is between two polls most of the
time it is not waiting, so a read that ended less than `grace` seconds ago
still counts as open.  All methods run on the event loop; `counts()` and
`view()` may also be called from a metrics thread (guarded by a lock).

`Notifier` wakes the readers of a stream when something is appended, and
everyone at once on shutdown.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from pullwake.core.protocol import LiveMode


@dataclass
class _RunnerReads:
    open: dict[LiveMode, int] = field(default_factory=lambda: {m: 0 for m in LiveMode})
    open_since: float | None = None  # wall time the current open spell began
    last_closed_at: float | None = None  # wall time the last read ended
    last_read_at: float | None = None  # wall time of the last read start/delivery/end


@dataclass(frozen=True)
class ServerView:
    """The server's own knowledge of a runner's stream (the health `server_view`)."""

    stream_open: bool
    stream_open_since: float | None  # unix time
    last_stream_read_at: float | None  # unix time
    open_reads: dict[LiveMode, int]
    closed_for: float | None  # seconds with no open read (None while open)


class LiveReads:
    def __init__(self, grace: float, started_at: float | None = None) -> None:
        self.grace = grace
        self.started_at = time.time() if started_at is None else started_at
        self._runners: dict[str, _RunnerReads] = {}
        self._lock = threading.Lock()

    def opened(self, runner_id: str, mode: LiveMode) -> None:
        now = time.time()
        with self._lock:
            r = self._runners.setdefault(runner_id, _RunnerReads())
            if r.open_since is None or not self._is_open(r, now):
                r.open_since = now
            r.open[mode] += 1
            r.last_read_at = now

    def touched(self, runner_id: str) -> None:
        """Something was delivered on a live read."""
        with self._lock:
            r = self._runners.get(runner_id)
            if r is not None:
                r.last_read_at = time.time()

    def closed(self, runner_id: str, mode: LiveMode) -> None:
        now = time.time()
        with self._lock:
            r = self._runners.setdefault(runner_id, _RunnerReads())
            r.open[mode] = max(0, r.open[mode] - 1)
            r.last_closed_at = now
            r.last_read_at = now

    def read_happened(self, runner_id: str) -> None:
        """A catch-up read: not a live read, but a sign of life."""
        with self._lock:
            self._runners.setdefault(runner_id, _RunnerReads()).last_read_at = time.time()

    def _is_open(self, r: _RunnerReads, now: float) -> bool:
        if any(r.open.values()):
            return True
        return (
            r.open_since is not None
            and r.last_closed_at is not None
            and now - r.last_closed_at < self.grace
        )

    def view(self, runner_id: str, now: float | None = None) -> ServerView:
        now = time.time() if now is None else now
        with self._lock:
            r = self._runners.get(runner_id)
            if r is None:
                return ServerView(
                    False, None, None, {m: 0 for m in LiveMode}, now - self.started_at
                )
            is_open = self._is_open(r, now)
            if not is_open:
                r.open_since = None
            closed_for = None
            if not is_open:
                closed_for = now - (r.last_closed_at or self.started_at)
            return ServerView(is_open, r.open_since, r.last_read_at, dict(r.open), closed_for)

    def counts(self) -> dict[str, dict[LiveMode, int]]:
        with self._lock:
            return {rid: dict(r.open) for rid, r in self._runners.items()}


class Notifier:
    """One asyncio.Event per stream path, replaced after each notification."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.closing = False

    def waiter(self, path: str) -> asyncio.Event:
        """Take this before reading the store, then wait on it: no lost wake-up."""
        ev = self._events.get(path)
        if ev is None:
            ev = self._events[path] = asyncio.Event()
        return ev

    def notify(self, path: str) -> None:
        ev = self._events.pop(path, None)
        if ev is not None:
            ev.set()

    def close_all(self) -> None:
        """Shutdown: every waiting reader returns now."""
        self.closing = True
        events, self._events = self._events, {}
        for ev in events.values():
            ev.set()
