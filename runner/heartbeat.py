"""Heartbeats, and the two decisions they feed.

Every `heartbeat_interval` the runner posts its lease (3 x interval), the
committed offset and its diagnostics, bounded by its own timeout.  It keeps
doing so in every phase, reconnecting included.

* Heartbeat bridge (profiles default, upstream): K consecutive failures
  *during the current session* (connecting or streaming) reset that session
  with reason `heartbeat_failures`.  Counting per session means a fresh
  connect attempt gets its own K heartbeats before the bridge fires again.
* A success after failures means the server is back: a reconnect wait in
  progress is cut short (`ServerBack`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, NoReturn

from pullwake.core.protocol import EndReason, HeartbeatOutcome, RunnerState
from pullwake.runner.api import ServerAPI, error_type_of
from pullwake.runner.errors import describe

if TYPE_CHECKING:
    from pullwake.runner.core import Runner

log = logging.getLogger("pullwake.runner.heartbeat")


class Heartbeater:
    def __init__(self, runner: Runner, api: ServerAPI) -> None:
        self._runner = runner
        self._api = api
        self.sent = 0

    def __repr__(self) -> str:
        return f"<Heartbeater sent={self.sent}>"

    async def run(self) -> NoReturn:
        interval = self._runner.config.heartbeat_interval
        while True:
            started = time.monotonic()
            await self.beat()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def beat(self) -> bool:
        r = self._runner
        diag = r.diag
        started = time.monotonic()
        ok, error = True, None
        with r.observer.span("heartbeat", {"runner_id": r.config.runner_id}):
            try:
                async with asyncio.timeout(r.config.hb_timeout):
                    if not r.registered:
                        await self._api.register()
                        r.registered = True
                    await self._api.heartbeat(r.committed_offset, r.diagnostics())
            except Exception as exc:
                ok, error = False, exc
        self.sent += 1
        duration = time.monotonic() - started
        diag.last_heartbeat_at = time.time()
        diag.last_heartbeat_ok = ok
        if ok:
            recovered = diag.consecutive_heartbeat_failures > 0
            diag.consecutive_heartbeat_failures = 0
            diag.session_failures = 0
            diag.last_heartbeat_success_at = time.time()
            r.observer.heartbeat(HeartbeatOutcome.OK, duration, None)
            if recovered:
                r.server_back()
            return True
        assert error is not None
        etype = error_type_of(error)
        if getattr(error, "status", None) == 404:
            r.registered = False
        diag.consecutive_heartbeat_failures += 1
        diag.session_failures += 1
        diag.error(f"heartbeat: {describe(error)}")
        r.observer.heartbeat(HeartbeatOutcome.FAILED, duration, etype)
        log.warning(
            "heartbeat failed (%d in a row): %s",
            diag.consecutive_heartbeat_failures,
            describe(error),
        )
        self._maybe_bridge()
        return False

    def _maybe_bridge(self) -> None:
        r = self._runner
        k = r.config.bridge_threshold
        if k is None or r.phase not in (RunnerState.CONNECTING, RunnerState.STREAMING):
            return
        if r.diag.session_failures < k:
            return
        r.observer.detector_fired(
            r.session_info,
            "heartbeat_failures",
            {"consecutive_failures": r.diag.consecutive_heartbeat_failures, "threshold": k},
        )
        r.reset_stream(EndReason.HEARTBEAT_FAILURES)
