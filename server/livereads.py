"""Open live reads per runner: the server's own view of a wake stream.

`LiveReads` counts the open live reads of each runner's wake stream (SSE
responses, in-flight long-polls) and remembers since when the stream has been
continuously open.  A long-poll client is between two polls most of the time
it is not waiting, so a read that ended less than `grace` seconds ago still
counts as open.  Methods may be called from the event loop and from a
metrics thread (one lock).  Pure: no I/O.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from pullwake.core.protocol import LiveMode
from pullwake.server.health import ONLINE


@dataclass
class _RunnerReads:
    open: dict[LiveMode, int] = field(default_factory=lambda: {m: 0 for m in LiveMode})
    open_since: float | None = None  # wall time the current open spell began
    last_closed_at: float | None = None  # wall time the last read ended
    last_read_at: float | None = None  # wall time of the last read start/delivery/end


@dataclass(frozen=True)
class ServerView:
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
        """Something was delivered on a live read, or a catch-up read happened."""
        with self._lock:
            self._runners.setdefault(runner_id, _RunnerReads()).last_read_at = time.time()

    def closed(self, runner_id: str, mode: LiveMode) -> None:
        now = time.time()
        with self._lock:
            r = self._runners.setdefault(runner_id, _RunnerReads())
            r.open[mode] = max(0, r.open[mode] - 1)
            r.last_closed_at = now
            r.last_read_at = now

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
            closed_for = None if is_open else now - (r.last_closed_at or self.started_at)
            return ServerView(is_open, r.open_since, r.last_read_at, dict(r.open), closed_for)


def stream_mismatch(connected: bool | None, liveness: str, view: ServerView, grace: float) -> bool:
    """The client claims a connected stream; the server has seen no read beyond grace."""
    if liveness != ONLINE or connected is not True:
        return False
    return not view.stream_open and (view.closed_for is None or view.closed_for >= grace)
