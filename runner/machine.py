"""The runner's state machine: every transition, and nothing else.

Theory of operation
-------------------
The runner is in one phase at a time (`pullwake.protocol.RunnerState`):

* ``stopped``        nothing runs.
* ``running.connecting``   a stream session is being opened (connect, headers).
* ``running.streaming``    the session answered 200 and is being read.
* ``running.reconnecting`` the last session ended; waiting out the backoff.
* ``stopping``       asked to stop; tasks are being cancelled.

Sessions are numbered 1, 2, ... and reconnect attempts likewise.  Every event
that belongs to a session or an attempt carries its number, and an event for
a session or attempt that is no longer current is ignored, never obeyed: a
late ``StreamEnded`` from an old connection cannot tear down a fresh one.

`step(machine, event)` is pure: it returns the new machine and the effects
(plain data) the driver must carry out.  No I/O, no clocks, no randomness.
When a session ends the machine decides *whether* the next one opens at once
(``ScheduleReconnect.fresh``: a rotation, a resume, a stall, a forced
reconnect or the end of a healthy session) or after a backoff wait; how long
that wait is is the reconnector's (`runner.reconnect`), which reports back
with ``BackoffElapsed``.  Nothing outside this module may change the phase:
the driver (`Driver`) only feeds events and runs the effects through an
injected `EffectPort`.

The machine is also the one record of what the runner's stream *is*: the
phase says whether it is connected (``running.streaming`` and nothing else),
`session` which session is current, `reconnects` how many sessions were
opened after an end other than a planned rotation and `last_end` why the
last one ended.  Diagnostics, `/status` and gauges read these; nobody keeps
a copy.

Every (phase, event-type) pair is written out below, ignored pairs included,
so adding a phase or an event forces a decision (the tests check the matrix
is complete).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from pullwake.core.protocol import EndReason, RunnerState

S = RunnerState


# --- the machine's state ----------------------------------------------------------
@dataclass(frozen=True)
class Machine:
    phase: RunnerState = S.STOPPED
    session: int = 0  # the current (or last) stream session
    attempt: int = 0  # the current (or last) reconnect wait
    reconnects: int = 0  # sessions opened after an end other than a planned rotation
    last_end: EndReason | None = None  # why the last session ended

    def __repr__(self) -> str:
        return (
            f"<Machine {self.phase.value} session={self.session} attempt={self.attempt}"
            f" reconnects={self.reconnects}>"
        )

    @property
    def connected(self) -> bool:
        """The one definition of "the stream is connected"."""
        return self.phase is S.STREAMING


# --- events -----------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """The runner was started."""


@dataclass(frozen=True)
class Stop:
    """SIGINT/SIGTERM or `Runner.stop()`."""


@dataclass(frozen=True)
class Connected:
    """Session `session` got a 200 with its response headers."""

    session: int


@dataclass(frozen=True)
class StreamEnded:
    """Session `session` ended by itself: EOF, rotation, error, timeout, idle ...

    `healthy`: it had been connected long enough that its end is not a failure
    of the connect path; the next session opens at once.
    """

    session: int
    reason: EndReason
    healthy: bool = False


@dataclass(frozen=True)
class StreamReset:
    """A detector decided to end session `session` (heartbeat bridge, read-idle bound)."""

    session: int
    reason: EndReason
    healthy: bool = False


@dataclass(frozen=True)
class ReconnectNow:
    """End whatever session is current and open the next one at once (no backoff).

    From the resume/stall detector (`resumed`, `stalled`) or on demand
    (`forced`: POST /reconnect, SIGHUP).  During a reconnect wait it cuts the
    wait short.  It names no session: it is about *now*.
    """

    reason: EndReason


@dataclass(frozen=True)
class BackoffElapsed:
    """The wait of reconnect attempt `attempt` is over: open the next session."""

    attempt: int


@dataclass(frozen=True)
class ServerBack:
    """A heartbeat succeeded again during reconnect wait `attempt`."""

    attempt: int


@dataclass(frozen=True)
class StopComplete:
    """Every task of the runner has ended."""


Event = (
    Start
    | Stop
    | Connected
    | StreamEnded
    | StreamReset
    | BackoffElapsed
    | ServerBack
    | ReconnectNow
    | StopComplete
)
EVENT_TYPES: tuple[type, ...] = (
    Start,
    Stop,
    Connected,
    StreamEnded,
    StreamReset,
    BackoffElapsed,
    ServerBack,
    ReconnectNow,
    StopComplete,
)


# --- effects ----------------------------------------------------------------------
@dataclass(frozen=True)
class StartWorkers:
    """Start heartbeats, dispatch and the reconnect loop."""


@dataclass(frozen=True)
class OpenStream:
    session: int


@dataclass(frozen=True)
class MarkConnected:
    """Stamp the session record: connected now (the phase already says streaming)."""

    session: int


@dataclass(frozen=True)
class EndSession:
    """Close session `session`'s record with `reason`, exactly once, at the moment it ends."""

    session: int
    reason: EndReason


