"""Detectors: small units that watch one thing and feed the machine an event.

None of them changes the phase or touches a socket; each reads the machine
(through `EventSink`) and feeds it an event when its condition holds.  What
fired is reported first (`Report`: the runner passes it to observers, so the
session span gets the event before the end it causes).

* `HeartbeatBridge` (profiles default and upstream): K consecutive heartbeat
  failures *during the current session* (connecting or streaming) reset it
  with reason `heartbeat_failures`.  Counting per session means a fresh
  connect attempt gets its own K heartbeats before the bridge fires again.
  A success after failures means the server is back: a reconnect wait in
  progress is cut short (`ServerBack`).
* `ResumeDetector`: the runner was not running for a while.  Either the
  system slept - `CLOCK_BOOTTIME` (which counts suspend) advanced more than
  `CLOCK_MONOTONIC` (which does not) - or the process or its event loop was
  frozen (SIGSTOP, a long GC, a blocking call) and a timer fired late.  A gap
  of at least `threshold` ends the live read at once with reason `resumed`
  or `stalled` and reconnects without backoff (`ReconnectNow`): a socket
  that slept through a suspend is often dead without knowing it, and waiting
  for the read-idle bound or the heartbeat bridge would add their whole bound.

The read-idle bound still lives in `runner.session` (it bounds each read).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from pullwake.core.protocol import EndReason, RunnerState
from pullwake.runner.heartbeat import HeartbeatRecord
from pullwake.runner.machine import EventSink, ReconnectNow, ServerBack, StreamReset

log = logging.getLogger("pullwake.runner.detectors")

Report = Callable[[str, Mapping[str, Any]], None]
MAX_TICK_S = 0.5  # the resume detector's longest tick: a resume is seen within it


class HeartbeatBridge:
    """K heartbeat failures in one session reset it; a success after failures: server back."""

    def __init__(
        self,
        sink: EventSink,
        threshold: int | None,
        report: Report,
        healthy: Callable[[], bool] = lambda: False,
    ) -> None:
        """`threshold` None: the bridge never resets (legacy profile); `healthy()`: is the
        current session old enough that its end should not count as a failure."""
        self._sink = sink
        self.threshold = threshold
        self._report = report
        self._healthy = healthy
        self._session = 0
        self.session_failures = 0  # failures since the current session opened

    def __repr__(self) -> str:
        return f"<HeartbeatBridge k={self.threshold} session_failures={self.session_failures}>"

    def heartbeat(self, record: HeartbeatRecord) -> None:
        """Judge the outcome `record` just recorded."""
        m = self._sink.machine
        if m.session != self._session:
            self._session, self.session_failures = m.session, 0
        if record.last_ok:
            self.session_failures = 0
            if record.recovered:
                self._sink.feed(ServerBack(m.attempt))
            return
        self.session_failures += 1
        k = self.threshold
        if k is None or m.phase not in (RunnerState.CONNECTING, RunnerState.STREAMING):
            return
        if self.session_failures < k:
            return
        self._report(
            EndReason.HEARTBEAT_FAILURES.value,
            {"consecutive_failures": record.consecutive_failures, "threshold": k},
        )
        self._sink.feed(StreamReset(m.session, EndReason.HEARTBEAT_FAILURES, self._healthy()))


# --- resume and stall -------------------------------------------------------------
class Clocks(Protocol):
    """The two clocks the resume detector compares (injectable for tests)."""

    def monotonic(self) -> float:
        """Seconds, not counting system suspend (CLOCK_MONOTONIC; asyncio's clock)."""
        ...

    def boottime(self) -> float:
        """Seconds, counting system suspend (CLOCK_BOOTTIME)."""
        ...


class SystemClocks:
    """The real clocks.  Where CLOCK_BOOTTIME does not exist, it falls back to
    CLOCK_MONOTONIC: suspends are then not told apart, stalls still are."""

    def __repr__(self) -> str:
        return "<SystemClocks>"

    def monotonic(self) -> float:
        return time.monotonic()

    def boottime(self) -> float:
        clock = getattr(time, "CLOCK_BOOTTIME", None)
        return time.clock_gettime(clock) if clock is not None else time.monotonic()


@dataclass(frozen=True)
class Gap:
    """The runner was away for `seconds`: `resumed` (system slept) or `stalled` (frozen)."""

    reason: EndReason
    seconds: float


class ResumeDetector:
    """Ticks every `tick` s and compares the clocks at each tick.

    A gap is seen on the first tick after it: within `tick` of the resume (or
    at once for a stall, whose overdue timer fires first thing).  The smallest
    gap seen is `threshold`; the tick defaults to a quarter of it, capped at
    0.5 s (so a resume is acted on within half a second; two wake-ups a second
    cost nothing measurable), and a healthy loop never comes close.
    """

    def __init__(
        self,
        clocks: Clocks,
        threshold: float,
        on_gap: Callable[[Gap], None],
        tick: float | None = None,
    ) -> None:
        if threshold <= 0:
            raise ValueError("resume threshold must be > 0")
        self._clocks = clocks
        self.threshold = threshold
        self.tick = tick if tick is not None else min(MAX_TICK_S, threshold / 4)
        self._on_gap = on_gap
        self._mono = clocks.monotonic()
        self._boot = clocks.boottime()
        self._due = self._mono + self.tick
        self.gaps: list[Gap] = []

    def __repr__(self) -> str:
        return f"<ResumeDetector threshold={self.threshold:g}s tick={self.tick:g}s>"

    def arm(self) -> None:
        """Start a tick now: the next `check()` is due `tick` from here."""
        self._mono = self._clocks.monotonic()
        self._boot = self._clocks.boottime()
        self._due = self._mono + self.tick

    def check(self) -> Gap | None:
        """Compare the clocks with the last tick; a gap of at least `threshold`, if any."""
        mono, boot = self._clocks.monotonic(), self._clocks.boottime()
        slept = (boot - self._boot) - (mono - self._mono)
        late = mono - self._due
        self._mono, self._boot, self._due = mono, boot, mono + self.tick
        if slept >= self.threshold:
            return Gap(EndReason.RESUMED, slept)
        if late >= self.threshold:
            return Gap(EndReason.STALLED, late)
        return None

    async def run(self) -> NoReturn:
        self.arm()
        while True:
            await asyncio.sleep(self.tick)
            gap = self.check()
            if gap is not None:
                self.gaps.append(gap)
                log.warning("%s: away for %.2fs", gap.reason.value, gap.seconds)
                self._on_gap(gap)


def reconnect_after(sink: EventSink, report: Report, threshold: float) -> Callable[[Gap], None]:
    """The resume detector's action: report it, then end the live read and reconnect now."""

    def act(gap: Gap) -> None:
        report(gap.reason.value, {"gap_s": round(gap.seconds, 3), "threshold_s": threshold})
        sink.feed(ReconnectNow(gap.reason))

    return act
