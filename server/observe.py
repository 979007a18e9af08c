"""The seam between the server and whatever watches it (telemetry, tests).

The server core never imports OpenTelemetry.  It reports events to a
`ServerObserver` (counters: wakes published, heartbeats accepted, claim
answers, live reads opened/closed, request durations); gauges are not pushed
but read at collection time from `ServerSnapshotSource.snapshot()`, which is
thread-safe (an OTel metric reader calls it from its own thread).

Observers must be cheap and must never raise into the server: the app wraps
the configured observer in `SafeObserver`, which logs and swallows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pullwake.core.protocol import ClaimOutcome, LiveMode
from pullwake.server.health import liveness_status, stream_mismatch
from pullwake.server.live import LiveReads
from pullwake.server.store import Store

log = logging.getLogger("pullwake.server.observe")


class ServerObserver(Protocol):
    def wake_published(self, runner_id: str) -> None:
        """A wake was appended durably (its 201 is about to be sent)."""

    def heartbeat_accepted(self, runner_id: str) -> None: ...

    def claim_answered(self, runner_id: str, outcome: ClaimOutcome) -> None:
        """Claim answers (claimed/conflict/empty), completions, and lease expiries."""

    def live_read_opened(self, runner_id: str, mode: LiveMode) -> None: ...

    def live_read_closed(self, runner_id: str, mode: LiveMode) -> None: ...

    def request_finished(self, route: str, method: str, status: int, duration_s: float) -> None:
        """A non-streaming API request finished (live reads are not reported here)."""


class NullServerObserver:
    """Observes nothing; the default."""

    def wake_published(self, runner_id: str) -> None:
        pass

    def heartbeat_accepted(self, runner_id: str) -> None:
        pass

    def claim_answered(self, runner_id: str, outcome: ClaimOutcome) -> None:
        pass

    def live_read_opened(self, runner_id: str, mode: LiveMode) -> None:
        pass

    def live_read_closed(self, runner_id: str, mode: LiveMode) -> None:
        pass

    def request_finished(self, route: str, method: str, status: int, duration_s: float) -> None:
        pass


class SafeObserver:
    """Forwards to an observer; its exceptions are logged, never raised."""

    def __init__(self, inner: ServerObserver) -> None:
        self.inner = inner

    def _call(self, method: str, *args: Any) -> None:
        try:
            getattr(self.inner, method)(*args)
        except Exception:  # telemetry must never hurt the server
            log.exception("observer %r failed in %s", self.inner, method)

    def wake_published(self, runner_id: str) -> None:
        self._call("wake_published", runner_id)

    def heartbeat_accepted(self, runner_id: str) -> None:
        self._call("heartbeat_accepted", runner_id)

    def claim_answered(self, runner_id: str, outcome: ClaimOutcome) -> None:
        self._call("claim_answered", runner_id, outcome)

    def live_read_opened(self, runner_id: str, mode: LiveMode) -> None:
        self._call("live_read_opened", runner_id, mode)

    def live_read_closed(self, runner_id: str, mode: LiveMode) -> None:
        self._call("live_read_closed", runner_id, mode)

    def request_finished(self, route: str, method: str, status: int, duration_s: float) -> None:
        self._call("request_finished", route, method, status, duration_s)


@dataclass
class RecordingServerObserver(NullServerObserver):
    """Keeps every call for tests: `calls` holds (method, args)."""

    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def wake_published(self, runner_id: str) -> None:
        self.calls.append(("wake_published", (runner_id,)))

    def heartbeat_accepted(self, runner_id: str) -> None:
        self.calls.append(("heartbeat_accepted", (runner_id,)))

    def claim_answered(self, runner_id: str, outcome: ClaimOutcome) -> None:
        self.calls.append(("claim_answered", (runner_id, outcome)))

    def live_read_opened(self, runner_id: str, mode: LiveMode) -> None:
        self.calls.append(("live_read_opened", (runner_id, mode)))

    def live_read_closed(self, runner_id: str, mode: LiveMode) -> None:
        self.calls.append(("live_read_closed", (runner_id, mode)))


@dataclass(frozen=True)
class RunnerGauges:
    """Per-runner gauge values at collection time."""

    runner_id: str
    open_streams: Mapping[LiveMode, int]  # every LiveMode present, 0 when none
    pending_wakes: int  # unclaimed or claimed with a live lease, not completed
    lease_remaining_s: float | None  # None before the first heartbeat; negative once expired
    stream_mismatch: bool  # diagnostics say stream_connected, server has no open read


@dataclass(frozen=True)
class ServerSnapshot:
    taken_at: float  # unix time
    runners: tuple[RunnerGauges, ...]


class ServerSnapshotSource:
    """Builds `ServerSnapshot`s from in-memory facts only (no I/O, any thread)."""

    def __init__(self, store: Store, live: LiveReads) -> None:
        self._store = store
        self._live = live

    def snapshot(self) -> ServerSnapshot:
        now = time.time()
        now_ms = int(now * 1000)
        gauges = []
        for rid, facts in sorted(self._store.facts().items()):
            view = self._live.view(rid, now)
            liveness = liveness_status(facts.admin_status, facts.lease_expires_at, now_ms)
            diag = (
                None
                if facts.stream_connected is None
                else {"stream_connected": facts.stream_connected}
            )
            gauges.append(
                RunnerGauges(
                    runner_id=rid,
                    open_streams={m: view.open_reads.get(m, 0) for m in LiveMode},
                    pending_wakes=facts.pending,
                    lease_remaining_s=None
                    if facts.lease_expires_at is None
                    else (facts.lease_expires_at - now_ms) / 1000,
                    stream_mismatch=stream_mismatch(diag, liveness, view, self._live.grace),
                )
            )
        return ServerSnapshot(now, tuple(gauges))
