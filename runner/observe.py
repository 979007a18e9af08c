"""The seam between the runner and whatever watches it (telemetry, logs, tests).

The runner core never imports OpenTelemetry.  It reports what happened to a
`RunnerObserver`; the OTel layer (`runner.otel`) is one implementation,
`NullObserver` the default, `RecordingObserver` the one tests read.  Gauges
(stream age, idle, state ...) are not pushed: observers read them from
`Runner.snapshot()` at collection time.

Observers must be cheap and must never raise into the runner: `Observers`
(the fan-out the runner holds) swallows and logs their exceptions.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pullwake.core.protocol import (
    CallbackOutcome,
    ClaimResult,
    EndReason,
    HeartbeatErrorType,
    HeartbeatOutcome,
    LiveMode,
    RunnerState,
    WakeOutcome,
)

log = logging.getLogger("pullwake.runner.observe")


@dataclass(frozen=True)
class Transition:
    old: RunnerState
    new: RunnerState
    event: str  # the event class name that caused it, e.g. "StreamEnded"
    reason: EndReason | None = None
    at: float = 0.0  # time.time()


@dataclass(frozen=True)
class SessionInfo:
    """One stream session: from the connect attempt that opened it to its end."""

    number: int  # 1, 2, ... per runner process
    mode: LiveMode
    start_offset: str
    started_at: float  # time.time() of the connect attempt
    connected_at: float | None = None  # response headers received
    first_byte_at: float | None = None
    end_offset: str | None = None
    wakes_received: int = 0
    ended_at: float | None = None
    reason: EndReason | None = None
    error: str | None = None  # short text of the exception that ended it


@dataclass(frozen=True)
class RunnerSnapshot:
    """What gauges and /status read, computed by `Runner.snapshot()` on demand."""

    runner_id: str
    state: RunnerState
    stream_connected: bool
    stream_connected_since: float | None  # unix time
    stream_age_s: float  # 0 when not connected
    stream_idle_s: float  # since the last byte read (0 when no session yet)
    idle_timeout_s: float  # 0 when the watchdog is off
    reconnect_count: int
    consecutive_heartbeat_failures: int
    last_heartbeat_success_at: float | None  # unix time
    last_heartbeat_ok: bool | None
    last_reconnect_reason: EndReason | None
    session_number: int
    committed_offset: str


class RunnerObserver(Protocol):
    def transition(self, t: Transition) -> None: ...

    def session_started(self, s: SessionInfo) -> None:
        """A connect attempt began (the session span starts here)."""

    def session_connected(self, s: SessionInfo) -> None:
        """Response headers arrived: the session is streaming."""

    def session_ended(self, s: SessionInfo) -> None:
        """Every session ends exactly once, successful connect or not."""

    def detector_fired(
        self, s: SessionInfo | None, detector: str, details: Mapping[str, Any]
    ) -> None:
        """idle_timeout / heartbeat_failures fired (a span event on the session)."""

    def backoff_wait(self, seconds: float, tries: int, reason: EndReason | None) -> None: ...

    def heartbeat(
        self, outcome: HeartbeatOutcome, duration_s: float, error_type: HeartbeatErrorType | None
    ) -> None: ...

    def wake(
        self, outcome: WakeOutcome, wake_id: str | None, latency_s: float | None = None
    ) -> None: ...

    def claim_result(self, result: ClaimResult) -> None:
        """One claim request's answer (every attempt, retries included)."""

    def callback_heartbeat(self, outcome: CallbackOutcome, duration_s: float) -> None:
        """One `{epoch}` lease heartbeat to a claim's callback URL."""

    def completion(self, outcome: CallbackOutcome, duration_s: float) -> None:
        """One `{epoch, acks, done:true}` request to a claim's callback URL."""

    def span(
        self, name: str, attributes: Mapping[str, Any]
    ) -> contextlib.AbstractContextManager[None]:
        """Wrap a unit of work (heartbeat, claim, handle, complete) in a span.

        HTTP requests made inside carry W3C traceparent when tracing is on.
        """
        ...


