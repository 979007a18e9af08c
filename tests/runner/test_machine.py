"""The state machine's full phase x event table, one case per cell, no sockets."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from pullwake.core.protocol import EndReason, RunnerState
from pullwake.runner.machine import (
    EVENT_TYPES,
    BackoffElapsed,
    CancelStream,
    Connected,
    CutWaitShort,
    Driver,
    Effect,
    EndSession,
    Event,
    Machine,
    MarkConnected,
    OpenStream,
    ReconnectNow,
    ScheduleReconnect,
    ServerBack,
    Start,
    StartWorkers,
    Stop,
    StopComplete,
    StopWorkers,
    StreamEnded,
    StreamReset,
    step,
)

S = RunnerState
R = EndReason.ERROR
F = EndReason.FORCED
SESSION, ATTEMPT = 3, 2  # the machine under test is on session 3 after 2 reconnect waits
RECONNECTS = 1  # ... one of which followed a planned rotation


def current(ev_type: type) -> Event:
    """An event of `ev_type` that belongs to the current session/attempt."""
    if ev_type is Connected:
        return Connected(SESSION)
    if ev_type in (StreamEnded, StreamReset):
        return ev_type(SESSION, R)  # type: ignore[no-any-return]
    if ev_type in (BackoffElapsed, ServerBack):
        return ev_type(ATTEMPT)  # type: ignore[no-any-return]
    if ev_type is ReconnectNow:
        return ReconnectNow(F)
    return ev_type()  # type: ignore[no-any-return]


def stale(ev_type: type) -> Event | None:
    """The same event from an older session/attempt, if it carries a number."""
    if ev_type is Connected:
        return Connected(SESSION - 1)
    if ev_type in (StreamEnded, StreamReset):
        return ev_type(SESSION - 1, R)  # type: ignore[no-any-return]
    if ev_type in (BackoffElapsed, ServerBack):
        return ev_type(ATTEMPT - 1)  # type: ignore[no-any-return]
    return None


IGNORED = "ignored"
DOWN = [EndSession(SESSION, R), ScheduleReconnect(ATTEMPT + 1, R, fresh=False)]
FORCED_DOWN = [
    CancelStream(SESSION, F),
    EndSession(SESSION, F),
    ScheduleReconnect(ATTEMPT + 1, F, fresh=True),
]
STOPPED_REASON = EndReason.STOPPED
STOP_ACTIVE = [
    CancelStream(SESSION, STOPPED_REASON),
    EndSession(SESSION, STOPPED_REASON),
    StopWorkers(),
]

# (phase, event) -> (new phase, new session, new attempt, effects) or IGNORED; the
# machine's `reconnects` and `last_end` are checked in `expected_machine`
TABLE: dict[tuple[RunnerState, type], Any] = {
    (S.STOPPED, Start): (S.CONNECTING, SESSION + 1, ATTEMPT, [StartWorkers(), OpenStream(4)]),
    (S.STOPPED, Stop): IGNORED,
    (S.STOPPED, Connected): IGNORED,
    (S.STOPPED, StreamEnded): IGNORED,
    (S.STOPPED, StreamReset): IGNORED,
    (S.STOPPED, BackoffElapsed): IGNORED,
    (S.STOPPED, ServerBack): IGNORED,
    (S.STOPPED, ReconnectNow): IGNORED,
    (S.STOPPED, StopComplete): IGNORED,
    (S.CONNECTING, Start): IGNORED,
    (S.CONNECTING, Stop): (S.STOPPING, SESSION, ATTEMPT, STOP_ACTIVE),
    (S.CONNECTING, Connected): (S.STREAMING, SESSION, ATTEMPT, [MarkConnected(SESSION)]),
    (S.CONNECTING, StreamEnded): (S.RECONNECTING, SESSION, ATTEMPT + 1, DOWN),
    (S.CONNECTING, StreamReset): (
        S.RECONNECTING,
        SESSION,
        ATTEMPT + 1,
        [CancelStream(SESSION, R), *DOWN],
    ),
    (S.CONNECTING, BackoffElapsed): IGNORED,
    (S.CONNECTING, ServerBack): IGNORED,
    (S.CONNECTING, ReconnectNow): (S.RECONNECTING, SESSION, ATTEMPT + 1, FORCED_DOWN),
    (S.CONNECTING, StopComplete): IGNORED,
    (S.STREAMING, Start): IGNORED,
    (S.STREAMING, Stop): (S.STOPPING, SESSION, ATTEMPT, STOP_ACTIVE),
    (S.STREAMING, Connected): IGNORED,
    (S.STREAMING, StreamEnded): (S.RECONNECTING, SESSION, ATTEMPT + 1, DOWN),
    (S.STREAMING, StreamReset): (
        S.RECONNECTING,
        SESSION,
        ATTEMPT + 1,
        [CancelStream(SESSION, R), *DOWN],
    ),
    (S.STREAMING, BackoffElapsed): IGNORED,
    (S.STREAMING, ServerBack): IGNORED,
    (S.STREAMING, ReconnectNow): (S.RECONNECTING, SESSION, ATTEMPT + 1, FORCED_DOWN),
    (S.STREAMING, StopComplete): IGNORED,
    (S.RECONNECTING, Start): IGNORED,
    (S.RECONNECTING, Stop): (S.STOPPING, SESSION, ATTEMPT, [StopWorkers()]),
    (S.RECONNECTING, Connected): IGNORED,
    (S.RECONNECTING, StreamEnded): IGNORED,
    (S.RECONNECTING, StreamReset): IGNORED,
    (S.RECONNECTING, BackoffElapsed): (
        S.CONNECTING,
        SESSION + 1,
        ATTEMPT,
        [OpenStream(SESSION + 1)],
    ),
    (S.RECONNECTING, ServerBack): (S.RECONNECTING, SESSION, ATTEMPT, [CutWaitShort(ATTEMPT)]),
    (S.RECONNECTING, ReconnectNow): (S.RECONNECTING, SESSION, ATTEMPT, [CutWaitShort(ATTEMPT)]),
    (S.RECONNECTING, StopComplete): IGNORED,
    (S.STOPPING, Start): IGNORED,
    (S.STOPPING, Stop): IGNORED,
    (S.STOPPING, Connected): IGNORED,
    (S.STOPPING, StreamEnded): IGNORED,
    (S.STOPPING, StreamReset): IGNORED,
    (S.STOPPING, BackoffElapsed): IGNORED,
    (S.STOPPING, ServerBack): IGNORED,
    (S.STOPPING, ReconnectNow): IGNORED,
    (S.STOPPING, StopComplete): (S.STOPPED, SESSION, ATTEMPT, []),
}


def test_table_is_complete() -> None:
    """Adding a phase or an event type must come with a decision in TABLE."""
    assert set(TABLE) == set(itertools.product(RunnerState, EVENT_TYPES))


def test_event_types_cover_the_union() -> None:
    assert set(EVENT_TYPES) == set(Event.__args__)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("phase", "ev_type"), list(TABLE), ids=[f"{p.value}-{e.__name__}" for p, e in TABLE]
)
def expected_machine(
    m: Machine, event: Event, phase: RunnerState, session: int, attempt: int
) -> Machine:
    """The bookkeeping every cell shares: a session that ends records why, and a session
    opened after an end other than a planned rotation counts as a reconnect."""
    last_end = m.last_end
    if phase in (S.RECONNECTING, S.STOPPING) and m.phase in (S.CONNECTING, S.STREAMING):
        last_end = getattr(event, "reason", EndReason.STOPPED)
    opened = m.phase is S.RECONNECTING and session > m.session
    reconnects = m.reconnects + (opened and m.last_end is not EndReason.ROTATED)
    return Machine(phase, session, attempt, reconnects, last_end)


@pytest.mark.parametrize("last_end", [EndReason.IDLE_TIMEOUT, EndReason.ROTATED])
@pytest.mark.parametrize(
    ("phase", "ev_type"), list(TABLE), ids=[f"{p.value}-{e.__name__}" for p, e in TABLE]
)
def test_cell(phase: RunnerState, ev_type: type, last_end: EndReason) -> None:
    m = Machine(phase, SESSION, ATTEMPT, RECONNECTS, last_end)
    event = current(ev_type)
    new, effects = step(m, event)
    expected = TABLE[(phase, ev_type)]
    if expected == IGNORED:
        assert (new, effects) == (m, ())
    else:
        phase2, session, attempt, effs = expected
        assert new == expected_machine(m, event, phase2, session, attempt)
        assert list(effects) == effs
    old_event = stale(ev_type)
    if old_event is not None:  # a late event from an old session/attempt is never obeyed
        assert step(m, old_event) == (m, ())


class Port:
    def __init__(self) -> None:
        self.effects: list[Effect] = []
        self.transitions: list[tuple[RunnerState, RunnerState, str]] = []
        self.driver: Driver | None = None

    def run_effect(self, effect: Effect) -> None:
        self.effects.append(effect)
        if isinstance(effect, StopWorkers) and self.driver is not None:
            self.driver.feed(StopComplete())  # re-entrant feed: queued, run in order

    def transitioned(self, old: Machine, new: Machine, event: Event) -> None:
        self.transitions.append((old.phase, new.phase, type(event).__name__))


def test_driver_runs_a_life_cycle() -> None:
    port = Port()
    d = Driver(port)
    port.driver = d
    d.feed(Start())
    d.feed(Connected(1))
    d.feed(StreamEnded(1, EndReason.IDLE_TIMEOUT))
    d.feed(StreamEnded(1, EndReason.ERROR))  # late duplicate: ignored
    d.feed(BackoffElapsed(1))
    d.feed(Connected(1))  # late: session 2 is current
    assert d.phase is S.CONNECTING
    d.feed(Connected(2))
    d.feed(Stop())
    assert d.phase is S.STOPPED
    assert [t[1] for t in port.transitions] == [
        S.CONNECTING,
        S.STREAMING,
        S.RECONNECTING,
        S.CONNECTING,
        S.STREAMING,
        S.STOPPING,
        S.STOPPED,
    ]
    assert port.effects[-1] == StopWorkers()
    assert EndSession(1, EndReason.IDLE_TIMEOUT) in port.effects
    assert "connecting" in repr(Machine(S.CONNECTING, 1, 0))
    assert d.machine.reconnects == 1 and d.machine.last_end is EndReason.STOPPED


@pytest.mark.parametrize(
    ("reason", "healthy", "fresh"),
    [
        (EndReason.ERROR, False, False),  # a failure backs off
        (EndReason.ERROR, True, True),  # ... unless the session had been healthy
        (EndReason.IDLE_TIMEOUT, False, False),
        (EndReason.ROTATED, False, True),  # planned: at once
        (EndReason.RESUMED, False, True),
        (EndReason.STALLED, False, True),
        (EndReason.FORCED, False, True),
    ],
)
def test_the_machine_decides_whether_the_next_session_waits(
    reason: EndReason, healthy: bool, fresh: bool
) -> None:
    m = Machine(S.STREAMING, SESSION, ATTEMPT)
    for event in (StreamEnded(SESSION, reason, healthy), StreamReset(SESSION, reason, healthy)):
        _, effects = step(m, event)
        assert effects[-1] == ScheduleReconnect(ATTEMPT + 1, reason, fresh)


def test_only_streaming_is_connected_and_rotations_are_not_reconnects() -> None:
    assert [p for p in S if Machine(p).connected] == [S.STREAMING]
    m = Machine(S.STREAMING, 1, 0)
    for reason in (EndReason.ROTATED, EndReason.ROTATED, EndReason.IDLE_TIMEOUT):
        m, _ = step(m, StreamEnded(m.session, reason))
        assert not m.connected and m.last_end is reason
        m, _ = step(m, BackoffElapsed(m.attempt))
        m, _ = step(m, Connected(m.session))
    assert (m.session, m.reconnects) == (4, 1)