@dataclass(frozen=True)
class CancelStream:
    """Stop reading session `session` (a detector, a stop or a forced reconnect ended it)."""

    session: int
    reason: EndReason


@dataclass(frozen=True)
class ScheduleReconnect:
    """Start reconnect wait `attempt`: none and a fresh backoff when `fresh`, else the next
    backoff step.  The reconnector feeds `BackoffElapsed(attempt)` when it is over."""

    attempt: int
    reason: EndReason
    fresh: bool


@dataclass(frozen=True)
class CutWaitShort:
    """End reconnect wait `attempt` now, and start the backoff afresh."""

    attempt: int


@dataclass(frozen=True)
class StopWorkers:
    """Cancel every task; the driver then feeds `StopComplete`."""


Effect = (
    StartWorkers
    | OpenStream
    | MarkConnected
    | EndSession
    | CancelStream
    | ScheduleReconnect
    | CutWaitShort
    | StopWorkers
)
Step = tuple[Machine, tuple[Effect, ...]]

_IGNORE: tuple[Effect, ...] = ()


def _down(m: Machine, session: int, reason: EndReason, healthy: bool, cancel: bool) -> Step:
    """Leave connecting/streaming for reconnecting because session `session` ended."""
    attempt = m.attempt + 1
    fresh = healthy or reason.reconnects_at_once
    effects: list[Effect] = []
    if cancel:
        effects.append(CancelStream(session, reason))
    effects += [EndSession(session, reason), ScheduleReconnect(attempt, reason, fresh)]
    new = replace(m, phase=S.RECONNECTING, attempt=attempt, last_end=reason)
    return new, tuple(effects)


def _stop(m: Machine, cancel: bool) -> Step:
    effects: tuple[Effect, ...] = (StopWorkers(),)
    if not cancel:
        return replace(m, phase=S.STOPPING), effects
    stopped = EndReason.STOPPED
    effects = (CancelStream(m.session, stopped), EndSession(m.session, stopped), *effects)
    return replace(m, phase=S.STOPPING, last_end=stopped), effects


def _next_session(m: Machine) -> Machine:
    counts = m.session > 0 and m.last_end is not EndReason.ROTATED
    return replace(m, phase=S.CONNECTING, session=m.session + 1, reconnects=m.reconnects + counts)