class NullObserver:
    """Observes nothing; the default."""

    def transition(self, t: Transition) -> None:
        pass

    def session_started(self, s: SessionInfo) -> None:
        pass

    def session_connected(self, s: SessionInfo) -> None:
        pass

    def session_ended(self, s: SessionInfo) -> None:
        pass

    def detector_fired(
        self, s: SessionInfo | None, detector: str, details: Mapping[str, Any]
    ) -> None:
        pass

    def backoff_wait(self, seconds: float, tries: int, reason: EndReason | None) -> None:
        pass

    def heartbeat(
        self, outcome: HeartbeatOutcome, duration_s: float, error_type: HeartbeatErrorType | None
    ) -> None:
        pass

    def wake(
        self, outcome: WakeOutcome, wake_id: str | None, latency_s: float | None = None
    ) -> None:
        pass

    def claim_result(self, result: ClaimResult) -> None:
        pass

    def callback_heartbeat(self, outcome: CallbackOutcome, duration_s: float) -> None:
        pass

    def completion(self, outcome: CallbackOutcome, duration_s: float) -> None:
        pass

    def span(
        self, name: str, attributes: Mapping[str, Any]
    ) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


@dataclass
class RecordingObserver(NullObserver):
    """Keeps every call, in order, for tests: `calls` holds (method, args)."""

    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def __getattribute__(self, name: str) -> Any:
        attr = object.__getattribute__(self, name)
        if name.startswith("_") or name == "calls" or not callable(attr):
            return attr

        def record(*args: Any, **kwargs: Any) -> Any:
            object.__getattribute__(self, "calls").append((name, args + tuple(kwargs.values())))
            return attr(*args, **kwargs)

        return record

    def of(self, method: str) -> list[tuple[Any, ...]]:
        return [args for m, args in self.calls if m == method]


class Observers(NullObserver):
    """Fan-out to several observers; an observer's exception is logged, never raised."""

    def __init__(self, *observers: RunnerObserver) -> None:
        self._observers = list(observers)

    def add(self, observer: RunnerObserver) -> None:
        self._observers.append(observer)

    def _each(self, method: str, *args: Any) -> None:
        for o in self._observers:
            try:
                getattr(o, method)(*args)
            except Exception:  # telemetry must never hurt the runner
                log.exception("observer %r failed in %s", o, method)

    def transition(self, t: Transition) -> None:
        self._each("transition", t)

    def session_started(self, s: SessionInfo) -> None:
        self._each("session_started", s)

    def session_connected(self, s: SessionInfo) -> None:
        self._each("session_connected", s)

    def session_ended(self, s: SessionInfo) -> None:
        self._each("session_ended", s)

    def detector_fired(
        self, s: SessionInfo | None, detector: str, details: Mapping[str, Any]
    ) -> None:
        self._each("detector_fired", s, detector, details)

    def backoff_wait(self, seconds: float, tries: int, reason: EndReason | None) -> None:
        self._each("backoff_wait", seconds, tries, reason)

    def heartbeat(
        self, outcome: HeartbeatOutcome, duration_s: float, error_type: HeartbeatErrorType | None
    ) -> None:
        self._each("heartbeat", outcome, duration_s, error_type)

    def wake(
        self, outcome: WakeOutcome, wake_id: str | None, latency_s: float | None = None
    ) -> None:
        self._each("wake", outcome, wake_id, latency_s)

    def claim_result(self, result: ClaimResult) -> None:
        self._each("claim_result", result)

    def callback_heartbeat(self, outcome: CallbackOutcome, duration_s: float) -> None:
        self._each("callback_heartbeat", outcome, duration_s)

    def completion(self, outcome: CallbackOutcome, duration_s: float) -> None:
        self._each("completion", outcome, duration_s)

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, Any]) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for o in self._observers:
                try:
                    stack.enter_context(o.span(name, attributes))
                except Exception:
                    log.exception("observer %r failed to open span %s", o, name)
            yield
