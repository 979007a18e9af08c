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
(plain data) the driver must carry out.  No I/O, no clocks, no randomness;
how long to wait between attempts is decided by the reconnect layer (the
`backoff` library), which reports back with ``BackoffElapsed``.  Nothing
outside this module may change the phase: the driver (`Driver`) only feeds
events and runs the effects through an injected `EffectPort`.

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

    def __repr__(self) -> str:
        return f"<Machine {self.phase.value} session={self.session} attempt={self.attempt}>"


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
    """Session `session` ended by itself: EOF, rotation, error, timeout, idle ..."""

    session: int
    reason: EndReason


@dataclass(frozen=True)
class StreamReset:
    """The runner decided to end session `session` (heartbeat bridge)."""

    session: int
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
    session: int


@dataclass(frozen=True)
class MarkDisconnected:
    """The stream is down *now*: diagnostics must say so at once."""

    session: int
    reason: EndReason


@dataclass(frozen=True)
class CancelStream:
    session: int
    reason: EndReason


@dataclass(frozen=True)
class ScheduleReconnect:
    attempt: int
    reason: EndReason


@dataclass(frozen=True)
class CutWaitShort:
    attempt: int


@dataclass(frozen=True)
class StopWorkers:
    """Cancel every task; the driver then feeds `StopComplete`."""


Effect = (
    StartWorkers
    | OpenStream
    | MarkConnected
    | MarkDisconnected
    | CancelStream
    | ScheduleReconnect
    | CutWaitShort
    | StopWorkers
)
Step = tuple[Machine, tuple[Effect, ...]]

_IGNORE: tuple[Effect, ...] = ()


def _down(m: Machine, session: int, reason: EndReason, cancel: bool) -> Step:
    """Leave connecting/streaming for reconnecting because session `session` ended."""
    attempt = m.attempt + 1
    effects: list[Effect] = []
    if cancel:
        effects.append(CancelStream(session, reason))
    effects += [MarkDisconnected(session, reason), ScheduleReconnect(attempt, reason)]
    return replace(m, phase=S.RECONNECTING, attempt=attempt), tuple(effects)


def _stop(m: Machine, cancel: bool) -> Step:
    effects: tuple[Effect, ...] = (StopWorkers(),)
    if cancel:
        stopped = EndReason.STOPPED
        effects = (CancelStream(m.session, stopped), MarkDisconnected(m.session, stopped), *effects)
    return replace(m, phase=S.STOPPING), effects


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
            | StopComplete()
        ):
            return ignore
        # --- connecting ----------------------------------------------------------
        case S.CONNECTING, Stop():
            return _stop(m, cancel=True)
        case S.CONNECTING, Connected(session) if session == m.session:
            return replace(m, phase=S.STREAMING), (MarkConnected(session),)
        case S.CONNECTING, StreamEnded(session, reason) if session == m.session:
            return _down(m, session, reason, cancel=False)
        case S.CONNECTING, StreamReset(session, reason) if session == m.session:
            return _down(m, session, reason, cancel=True)
        case S.CONNECTING, (
            Start()
            | Connected()
            | StreamEnded()
            | StreamReset()
            | BackoffElapsed()
            | ServerBack()
            | StopComplete()
        ):
            return ignore
        # --- streaming -----------------------------------------------------------
        case S.STREAMING, Stop():
            return _stop(m, cancel=True)
        case S.STREAMING, StreamEnded(session, reason) if session == m.session:
            return _down(m, session, reason, cancel=False)
        case S.STREAMING, StreamReset(session, reason) if session == m.session:
            return _down(m, session, reason, cancel=True)
        case S.STREAMING, (
            Start()
            | Connected()
            | StreamEnded()
            | StreamReset()
            | BackoffElapsed()
            | ServerBack()
            | StopComplete()
        ):
            return ignore
        # --- reconnecting --------------------------------------------------------
        case S.RECONNECTING, Stop():
            return _stop(m, cancel=False)
        case S.RECONNECTING, BackoffElapsed(attempt) if attempt == m.attempt:
            new = replace(m, phase=S.CONNECTING, session=m.session + 1)
            return new, (OpenStream(new.session),)
        case S.RECONNECTING, ServerBack(attempt) if attempt == m.attempt:
            return m, (CutWaitShort(attempt),)
        case S.RECONNECTING, (
            Start()
            | Connected()
            | StreamEnded()
            | StreamReset()
            | BackoffElapsed()
            | ServerBack()
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
        ):
            return ignore
    raise AssertionError(f"unhandled pair {m!r} {event!r}")  # pragma: no cover


# --- the driver -------------------------------------------------------------------
class EffectPort(Protocol):
    """What the driver needs from the world; the runner implements it."""

    def run_effect(self, effect: Effect) -> None: ...

    def transitioned(self, old: Machine, new: Machine, event: Event) -> None: ...


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