def step(m: Machine, event: Event) -> Step:
    """The whole transition table.  Pure."""
    ignore = (m, _IGNORE)
    match m.phase, event:
        # --- stopped -----------------------------------------------------------
        case S.STOPPED, Start():
            new = replace(m, phase=S.CONNECTING, session=m.session + 1)
            return new, (StartWorkers(), OpenStream(new.session))
        case S.STOPPED, (
            Stop()
            | Connected()
            | StreamEnded()
            | StreamReset()
            | BackoffElapsed()
            | ServerBack()
            | ReconnectNow()
            | StopComplete()
        ):
            return ignore
        # --- connecting ----------------------------------------------------------
        case S.CONNECTING, Stop():
            return _stop(m, cancel=True)
        case S.CONNECTING, Connected(session) if session == m.session:
            return replace(m, phase=S.STREAMING), (MarkConnected(session),)
        case S.CONNECTING, StreamEnded(session, reason, healthy) if session == m.session:
            return _down(m, session, reason, healthy, cancel=False)
        case S.CONNECTING, StreamReset(session, reason, healthy) if session == m.session:
            return _down(m, session, reason, healthy, cancel=True)
        case S.CONNECTING, ReconnectNow(reason):
            return _down(m, m.session, reason, True, cancel=True)
        case S.CONNECTING, (
            Start()
            | Connected()
            | StreamEnded()
            | StreamReset()
            | BackoffElapsed()
            | ServerBack()
            | ReconnectNow()
            | StopComplete()
        ):
            return ignore
        # --- streaming -----------------------------------------------------------
        case S.STREAMING, Stop():
            return _stop(m, cancel=True)
        case S.STREAMING, StreamEnded(session, reason, healthy) if session == m.session:
            return _down(m, session, reason, healthy, cancel=False)
        case S.STREAMING, StreamReset(session, reason, healthy) if session == m.session:
            return _down(m, session, reason, healthy, cancel=True)
        case S.STREAMING, ReconnectNow(reason):
            return _down(m, m.session, reason, True, cancel=True)
        case S.STREAMING, (
            Start()
            | Connected()
            | StreamEnded()
            | StreamReset()
            | BackoffElapsed()
            | ServerBack()
            | ReconnectNow()
            | StopComplete()
        ):
            return ignore
        # --- reconnecting --------------------------------------------------------
        case S.RECONNECTING, Stop():
            return _stop(m, cancel=False)
        case S.RECONNECTING, BackoffElapsed(attempt) if attempt == m.attempt:
            new = _next_session(m)
            return new, (OpenStream(new.session),)
        case S.RECONNECTING, ServerBack(attempt) if attempt == m.attempt:
            return m, (CutWaitShort(attempt),)
        case S.RECONNECTING, ReconnectNow():
            return m, (CutWaitShort(m.attempt),)
        case S.RECONNECTING, (
            Start()
            | Connected()
            | StreamEnded()
            | StreamReset()
            | BackoffElapsed()
            | ServerBack()
            | ReconnectNow()
            | StopComplete()
        ):
            return ignore
        # --- stopping ------------------------------------------------------------
        case S.STOPPING, StopComplete():
            return replace(m, phase=S.STOPPED), ()
        case S.STOPPING, (
            Start()
            | Stop()
            | Connected()
            | StreamEnded()
            | StreamReset()
            | BackoffElapsed()
            | ServerBack()
            | ReconnectNow()
        ):
            return ignore
    raise AssertionError(f"unhandled pair {m!r} {event!r}")  # pragma: no cover


# --- the driver -------------------------------------------------------------------
class EffectPort(Protocol):
    """What the driver needs from the world; the runner implements it."""

    def run_effect(self, effect: Effect) -> None: ...

    def transitioned(self, old: Machine, new: Machine, event: Event) -> None: ...


class EventSink(Protocol):
    """What a detector needs: the machine to read, and a way to feed it an event."""

    @property
    def machine(self) -> Machine: ...

    def feed(self, event: Event) -> None: ...


class Driver:
    """Feeds events to `step` and runs the effects; the only holder of the machine.

    Effects may feed further events (re-entrantly); they are queued and run in
    order so every effect sees the machine as it was when it was produced.
    """

    def __init__(self, port: EffectPort, machine: Machine | None = None) -> None:
        self._port = port
        self.machine = machine or Machine()
        self._pending: list[Event] = []
        self._busy = False

    def __repr__(self) -> str:
        return f"<Driver {self.machine!r}>"

    @property
    def phase(self) -> RunnerState:
        return self.machine.phase

    def feed(self, event: Event) -> None:
        self._pending.append(event)
        if self._busy:
            return
        self._busy = True
        try:
            while self._pending:
                ev = self._pending.pop(0)
                old = self.machine
                self.machine, effects = step(old, ev)
                if self.machine.phase != old.phase:
                    self._port.transitioned(old, self.machine, ev)
                for effect in effects:
                    self._port.run_effect(effect)
        finally:
            self._busy = False
