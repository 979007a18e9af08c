"""Detectors: small units that watch one thing and feed the machine an event.

None of them changes the phase or touches a socket; each reads the machine
(through `EventSink`) and feeds it an event when its condition holds (the
read-idle watchdog through the session it judges, see below).  What
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
* `ReadIdleWatchdog`: the read-idle bound and the tail probe's decision, for
  one session.  Pure (no I/O, time passed in as plain seconds): the session
  reads and sends the probes, feeds it what it saw, and asks it for a
  `Verdict` (`idle_timeout` or `tail_ahead`) on every tick of silence; the
  session then ends with that reason, and the runner reports the firing
  (`detector_fired`) before it feeds the machine `StreamEnded`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from pullwake.core.protocol import EndReason, RunnerState
from pullwake.runner.heartbeat import HeartbeatRecord
from pullwake.runner.machine import EventSink, ReconnectNow, ServerBack, StreamReset
from pullwake.runner.tailprobe import ahead

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


# --- read-idle watchdog and tail-probe decision ----------------------------------
WATCH_MAX_TICK_S = 1.0  # how often a waiting read asks the watchdog, at the longest


@dataclass(frozen=True)
class Verdict:
    """The watchdog ends the read: `reason` (idle_timeout or tail_ahead) and why."""

    reason: EndReason
    detail: str


class ReadIdleWatchdog:
    """Decides when a silent live read is dead; the session does the I/O and asks it.

    Pure: no socket, no clock of its own; every call says what time it is
    (plain monotonic seconds).  The session feeds it what the read saw
    (`arm`, `on_bytes`) and what the tail probe answered (`probe_sent`,
    `on_probe`), and asks it every `tick()` s of silence for a `verdict`.

    * `bound` (None: off) - silence this long ends the read `idle_timeout`.
      Silence counts from the last byte, or from the last good probe (tail ==
      offset: nothing waits, the silence is harmless) unless the server was
      seen talking while idle (a data-less chunk after `idle_traffic_gap` s of
      silence): then only bytes count, as the bound is sized above its talk.
    * `probe_interval` (None: no probe) - a probe is due after this much
      silence since the last byte or probe.  A tail beyond the read offset with
      no byte within `probe_grace` s ends the read `tail_ahead`; a byte clears
      it; a probe with no answer proves nothing.
    """

    def __init__(
        self,
        bound: float | None,
        probe_interval: float | None,
        probe_grace: float,
        idle_traffic_gap: float,
        now: float,
    ) -> None:
        self.bound = bound
        self.probe_interval = probe_interval
        self.probe_grace = probe_grace
        self.idle_traffic_gap = idle_traffic_gap
        self.last_byte = now
        self.last_probe = -math.inf  # when the last probe was sent
        self.last_good_probe = -math.inf  # ... the last one that found tail == offset
        self.suspect: tuple[str, str, float] | None = None  # (tail, read offset, deadline)
        self.idle_traffic = False  # the server was seen sending while idle

    def __repr__(self) -> str:
        return (
            f"<ReadIdleWatchdog bound={self.bound} probe={self.probe_interval}"
            f" idle_traffic={self.idle_traffic} suspect={self.suspect}>"
        )

    def arm(self, now: float, bound: float | None) -> None:
        """The read is connected at `now`: silence counts from here, against `bound`."""
        self.bound = bound
        self.last_byte = now

    def on_bytes(self, now: float, data: bool, arrived: float | None = None) -> None:
        """Bytes that arrived at `arrived` (default `now`) were handled by `now`.

        `data`: they carried data (a data-less chunk after a silence is idle talk).
        Silence counts again from `now`: time spent handling them (backpressure)
        is not silence.  Any byte proves the read alive: a tail seen ahead is
        forgotten.
        """
        at = now if arrived is None else arrived
        if not data and at - self.last_byte >= self.idle_traffic_gap:
            self.idle_traffic = True
        self.last_byte = now
        self.suspect = None

    def tick(self) -> float | None:
        """How often to ask while the read waits; None: never (nothing to watch)."""
        periods = [WATCH_MAX_TICK_S]
        if self.bound is not None:
            periods.append(self.bound / 4)
        if self.probe_interval is not None:
            periods.append(self.probe_interval / 4)
            periods.append(self.probe_grace / 2)
        return max(0.01, min(periods)) if (self.bound or self.probe_interval) else None

    def probe_due(self, now: float) -> bool:
        """A probe should be sent now: `probe_interval` s of silence since the last
        byte or probe, and no tail already seen ahead."""
        return (
            self.probe_interval is not None
            and self.suspect is None
            and now - max(self.last_byte, self.last_probe) >= self.probe_interval
        )

    def probe_sent(self, now: float) -> None:
        """A probe left at `now` (the next is due `probe_interval` after it)."""
        self.last_probe = now

    def on_probe(self, now: float, tail: str | None, offset: str) -> None:
        """The probe answered at `now`: the stream's `tail` (None: no answer) while
        the read is at `offset`."""
        if tail is None:
            return  # no answer proves nothing
        if ahead(tail, offset):
            self.suspect = (tail, offset, now + self.probe_grace)
        else:
            self.last_good_probe = now

    def verdict(self, now: float) -> Verdict | None:
        """Whether the read is dead at `now`: a tail seen ahead past its grace first,
        then the idle bound.  When a probe is due, ask after its answer: it may yet
        prove the silence harmless (and no tail can be ahead while one is due)."""
        if self.suspect is not None and now >= self.suspect[2]:
            tail, offset, _ = self.suspect
            return Verdict(
                EndReason.TAIL_AHEAD,
                f"stream tail {tail} is beyond the read offset {offset} and the read"
                f" delivered nothing for {self.probe_grace:g}s",
            )
        if self.bound is None:
            return None
        alive = self.last_byte if self.idle_traffic else max(self.last_byte, self.last_good_probe)
        if now - alive < self.bound:
            return None
        return Verdict(
            EndReason.IDLE_TIMEOUT,
            f"no byte for {now - self.last_byte:.3g}s (bound {self.bound:g}s)"
            + (", no tail probe answered" if self.probe_interval is not None else ""),
        )
