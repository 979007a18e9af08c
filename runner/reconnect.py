"""Reconnect policy: the `backoff` decorator, in exactly one place.

`attempt` opens and consumes one session and raises `SessionEnded` on every
end.  It is decorated with ``backoff.on_exception(backoff.expo, SessionEnded,
factor=1, max_value=backoff_max, jitter=full_jitter)`` and no give-up, so
failures wait 1, 2, 4 ... `backoff_max` s (each drawn uniformly below that,
full jitter).  `backoff` never resets by itself, so:

* an end that does not count as a failure (`SessionEnded.resets_backoff`: a
  planned rotation or the end of a healthy session) is a ``giveup``: it leaves
  the decorated call and the outer loop calls it afresh, reconnecting at once
  with a fresh sequence - the reset happens after a healthy session, not at
  connect time (a server that accepts and dies at once keeps backing off);
* `cut_short()` (a heartbeat got through again: the server is back) cancels
  the wait in progress; the outer loop then calls afresh too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import backoff

from pullwake.runner.errors import SessionEnded

log = logging.getLogger("pullwake.runner.reconnect")


def _resets_backoff(exc: Exception) -> bool:
    return isinstance(exc, SessionEnded) and exc.resets_backoff


BackoffHandler = Callable[[float, int, SessionEnded], None]


class Reconnector:
    def __init__(
        self,
        attempt: Callable[[], Coroutine[Any, Any, NoReturn]],
        *,
        backoff_max: float,
        factor: float = 1.0,
        on_wait: BackoffHandler,
        on_reset: Callable[[SessionEnded], None],
    ) -> None:
        self._on_wait = on_wait
        self._on_reset = on_reset
        self._waiting = False
        self._cut = False
        self._cycle: asyncio.Task[Any] | None = None
        self.cycles = 0  # how many times the backoff sequence started afresh
        self._decorated = backoff.on_exception(
            backoff.expo,
            SessionEnded,
            factor=factor,
            max_value=backoff_max,
            jitter=backoff.full_jitter,
            max_tries=None,
            giveup=_resets_backoff,
            on_backoff=self._backing_off,
            raise_on_giveup=True,
            logger=None,
        )(self._attempt_wrapper(attempt))

    def __repr__(self) -> str:
        return f"<Reconnector cycles={self.cycles} waiting={self._waiting}>"

    @property
    def waiting(self) -> bool:
        return self._waiting

    def _attempt_wrapper(
        self, attempt: Callable[[], Coroutine[Any, Any, NoReturn]]
    ) -> Callable[[], Coroutine[Any, Any, NoReturn]]:
        async def one() -> NoReturn:
            self._waiting = False
            await attempt()

        return one

    def _backing_off(self, details: Any) -> None:
        self._waiting = True
        exc = details["exception"]
        assert isinstance(exc, SessionEnded)
        self._on_wait(float(details["wait"]), int(details["tries"]), exc)

    def cut_short(self) -> bool:
        """End the backoff wait in progress, if any; True if one was cut."""
        if not self._waiting or self._cycle is None or self._cycle.done():
            return False
        self._cut = True
        self._cycle.cancel()
        return True

    async def run(self) -> NoReturn:
        me = asyncio.current_task()
        while True:
            self.cycles += 1
            self._cut = False
            self._cycle = asyncio.create_task(self._decorated(), name="reconnect-cycle")
            try:
                await self._cycle
            except SessionEnded as end:  # a giveup: not a failure, start afresh
                self._on_reset(end)
            except asyncio.CancelledError:
                if self._cut and me is not None and not me.cancelling():
                    log.info("backoff wait cut short: the server answers again")
                    continue
                raise
            finally:
                self._waiting = False
