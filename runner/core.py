"""`Runner`: wires the machine, sessions, reconnects, heartbeats and dispatch.

The runner is the machine's `EffectPort`: it feeds events to the `Driver`
and carries out the effects it gets back.  It never sets the phase itself.
Diagnostics, `/status` and gauges all read the same fields, so what the
runner says about its stream is what its code did.

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
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NoReturn

import aiohttp

from pullwake.core.protocol import OFFSET_START, EndReason, RunnerState
from pullwake.runner.api import ServerAPI
from pullwake.runner.config import RunnerConfig
from pullwake.runner.diagnostics import Diagnostics, iso
from pullwake.runner.dispatch import Dispatcher, Handler, shell_handler
from pullwake.runner.errors import SessionEnded, describe
from pullwake.runner.heartbeat import Heartbeater
from pullwake.runner.machine import (
    BackoffElapsed,
    CancelStream,
    Connected,
    CutWaitShort,
    Driver,
    Effect,
    Event,
    Machine,
    MarkConnected,
    MarkDisconnected,
    OpenStream,
    ScheduleReconnect,
    ServerBack,
    Start,
    StartWorkers,
    Stop,
    StopComplete,
    StopWorkers,
    StreamEnded,
    StreamReset,
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


async def _log_only(wake: dict[str, Any]) -> None:
    log.info("wake %s (no handler configured)", wake.get("wake_id"))


class Runner:
    """A pull-wake runner.  `await runner.run()` until `runner.stop()`."""

    def __init__(
        self,
        config: RunnerConfig | None = None,
        *,
        handler: Handler | None = None,
        observer: RunnerObserver | None = None,
        **options: Any,
    ) -> None:
        """Either a `RunnerConfig`, or its fields as keywords (`server=`, `runner_id=` ...)."""
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
        self.request_class: type[aiohttp.ClientRequest] = aiohttp.ClientRequest  # traceparent
        self._driver = Driver(self)
        self._offsets = OffsetStore(config.offset_file)
        self._tracker = CommitTracker(self._offsets.load())
        self.read_offset = self._tracker.committed
        self.diag = Diagnostics(config)
        self.reconnects: deque[dict[str, Any]] = deque(maxlen=50)
        self._session: Session | None = None
        self._info: SessionInfo | None = None
        self._reset_reason: EndReason | None = None
        self._reset_event = asyncio.Event()
        self._last_end: EndReason | None = None
        self._registered = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._done = asyncio.Event()
        self._api: ServerAPI | None = None
        self._dispatcher: Dispatcher | None = None
        self._reconnector: Reconnector | None = None
        self._heartbeater: Heartbeater | None = None

    def __repr__(self) -> str:
        return (
            f"<Runner {self.config.runner_id} {self.phase.value}"
            f" session={self._driver.machine.session}"
            f" committed={self.committed_offset} profile={self.config.profile.name}>"
        )

    # --- public --------------------------------------------------------------------
    @property
    def phase(self) -> RunnerState:
        return self._driver.phase

    @property
    def committed_offset(self) -> str:
        return self._tracker.committed

    @property
    def ready(self) -> bool:
        return self.phase is RunnerState.STREAMING and self.diag.last_heartbeat_ok is True

    async def run(self) -> None:
        """Run until `stop()`; returns once every task has ended.

        Cancelling the task running it stops the runner the same way, then
        re-raises `CancelledError`.
        """
        stream_http = open_stream_session(self.config, self.request_class)
        api_http = open_api_session(self.config, self.request_class)
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
        )
        self._stream_http = stream_http
        self._heartbeater = Heartbeater(self, self._api)
        self._reconnector = Reconnector(
            self._attempt,
            backoff_max=self.config.backoff_max,
            on_wait=self._backing_off,
            on_reset=self._fresh_backoff,
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
            await self._cancel_tasks()
            await self._dispatcher.stop()
            self._end_open_session()
            if self.phase is RunnerState.STOPPING:
                self.feed(StopComplete())
            await stream_http.close()
            await api_http.close()

    def stop(self) -> None:
        """Ask for a clean stop (safe to call from a signal handler, repeatedly)."""
        self.feed(Stop())

    def feed(self, event: Event) -> None:
        self._driver.feed(event)

    def reset_stream(self, reason: EndReason) -> None:
        """End the current session from outside (the heartbeat bridge)."""
        self.feed(StreamReset(self._driver.machine.session, reason))

    def server_back(self) -> None:
        """A heartbeat got through after failures: cut a reconnect wait short."""
        self.feed(ServerBack(self._driver.machine.attempt))

    @property
    def session_info(self) -> SessionInfo | None:
        return self._info

    @property
    def registered(self) -> bool:
        return self._registered

    @registered.setter
    def registered(self, value: bool) -> None:
        self._registered = value

    def snapshot(self) -> RunnerSnapshot:
        return self.diag.snapshot(self._driver.machine, self.committed_offset)

    def diagnostics(self) -> dict[str, Any]:
        """The heartbeat diagnostics (the original's fields plus pullwake's)."""
        stats = self._dispatcher.stats if self._dispatcher is not None else None
        return self.diag.as_dict(self._driver.machine, stats)

    def status(self) -> dict[str, Any]:
        """`GET /status`: diagnostics, state, detector settings, reconnect history."""
        return self.diag.status(
            self._driver.machine,
            self.diagnostics(),
            list(self.reconnects),
            committed=self.committed_offset,
            read=self.read_offset,
            queued=self._dispatcher.queued if self._dispatcher else 0,
        )

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
                assert self._dispatcher and self._reconnector and self._heartbeater
                self._dispatcher.start()
                self._tasks = [
                    asyncio.create_task(self._reconnector.run(), name="reconnect"),
                    asyncio.create_task(self._heartbeater.run(), name="heartbeat"),
                ]
            case OpenStream(session):
                self._open(session)
            case MarkConnected(session):
                self.diag.connected()
                if self._info is not None:
                    self._info = replace(self._info, connected_at=time.time())
                    self.observer.session_connected(self._info)
            case MarkDisconnected(session, reason):
                self._last_end = reason
                self.diag.disconnected(reason)
                self.reconnects.append(
                    {
                        "at": iso(time.time()),
                        "reason": reason.value,
                        "session": session,
                        "wait_s": None,
                    }
                )
            case CancelStream(session, reason):
                self._reset_reason = reason
                self._reset_event.set()
            case ScheduleReconnect():
                pass  # the wait itself is the backoff decorator's (runner.reconnect)
            case CutWaitShort():
                if self._reconnector is not None:
                    self._reconnector.cut_short()
            case StopWorkers():
                self._tasks.append(asyncio.create_task(self._shutdown(), name="shutdown"))

    # --- sessions ----------------------------------------------------------------------
    def _open(self, session: int) -> None:
        if session > 1 and self._last_end is not EndReason.ROTATED:
            self.diag.reconnect_count += 1
        self.diag.session_failures = 0
        self._reset_event = asyncio.Event()
        self._reset_reason = None
        self._info = SessionInfo(
            number=session,
            mode=self.config.live_mode,
            start_offset=self.read_offset,
            started_at=time.time(),
        )
        self.observer.session_started(self._info)

    async def _attempt(self) -> NoReturn:
        """Open and consume one session; raise `SessionEnded` on every end."""
        m = self._driver.machine
        if m.phase is RunnerState.RECONNECTING:
            self.feed(BackoffElapsed(m.attempt))
        m = self._driver.machine
        if m.phase is not RunnerState.CONNECTING:  # stopping: wait to be cancelled
            await asyncio.Event().wait()
        number = m.session
        try:
            await self._consume(number)
        except SessionEnded as end:
            end.session = number
            self._ended(number, end)
            raise

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
        reader = asyncio.create_task(session.run(), name=f"session-{number}")
        reset = asyncio.create_task(self._reset_event.wait())
        try:
            await asyncio.wait({reader, reset}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reset.cancel()
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
        # a session the runner ends (heartbeat bridge) may have been healthy for hours:
        # that end must reset the backoff like any other end of a healthy session
        healthy = session.healthy
        if not reader.done() or reader.cancelled():
            reason = self._reset_reason or EndReason.STOPPED
            raise SessionEnded(reason, "reset by the runner", session=number, healthy=healthy)
        exc = reader.exception()
        if isinstance(exc, SessionEnded):
            raise exc
        log.error("session %d failed unexpectedly", number, exc_info=exc)
        detail = describe(exc) if exc else ""
        raise SessionEnded(EndReason.ERROR, detail, session=number, healthy=healthy)

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
            self.observer.detector_fired(
                self._info, "idle_timeout", {"idle_timeout_s": self.diag.idle_timeout_s}
            )
        self.feed(StreamEnded(number, end.reason))
        if self._info is not None and current and self._info.ended_at is None:
            self._info = replace(
                self._info,
                ended_at=time.time(),
                reason=end.reason,
                error=end.detail or None,
                end_offset=self.read_offset,
            )
            self.observer.session_ended(self._info)
        log.info("session %d ended: %s", number, end)

    def _backing_off(self, wait: float, tries: int, end: SessionEnded) -> None:
        if self.reconnects and self.reconnects[-1]["session"] == end.session:
            self.reconnects[-1]["wait_s"] = round(wait, 3)
        self.observer.backoff_wait(wait, tries, end.reason)

    def _fresh_backoff(self, end: SessionEnded) -> None:
        if self.reconnects and self.reconnects[-1]["session"] == end.session:
            self.reconnects[-1]["wait_s"] = 0.0
        self.observer.backoff_wait(0.0, 0, end.reason)

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
