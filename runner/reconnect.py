"""Reconnect waits: how long between two sessions, driven by the machine.

The machine decides *that* a session ended and whether the next one opens at
once (`ScheduleReconnect.fresh`: a rotation, a resume, a stall, a forced
reconnect or the end of a healthy session).  This module decides *how long*
otherwise: the `backoff` library's exponential sequence with full jitter,
``backoff.expo(factor=factor, max_value=backoff_max)`` drawn through
``backoff.full_jitter``, so failures wait [0, 1), [0, 2), [0, 4) ... up to
[0, `backoff_max`) s, with no give-up.  A fresh reconnect waits nothing and
restarts the sequence, so the reset happens after a healthy session, not at
connect time (a server that accepts and dies at once keeps backing off).

When the wait is over the reconnector feeds `BackoffElapsed(attempt)`; a
`CutWaitShort(attempt)` (a heartbeat got through again, or a forced/resume
reconnect during the wait) feeds it at once and restarts the sequence.  A
wait for an attempt the machine has moved past is simply ignored by it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Generator
from typing import Any

import backoff

from pullwake.core.protocol import EndReason

log = logging.getLogger("pullwake.runner.reconnect")

WaitHandler = Callable[[float, int, EndReason], None]


class Reconnector:
    def __init__(
        self,
        elapsed: Callable[[int], None],
        *,
        backoff_max: float,
        factor: float = 1.0,
        on_wait: WaitHandler,
        jitter: Callable[[float], float] = backoff.full_jitter,
    ) -> None:
        """`elapsed(attempt)` is called when wait `attempt` is over (feeds BackoffElapsed)."""
        self._elapsed = elapsed
        self._backoff_max = backoff_max
        self._factor = factor
        self._on_wait = on_wait
        self._jitter = jitter
        self._sequence: Generator[float, Any, None] = self._fresh_sequence()
        self.tries = 0  # failed sessions in the current sequence
        self.cycles = 0  # how many times the sequence started afresh
        self._timer: asyncio.TimerHandle | None = None
        self._attempt: int | None = None

    def __repr__(self) -> str:
        return f"<Reconnector tries={self.tries} cycles={self.cycles} waiting={self.waiting}>"

    @property
    def waiting(self) -> bool:
        return self._timer is not None

    def _fresh_sequence(self) -> Generator[float, Any, None]:
        seq = backoff.expo(factor=self._factor, max_value=self._backoff_max)
        next(seq)  # past the generator's priming yield, as the decorator does
        return seq

    def _restart(self) -> None:
        self._sequence = self._fresh_sequence()
        self.tries = 0
        self.cycles += 1

    def schedule(self, attempt: int, reason: EndReason, fresh: bool) -> float:
        """Start wait `attempt`; returns its length in seconds."""
        self.cancel()
        if fresh:
            self._restart()
            wait = 0.0
        else:
            self.tries += 1
            value = next(self._sequence)
            wait = max(0.0, float(self._jitter(value)))
        self._on_wait(wait, self.tries, reason)
        self._attempt = attempt
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(wait, self._fire, attempt)
        return wait

    def cut_short(self, attempt: int) -> bool:
        """End wait `attempt` now (fresh sequence); False when it is not the one running."""
        if self._timer is None or self._attempt != attempt:
            return False
        self.cancel()
        self._restart()
        log.info("reconnect wait %d cut short", attempt)
        asyncio.get_running_loop().call_soon(self._fire, attempt)
        return True

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._attempt = None

    def _fire(self, attempt: int) -> None:
        if self._attempt == attempt:
            self._timer, self._attempt = None, None
        self._elapsed(attempt)
