"""`Runner`: wires the machine, sessions, reconnects, heartbeats and dispatch.

The runner is the machine's `EffectPort`: it feeds events to the `Driver`
and carries out the effects it gets back.  It never sets the phase itself,
and keeps no copy of it: "connected", the session number, the reconnect
count and the last end reason are the machine's; when a session connected is
its record's (`SessionInfo`); diagnostics, `/status` and gauges derive from
those (`runner.diagnostics.RunnerView`).  Detectors (`runner.detectors`)
feed the machine events; the heartbeat loop sees the runner only through
`HeartbeatPort`; reconnect waits are run by `Reconnector` on the machine's
`ScheduleReconnect`.

Two offsets: the *read* offset (the last `streamNextOffset` seen) is where a
reconnect resumes within this process - wakes read but not yet handled are
still queued in memory; the *committed* offset (everything before it handled,
see `runner.offsets`) is what heartbeats report and `--offset-file` keeps, so
a restarted process resumes there.  Wakes handled between the two are
announced again after a restart and come back as claim 409/204 skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, NoReturn

import aiohttp

from pullwake.core.protocol import OFFSET_START, EndReason, RunnerState
from pullwake.runner.api import ServerAPI
from pullwake.runner.config import RunnerConfig
from pullwake.runner.detectors import (
    Clocks,
    HeartbeatBridge,
    ResumeDetector,
    SystemClocks,
    reconnect_after,
)
from pullwake.runner.diagnostics import Diagnostics, RunnerView, iso
from pullwake.runner.dispatch import Dispatcher, Handler, shell_handler
from pullwake.runner.errors import SessionEnded, describe
from pullwake.runner.heartbeat import Heartbeater, HeartbeatRecord
from pullwake.runner.machine import (
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
    Start,
    StartWorkers,
    Stop,
    StopComplete,
    StopWorkers,
    StreamEnded,
)
from pullwake.runner.observe import (
    Observers,
    RunnerObserver,
    RunnerSnapshot,
    SessionInfo,
    Transition,
)
from pullwake.runner.offsets import CommitTracker, OffsetStore
from pullwake.runner.reconnect import Reconnector
from pullwake.runner.session import Session
from pullwake.runner.transport import open_api_session, open_stream_session

log = logging.getLogger("runner")

MetricsHook = Callable[[], tuple[bytes, str]]


async def _log_only(claim: dict[str, Any]) -> None:
    log.info("claim %s of %s (no handler configured)", claim.get("wakeId"), claim.get("streamPath"))


class Runner:
    """A pull-wake runner.  `await runner.run()` until `runner.stop()`."""

    def __init__(
        self,
        config: RunnerConfig | None = None,
        *,
        handler: Handler | None = None,
        observer: RunnerObserver | None = None,
        clocks: Clocks | None = None,
        **options: Any,
    ) -> None:
        """Either a `RunnerConfig`, or its fields as keywords (`server=`, `runner_id=` ...).

        `clocks`: the monotonic/boot clock pair the resume detector compares
        (tests inject one to simulate a suspend)."""
        if config is None:
            config = RunnerConfig(**options)
        elif options:
            raise TypeError("pass either a RunnerConfig or keyword options, not both")
        self.config = config
        if handler is None:
            handler = shell_handler(config.handler_cmd) if config.handler_cmd else _log_only
        self._handler = handler
        self.observer = Observers(*([observer] if observer is not None else []))
        self.metrics: MetricsHook | None = None  # /metrics, set by the telemetry layer
        self.trace_configs: list[aiohttp.TraceConfig] = []  # HTTP client telemetry (runner.otel)
        self._driver = Driver(self)
        self._offsets = OffsetStore(config.offset_file)
        self._tracker = CommitTracker(self._offsets.load())
        self.read_offset = self._tracker.committed
        self.diag = Diagnostics()
        self.heartbeats = HeartbeatRecord()
        self.reconnects: deque[dict[str, Any]] = deque(maxlen=50)
        self._session: Session | None = None
        self._info: SessionInfo | None = None
        self._stream_task: asyncio.Task[None] | None = None  # reads session _stream_number
        self._stream_number = 0
        self._end_detail: tuple[int, str] | None = None  # (session, error text) of its end
        self._registered = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._done = asyncio.Event()
        self._api: ServerAPI | None = None
        self._dispatcher: Dispatcher | None = None
        self._reconnector: Reconnector | None = None
        self._heartbeater: Heartbeater | None = None
        self._clocks = clocks or SystemClocks()
        threshold = config.resume_threshold
        if not config.profile.resume_detector:
            threshold = 0.0  # upstream and legacy reproduce the originals: no such detector
        self.resume_threshold = config.heartbeat_interval if threshold is None else threshold
        self._bridge = HeartbeatBridge(
            self._driver, config.bridge_threshold, self._report, healthy=self._session_healthy
        )
        self.view = RunnerView(
            config,
            self.diag,
            machine=lambda: self._driver.machine,
            session=lambda: self._info,
            heartbeats=lambda: self.heartbeats,
            stats=lambda: self._dispatcher.stats if self._dispatcher is not None else None,
        )

    def __repr__(self) -> str:
        return (
            f"<Runner {self.config.runner_id} {self.phase.value}"
            f" session={self._driver.machine.session}"
            f" committed={self.committed_offset} profile={self.config.profile.name}>"
        )

    # --- public --------------------------------------------------------------------
    @property
    def machine(self) -> Machine:
        return self._driver.machine

    @property
    def phase(self) -> RunnerState:
        return self._driver.phase

    @property
    def committed_offset(self) -> str:
        return self._tracker.committed

    @property
    def ready(self) -> bool:
        return self.machine.connected and self.heartbeats.last_ok is True

    async def run(self) -> None:
        """Run until `stop()`; returns once every task has ended.

        Cancelling the task running it stops the runner the same way, then
        re-raises `CancelledError`.
        """
        stream_http = open_stream_session(self.config, self.trace_configs)
        api_http = open_api_session(self.config, self.trace_configs)
        self._api = ServerAPI(api_http, self.config)
        self._dispatcher = Dispatcher(
            self._api,
            self._handler,
            self._tracker,
            self.observer,
            self._commit,
            concurrency=self.config.concurrency,
            queue_size=self.config.queue_size,
            on_error=self.diag.error,
            handler_timeout=self.config.handler_timeout or None,
            callback_heartbeat_interval=self.config.callback_heartbeat_interval,
            claim_lease=self.config.claim_lease,
        )
        self._stream_http = stream_http
        self._heartbeater = Heartbeater(
            self,
            self._api,
            self.observer,
            runner_id=self.config.runner_id,
            interval=self.config.heartbeat_interval,
            timeout=self.config.hb_timeout,
            record=self.heartbeats,
        )
        self._reconnector = Reconnector(
            lambda attempt: self.feed(BackoffElapsed(attempt)),
            backoff_max=self.config.backoff_max,
            on_wait=self._backing_off,
        )
        try:
            self.feed(Start())
            try:
                await self._done.wait()
            except asyncio.CancelledError:
                # cancelled from outside (an embedding app): stop exactly as `stop()`
                # does, so observers see stopping/stopped and a later `stop()` is a no-op
                self.feed(Stop())
                await self._done.wait()
                raise
        finally:  # a second cancel cut the shutdown short: end what is left, by force
            self._reconnector.cancel()
            await self._cancel_tasks()
            await self._cancel_stream()
            await self._dispatcher.stop()
            self._end_open_session()
            if self.phase is RunnerState.STOPPING:
                self.feed(StopComplete())
            await stream_http.close()
            await api_http.close()

    def stop(self) -> None:
        """Ask for a clean stop (safe to call from a signal handler, repeatedly)."""
        self.feed(Stop())

    def reconnect_now(self, reason: EndReason = EndReason.FORCED) -> bool:
        """End the live read and reconnect at once, no backoff (POST /reconnect, SIGHUP).

        During a reconnect wait, cuts it short.  False when the runner is not
        running (stopped or stopping): nothing to reconnect.
        """
        if self.phase in (RunnerState.STOPPED, RunnerState.STOPPING):
            return False
        log.info("reconnect now (%s), in %s", reason.value, self.phase.value)
        self.feed(ReconnectNow(reason))
        return True

    def feed(self, event: Event) -> None:
        self._driver.feed(event)

    @property
    def session_info(self) -> SessionInfo | None:
        return self._info

    @property
    def registered(self) -> bool:
        return self._registered

    def snapshot(self) -> RunnerSnapshot:
        return self.view.snapshot(self.committed_offset)

    def diagnostics(self) -> dict[str, Any]:
        """The diagnostics /status shows: the original's sixteen fields plus pullwake's."""
        return self.view.as_dict()

    def wire_diagnostics(self) -> dict[str, Any]:
        """The diagnostics a heartbeat carries: only what the real server keeps."""
        return self.view.wire()

    def status(self) -> dict[str, Any]:
        """`GET /status`: diagnostics, state, detector settings, reconnect history."""
        return self.view.status(
            list(self.reconnects),
            committed=self.committed_offset,
            read=self.read_offset,
            queued=self._dispatcher.queued if self._dispatcher else 0,
            resume_threshold=self.resume_threshold or None,
        )

    # --- HeartbeatPort ----------------------------------------------------------------
    def heartbeat_payload(self) -> tuple[str, dict[str, Any]]:
        return self.committed_offset, self.wire_diagnostics()

    async def ensure_registered(self) -> None:
        if not self._registered:
            assert self._api is not None
            await self._api.register()
            self._registered = True

    def heartbeat_done(self, ok: bool, error: BaseException | None) -> None:
        if not ok and error is not None:
            if getattr(error, "status", None) == 404:
                self._registered = False  # a server on a fresh db: register again
            self.diag.error(f"heartbeat: {describe(error)}")
        self._bridge.heartbeat(self.heartbeats)

    # --- detectors ----------------------------------------------------------------------
    def _report(self, detector: str, details: Mapping[str, Any]) -> None:
        """A detector fired: observers hear it before the session end it causes."""
        log.warning("detector %s fired: %s", detector, dict(details))
        self.observer.detector_fired(self._info, detector, details)

    def _session_healthy(self) -> bool:
        s = self._session
        return s is not None and s.number == self.machine.session and s.healthy

    def _resume_detector(self) -> ResumeDetector | None:
        if not self.resume_threshold:
            return None
        act = reconnect_after(self._driver, self._report, self.resume_threshold)

        def on_gap(gap: Any) -> None:
            act(gap)
            if self._heartbeater is not None:
                self._heartbeater.poke()  # the server hears from us at once

        return ResumeDetector(self._clocks, self.resume_threshold, on_gap)

    # --- EffectPort ------------------------------------------------------------------
    def transitioned(self, old: Machine, new: Machine, event: Event) -> None:
        reason = getattr(event, "reason", None)
        log.info("%s -> %s on %s", old.phase.value, new.phase.value, type(event).__name__)
        self.observer.transition(
            Transition(old.phase, new.phase, type(event).__name__, reason, time.time())
        )

    def run_effect(self, effect: Effect) -> None:
        match effect:
            case StartWorkers():
                assert self._dispatcher and self._heartbeater
                self._dispatcher.start()
                self._tasks = [asyncio.create_task(self._heartbeater.run(), name="heartbeat")]
                resume = self._resume_detector()
                if resume is not None:
                    self._tasks.append(asyncio.create_task(resume.run(), name="resume"))
            case OpenStream(session):
                self._open(session)
            case MarkConnected(session):
                if self._info is not None and self._info.number == session:
                    self._info = replace(self._info, connected_at=time.time())
                    self.observer.session_connected(self._info)
            case EndSession(session, reason):
                self._end_session(session, reason)
            case CancelStream(session, reason):
                if self._stream_task is not None and self._stream_number == session:
                    self._stream_task.cancel()
            case ScheduleReconnect(attempt, reason, fresh):
                assert self._reconnector is not None
                self._reconnector.schedule(attempt, reason, fresh)
            case CutWaitShort(attempt):
                if self._reconnector is not None:
                    self._reconnector.cut_short(attempt)
            case StopWorkers():
                if self._reconnector is not None:
                    self._reconnector.cancel()
                for task in self._tasks:  # now, so nothing in flight reports after this
                    task.cancel()
                self._tasks.append(asyncio.create_task(self._shutdown(), name="shutdown"))

    # --- sessions ----------------------------------------------------------------------
    def _open(self, session: int) -> None:
        self._session = None
        self._info = SessionInfo(
            number=session,
            mode=self.config.live_mode,
            start_offset=self.read_offset,
            started_at=time.time(),
        )
        self.observer.session_started(self._info)
        self._stream_number = session
        self._stream_task = asyncio.create_task(self._stream(session), name=f"session-{session}")

    async def _stream(self, number: int) -> None:
        """Open and consume session `number`; report its end to the machine."""
        try:
            await self._consume(number)
        except SessionEnded as end:
            end.session = number
            self._ended(number, end)
        except asyncio.CancelledError:
            raise  # the machine ended it (a detector, a forced reconnect, a stop)
        except Exception as exc:
            log.error("session %d failed unexpectedly", number, exc_info=exc)
            healthy = self._session is not None and self._session.healthy
            failed = SessionEnded(EndReason.ERROR, describe(exc), session=number, healthy=healthy)
            self._ended(number, failed)

    async def _consume(self, number: int) -> NoReturn:
        assert self._api is not None
        if not self._registered:
            await self._register_or_end()
        session = Session(
            number,
            self._stream_http,
            self.config,
            self._api.stream_url,
            self.read_offset,
            _Hooks(self, number),
        )
        self._session = session
        await session.run()

    async def _register_or_end(self) -> None:
        assert self._api is not None
        try:
            await self._api.register()
            self._registered = True
        except (aiohttp.ClientConnectorError, OSError) as exc:
            raise SessionEnded(EndReason.CONNECT_ERROR, describe(exc)) from exc
        except TimeoutError as exc:
            raise SessionEnded(EndReason.CONNECT_TIMEOUT, "register timed out") from exc
        except Exception as exc:
            raise SessionEnded(EndReason.HTTP_ERROR, f"register: {describe(exc)}") from exc

    def _ended(self, number: int, end: SessionEnded) -> None:
        """Session `number` ended by itself: note why, then tell the machine."""
        if end.status == 404:
            self._registered = False  # a server on a fresh db: register again
        if end.status == 410:  # our offset is gone (retention, or a server on a fresh db):
            # resuming there can never succeed; read what the server still has instead -
            # wakes handled before come back as claim 204/409 skips, none is lost
            log.warning("offset %s is gone on the server; reading from the start", self.read_offset)
            self.read_offset = OFFSET_START
        self.diag.error(
            f"stream {end.reason.value}: {end.detail}" if end.detail else end.reason.value
        )
        current = self._info is not None and self._info.number == number
        if end.reason is EndReason.IDLE_TIMEOUT and current:
            # the firing is what ends the session: observers hear it first
            self._report("idle_timeout", {"idle_timeout_s": self.diag.idle_timeout_s})
        elif end.reason is EndReason.TAIL_AHEAD and current:
            self._report("tail_ahead", {"detail": end.detail})
        self._end_detail = (number, end.detail)
        log.info("session %d ended: %s", number, end)
        self.feed(StreamEnded(number, end.reason, end.healthy))

    def _end_session(self, number: int, reason: EndReason) -> None:
        """The machine ended session `number`: its record closes now, exactly once."""
        now = time.time()
        self.reconnects.append(
            {"at": iso(now), "reason": reason.value, "session": number, "wait_s": None}
        )
        info = self._info
        if info is None or info.number != number or info.ended_at is not None:
            return
        detail = self._end_detail[1] if self._end_detail and self._end_detail[0] == number else ""
        self._info = replace(
            info, ended_at=now, reason=reason, error=detail or None, end_offset=self.read_offset
        )
        self.observer.session_ended(self._info)

    def _backing_off(self, wait: float, tries: int, reason: EndReason) -> None:
        if self.reconnects and self.reconnects[-1]["session"] == self.machine.session:
            self.reconnects[-1]["wait_s"] = round(wait, 3)
        self.observer.backoff_wait(wait, tries, reason)

    # --- hooks from the session (see _Hooks) ------------------------------------------
    def _commit(self, offset: str) -> None:
        try:
            self._offsets.save(offset)
        except OSError as exc:
            log.error("cannot persist offset %s: %s", offset, exc)

    # --- stop -----------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        me = asyncio.current_task()
        await self._cancel_tasks(keep=me)
        await self._cancel_stream()
        self._end_open_session()
        if self._dispatcher is not None:
            await self._dispatcher.stop()
        if self._heartbeater is not None:  # tell the server we are gone, best effort
            with contextlib.suppress(Exception):
                async with asyncio.timeout(min(1.0, self.config.hb_timeout)):
                    await self._heartbeater.beat()
        self.feed(StopComplete())
        self._done.set()

    def _end_open_session(self) -> None:
        """Every session ends exactly once: one a stop cancelled ends `stopped`."""
        if self._info is not None and self._info.ended_at is None:
            self._info = replace(
                self._info,
                ended_at=time.time(),
                reason=EndReason.STOPPED,
                end_offset=self.read_offset,
            )
            self.observer.session_ended(self._info)

    async def _cancel_stream(self) -> None:
        task = self._stream_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _cancel_tasks(self, keep: asyncio.Task[Any] | None = None) -> None:
        tasks = [t for t in self._tasks if t is not keep and not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Hooks:
    """`SessionHooks` for session `number`: every call checks it is still current."""

    def __init__(self, runner: Runner, number: int) -> None:
        self._r = runner
        self._n = number

    def connected(self, idle_timeout: float | None) -> None:
        self._r.diag.idle_timeout_s = idle_timeout or 0.0
        self._r.diag.got_bytes()
        self._r.feed(Connected(self._n))

    def got_bytes(self) -> None:
        self._r.diag.got_bytes()
        info = self._r._info
        if info is not None and info.first_byte_at is None and info.number == self._n:
            self._r._info = replace(info, first_byte_at=time.time())

    async def wakes(self, events: Any) -> None:
        assert self._r._dispatcher is not None
        for event in events:
            await self._r._dispatcher.submit(event)
        if self._r._info is not None and self._r._info.number == self._n:
            self._r._info = replace(
                self._r._info, wakes_received=self._r._info.wakes_received + len(events)
            )

    def offset(self, next_offset: str) -> None:
        assert self._r._dispatcher is not None
        self._r.read_offset = next_offset
        self._r._dispatcher.mark(next_offset)
