"""The seam between the server and whatever watches it (telemetry, tests).

The server core never imports OpenTelemetry.  It reports events to a
`ServerObserver` (counters: heartbeats, messages sent to entities, wake
events announced, claim answers, completions, claim lease expiries, live
reads, request durations); gauges are not pushed but read at collection time
from `ServerSnapshotSource.snapshot()`, which is thread-safe (an OTel metric
reader calls it from its own thread).

Observers must be cheap and must never raise into the server: the app wraps
the configured observer in `SafeObserver`, which logs and swallows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pullwake.core.protocol import ClaimOutcome, CompletionOutcome, LiveMode
from pullwake.server.health import liveness_status
from pullwake.server.livereads import LiveReads, stream_mismatch
from pullwake.server.registry import Registry

log = logging.getLogger("pullwake.server.observe")


class ServerObserver(Protocol):
    def heartbeat_accepted(self, runner_id: str) -> None: ...

    def message_sent(self, runner_id: str) -> None:
        """A message was appended to an entity whose dispatch targets this runner ("" if none)."""

    def wake_announced(self, runner_id: str) -> None:
        """DS appended a wake event to this runner's wake stream."""

    def claim_answered(self, runner_id: str, outcome: ClaimOutcome) -> None: ...

    def completion(self, runner_id: str, outcome: CompletionOutcome) -> None:
        """A wake-callback ack (not the claim-request variant) was answered."""

    def lease_expired(self, runner_id: str) -> None:
        """A claim's lease ran out in DS (the work is announced again if still pending)."""

    def live_read_opened(self, runner_id: str, mode: LiveMode) -> None: ...

    def live_read_closed(self, runner_id: str, mode: LiveMode) -> None: ...

    def request_finished(self, route: str, method: str, status: int, duration_s: float) -> None:
        """A non-streaming API request finished (live reads are not reported here)."""


class NullServerObserver:
    """Observes nothing; the default."""

    def heartbeat_accepted(self, runner_id: str) -> None:
        pass

    def message_sent(self, runner_id: str) -> None:
        pass

    def wake_announced(self, runner_id: str) -> None:
        pass

    def claim_answered(self, runner_id: str, outcome: ClaimOutcome) -> None:
        pass

    def completion(self, runner_id: str, outcome: CompletionOutcome) -> None:
        pass

    def lease_expired(self, runner_id: str) -> None:
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

    def heartbeat_accepted(self, runner_id: str) -> None:
        self._call("heartbeat_accepted", runner_id)

    def message_sent(self, runner_id: str) -> None:
        self._call("message_sent", runner_id)

    def wake_announced(self, runner_id: str) -> None:
        self._call("wake_announced", runner_id)

    def claim_answered(self, runner_id: str, outcome: ClaimOutcome) -> None:
        self._call("claim_answered", runner_id, outcome)

    def completion(self, runner_id: str, outcome: CompletionOutcome) -> None:
        self._call("completion", runner_id, outcome)

    def lease_expired(self, runner_id: str) -> None:
        self._call("lease_expired", runner_id)

    def live_read_opened(self, runner_id: str, mode: LiveMode) -> None:
        self._call("live_read_opened", runner_id, mode)

    def live_read_closed(self, runner_id: str, mode: LiveMode) -> None:
        self._call("live_read_closed", runner_id, mode)

    def request_finished(self, route: str, method: str, status: int, duration_s: float) -> None:
        self._call("request_finished", route, method, status, duration_s)


@dataclass
class RecordingServerObserver(NullServerObserver):
    """Keeps every call but request timings, for tests: `calls` holds (method, args)."""

    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def heartbeat_accepted(self, runner_id: str) -> None:
        self.calls.append(("heartbeat_accepted", (runner_id,)))

    def message_sent(self, runner_id: str) -> None:
        self.calls.append(("message_sent", (runner_id,)))

    def wake_announced(self, runner_id: str) -> None:
        self.calls.append(("wake_announced", (runner_id,)))

    def claim_answered(self, runner_id: str, outcome: ClaimOutcome) -> None:
        self.calls.append(("claim_answered", (runner_id, outcome)))

    def completion(self, runner_id: str, outcome: CompletionOutcome) -> None:
        self.calls.append(("completion", (runner_id, outcome)))

    def lease_expired(self, runner_id: str) -> None:
        self.calls.append(("lease_expired", (runner_id,)))

    def live_read_opened(self, runner_id: str, mode: LiveMode) -> None:
        self.calls.append(("live_read_opened", (runner_id, mode)))

    def live_read_closed(self, runner_id: str, mode: LiveMode) -> None:
        self.calls.append(("live_read_closed", (runner_id, mode)))


@dataclass(frozen=True)
class RunnerGauges:
    """Per-runner gauge values at collection time."""

    runner_id: str
    open_streams: Mapping[LiveMode, int]  # every LiveMode present, 0 when none
    pending_subscriptions: int  # its entity subscriptions with un-acked data
    active_claims: int  # consumer_claims rows still `active` (upstream keeps expired ones)
    lease_remaining_s: float | None  # None before the first heartbeat; negative once expired
    stream_mismatch: bool  # diagnostics say stream_connected, server has no open read


@dataclass(frozen=True)
class ServerSnapshot:
    taken_at: float  # unix time
    runners: tuple[RunnerGauges, ...]


PendingCounts = Callable[[], Mapping[str, int]]


class ServerSnapshotSource:
    """Builds `ServerSnapshot`s from in-memory facts only (no I/O, any thread)."""

    def __init__(self, registry: Registry, live: LiveReads, pending: PendingCounts) -> None:
        self._registry = registry
        self._live = live
        self._pending = pending

    def snapshot(self) -> ServerSnapshot:
        now = time.time()
        now_ms = int(now * 1000)
        pending = self._pending()
        gauges = []
        for rid, facts in sorted(self._registry.facts().items()):
            view = self._live.view(rid, now)
            liveness = liveness_status(facts.admin_status, facts.lease_expires_at, now_ms)
            gauges.append(
                RunnerGauges(
                    runner_id=rid,
                    open_streams={m: view.open_reads.get(m, 0) for m in LiveMode},
                    pending_subscriptions=pending.get(rid, 0),
                    active_claims=facts.active_claims,
                    lease_remaining_s=None
                    if facts.lease_expires_at is None
                    else (facts.lease_expires_at - now_ms) / 1000,
                    stream_mismatch=stream_mismatch(
                        facts.stream_connected, liveness, view, self._live.grace
                    ),
                )
            )
        return ServerSnapshot(now, tuple(gauges))
