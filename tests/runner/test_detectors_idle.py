"""The read-idle watchdog and the tail probe's decision as a pure unit: scripted in
plain seconds, no socket and no clock.  Each row is a script of what the read and the
probe saw, and the verdicts asked for on the way (the session's I/O around it is
tested on real sockets in test_tailprobe.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from pullwake.core.protocol import EndReason
from pullwake.runner.detectors import WATCH_MAX_TICK_S, ReadIdleWatchdog

O1 = "0000000000000000_0000000000000127"
O2 = "0000000000000000_0000000000000254"
IDLE = EndReason.IDLE_TIMEOUT
AHEAD = EndReason.TAIL_AHEAD


@dataclass(frozen=True)
class Bytes:
    """Bytes arrived at `at`; `data`: they carried data (else keepalive/control)."""

    at: float
    data: bool = True


@dataclass(frozen=True)
class Probe:
    """A probe sent at `at`, answered `tail` (None: no answer) `took` s later."""

    at: float
    tail: str | None
    took: float = 0.1


@dataclass(frozen=True)
class Ask:
    """At `at` the verdict is `reason` (None: the read lives)."""

    at: float
    reason: EndReason | None


Step = Bytes | Probe | Ask


def watchdog(bound: float | None = 3.0, probe: float | None = 1.0) -> ReadIdleWatchdog:
    """Connected at t=0 with the read at O1; grace 0.5 s; idle talk after 1 s of silence."""
    wd = ReadIdleWatchdog(
        bound=None, probe_interval=probe, probe_grace=0.5, idle_traffic_gap=1.0, now=-5.0
    )
    wd.arm(0.0, bound)
    return wd


def play(wd: ReadIdleWatchdog, steps: list[Step]) -> None:
    for step in steps:
        if isinstance(step, Bytes):
            wd.on_bytes(step.at, step.data)
        elif isinstance(step, Probe):
            assert wd.probe_due(step.at), f"no probe due at {step.at}: {wd!r}"
            wd.probe_sent(step.at)
            wd.on_probe(step.at + step.took, step.tail, O1)
        else:
            verdict = wd.verdict(step.at)
            got = verdict.reason if verdict is not None else None
            assert got is step.reason, f"at {step.at}: {verdict} ({wd!r})"


CASES: list[tuple[str, dict[str, Any], list[Step]]] = [
    (
        "silence past the bound ends idle_timeout",
        {"probe": None},
        [Ask(2.99, None), Ask(3.0, IDLE)],
    ),
    (
        "keepalive bytes push the deadline",
        {"probe": None},
        [
            Bytes(2.0, data=False),
            Ask(4.99, None),
            Bytes(4.5, data=False),
            Ask(7.49, None),
            Ask(7.5, IDLE),
        ],
    ),
    (
        "data bytes push the deadline",
        {"probe": None},
        [Bytes(2.9), Ask(5.89, None), Ask(5.9, IDLE)],
    ),
    (
        "a good probe (tail == offset) pushes the deadline",
        {},
        [Probe(1.0, O1), Ask(3.0, None), Probe(2.1, O1), Ask(5.19, None), Ask(5.2, IDLE)],
    ),
    (
        "a good probe on a silent server keeps a healthy idle read forever",
        {},
        [step for k in range(100) for step in (Probe(1.0 + k, O1), Ask(1.1 + k, None))],
    ),
    (
        "once the server talked while idle, good probes push nothing",
        {},
        [Bytes(1.5, data=False), Probe(2.5, O1), Probe(3.6, O1), Ask(4.49, None), Ask(4.5, IDLE)],
    ),
    (
        "talk after a short silence is not idle talk: good probes still count",
        {},
        [Bytes(0.5, data=False), Probe(1.5, O1), Probe(2.6, O1), Ask(4.5, None), Ask(5.7, IDLE)],
    ),
    (
        "a tail ahead and nothing within the grace ends tail_ahead",
        {},
        [Probe(1.0, O2), Ask(1.59, None), Ask(1.6, AHEAD)],
    ),
    (
        "a tail ahead beats the idle bound that also ran out",
        {"bound": 1.2},
        [Probe(1.0, O2), Ask(1.6, AHEAD)],
    ),
    (
        "data within the grace clears a tail ahead",
        {"bound": None},
        [Probe(1.0, O2), Bytes(1.4), Ask(1.6, None), Ask(100.0, None)],
    ),
    (
        "a failed probe proves nothing: the bound counts from the last byte",
        {},
        [Probe(1.0, None), Probe(2.0, None), Ask(2.99, None), Ask(3.0, IDLE)],
    ),
    (
        "a failed probe does not undo a good one",
        {},
        [Probe(1.0, O1, took=0.5), Probe(2.5, None), Ask(4.49, None), Ask(4.5, IDLE)],
    ),
    (
        "watchdog off: silence never ends the read",
        {"bound": None},
        [Probe(1.0, O1), Probe(2.1, None), Ask(1000.0, None)],
    ),
    (
        "watchdog off: only the probe ends it",
        {"bound": None},
        [Probe(1.0, None), Ask(500.0, None), Probe(500.0, O2), Ask(500.6, AHEAD)],
    ),
    (
        "watchdog and probe off: nothing ends it",
        {"bound": None, "probe": None},
        [Ask(1e6, None)],
    ),
]


@pytest.mark.parametrize(("kwargs", "steps"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_watchdog_decides(kwargs: dict[str, Any], steps: list[Step]) -> None:
    play(watchdog(**kwargs), steps)


@pytest.mark.parametrize(
    ("steps", "at", "due"),
    [
        ([], 0.99, False),
        ([], 1.0, True),
        ([Bytes(0.5)], 1.49, False),  # silence counts from the last byte ...
        ([Bytes(0.5)], 1.5, True),
        ([Probe(1.0, None, took=0.4)], 1.99, False),  # ... or the last probe *sent*
        ([Probe(1.0, None, took=0.4)], 2.0, True),
        ([Probe(1.0, O1)], 2.0, True),
        ([Probe(1.0, O2)], 50.0, False),  # a tail already seen ahead: no more probes
        ([Probe(1.0, O2), Bytes(1.2)], 2.19, False),  # ... until a byte clears it
        ([Probe(1.0, O2), Bytes(1.2)], 2.2, True),
    ],
)
def test_a_probe_is_due_after_an_interval_of_silence(
    steps: list[Step], at: float, due: bool
) -> None:
    wd = watchdog()
    play(wd, steps)
    assert wd.probe_due(at) is due


def test_no_probe_is_ever_due_without_a_probe() -> None:
    assert not watchdog(probe=None).probe_due(1e9)


def test_time_spent_handling_bytes_is_not_silence_and_the_gap_before_them_is() -> None:
    """Bytes that arrived at 2 and took until 10 to hand over (backpressure): silence
    counts from 10; the 2 s before them made a data-less chunk idle talk."""
    wd = watchdog(probe=None)
    wd.on_bytes(10.0, False, arrived=2.0)
    assert wd.idle_traffic
    assert wd.verdict(12.99) is None
    verdict = wd.verdict(13.0)
    assert verdict is not None and verdict.reason is IDLE


def test_the_verdicts_say_why() -> None:
    wd = watchdog()
    play(wd, [Probe(1.0, None)])
    idle = wd.verdict(3.25)
    assert idle is not None
    assert idle.detail == "no byte for 3.25s (bound 3s), no tail probe answered"
    quiet = watchdog(probe=None).verdict(4.0)
    assert quiet is not None and quiet.detail == "no byte for 4s (bound 3s)"
    wd = watchdog()
    play(wd, [Probe(1.0, O2)])
    ahead = wd.verdict(2.0)
    assert ahead is not None and ahead.reason is AHEAD
    assert ahead.detail == (
        f"stream tail {O2} is beyond the read offset {O1} and the read delivered nothing for 0.5s"
    )


def test_arm_restarts_the_silence_and_sets_the_bound() -> None:
    wd = ReadIdleWatchdog(None, None, 0.5, 1.0, now=0.0)
    assert wd.verdict(1e6) is None  # not armed: no bound
    wd.arm(100.0, 2.0)
    assert wd.verdict(101.99) is None
    assert wd.verdict(102.0) is not None


@pytest.mark.parametrize(
    ("bound", "probe", "grace", "tick"),
    [
        (None, None, 2.0, None),  # nothing to watch: the read just waits
        (45.0, None, 2.0, WATCH_MAX_TICK_S),
        (2.0, None, 2.0, 0.5),  # a quarter of the bound
        (45.0, 10.0, 2.0, 1.0),
        (None, 0.2, 0.2, 0.05),  # a quarter of the probe interval
        (None, 10.0, 0.1, 0.05),  # half the grace
        (0.02, None, 2.0, 0.01),  # never below 10 ms
    ],
)
def test_the_tick(bound: float | None, probe: float | None, grace: float, tick: float) -> None:
    wd = ReadIdleWatchdog(bound, probe, grace, 1.0, now=0.0)
    assert wd.tick() == tick
