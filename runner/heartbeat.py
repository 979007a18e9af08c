"""Heartbeats: the loop that posts them, and the record of how they went.

Every `interval` the loop posts the runner's lease (3 x interval), committed
offset and diagnostics, bounded by its own timeout, in every phase,
reconnecting included; `poke()` sends one at once (the resume/stall
detector does, so the server hears from a runner that was away as soon as it
is back).  The loop knows the runner only through `HeartbeatPort`: what to
send, how to make sure it is registered, and whom to tell about the outcome.
What the outcomes mean for the stream (the heartbeat bridge, "the server is
back") is decided by `runner.detectors`, not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from pullwake.core.protocol import HeartbeatOutcome
from pullwake.runner.api import error_type_of
from pullwake.runner.errors import describe
from pullwake.runner.observe import RunnerObserver

log = logging.getLogger("pullwake.runner.heartbeat")


class HeartbeatPort(Protocol):
    """What the heartbeat loop needs from the runner, and nothing more."""

    def heartbeat_payload(self) -> tuple[str, dict[str, Any]]:
        """The committed offset and the diagnostics to send now."""
        ...

    async def ensure_registered(self) -> None:
        """Register first when the server does not know the runner (yet, or any more)."""

    def heartbeat_done(self, ok: bool, error: BaseException | None) -> None:
        """Every outcome, after `Heartbeater.record` is updated."""


class HeartbeatAPI(Protocol):
    async def heartbeat(self, offset: str, diagnostics: dict[str, Any]) -> Any: ...


@dataclass
class HeartbeatRecord:
    """How heartbeats went; read by diagnostics, /readyz and gauges."""

    sent: int = 0
    last_at: float | None = None  # unix time of the last outcome
    last_ok: bool | None = None
    last_success_at: float | None = None
    consecutive_failures: int = 0
    failures_before: int = 0  # the failures in a row before the last outcome

    @property
    def recovered(self) -> bool:
        """The last heartbeat got through after one or more failures: the server is back."""
        return self.last_ok is True and self.failures_before > 0


class Heartbeater:
    def __init__(
        self,
        port: HeartbeatPort,
        api: HeartbeatAPI,
        observer: RunnerObserver,
        *,
        runner_id: str,
        interval: float,
        timeout: float,
        record: HeartbeatRecord | None = None,
    ) -> None:
        self._port = port
        self._api = api
        self._observer = observer
        self._runner_id = runner_id
        self._interval = interval
        self._timeout = timeout
        self.record = record if record is not None else HeartbeatRecord()
        self._poked = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Heartbeater sent={self.record.sent} failures={self.record.consecutive_failures}>"

    def poke(self) -> None:
        """Send the next heartbeat now instead of at the end of the interval."""
        self._poked.set()

    async def run(self) -> NoReturn:
        while True:
            started = time.monotonic()
            self._poked.clear()
            await self.beat()
            remaining = max(0.0, self._interval - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._poked.wait()

    async def beat(self) -> bool:
        started = time.monotonic()
        ok, error = True, None
        with self._observer.span("heartbeat", {"runner_id": self._runner_id}):
            try:
                async with asyncio.timeout(self._timeout):
                    await self._port.ensure_registered()
                    offset, diagnostics = self._port.heartbeat_payload()
                    await self._api.heartbeat(offset, diagnostics)
            except Exception as exc:
                ok, error = False, exc
        duration = time.monotonic() - started
        rec = self.record
        rec.sent += 1
        rec.last_at, rec.last_ok = time.time(), ok
        rec.failures_before = rec.consecutive_failures
        if ok:
            rec.consecutive_failures = 0
            rec.last_success_at = rec.last_at
            self._observer.heartbeat(HeartbeatOutcome.OK, duration, None)
        else:
            assert error is not None
            rec.consecutive_failures += 1
            self._observer.heartbeat(HeartbeatOutcome.FAILED, duration, error_type_of(error))
            log.warning(
                "heartbeat failed (%d in a row): %s", rec.consecutive_failures, describe(error)
            )
        self._port.heartbeat_done(ok, error)
        return ok
