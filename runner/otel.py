"""OpenTelemetry for the runner: a `RunnerObserver` writing catalog metrics and spans.

The runner core never imports OpenTelemetry; it reports to `runner.observe`
and this observer turns the reports into:

- metrics from the catalog: gauges read `Runner.snapshot()` at collection
  time (`runner.otel_gauges`), counters and histograms from observer calls,
  recorded in the active span's context so exemplars carry trace ids;
- one `pullwake.stream.session` span per stream session, from the connect
  attempt to its end (ERROR when the end reason is a failure, detector
  firings as span events); a connect attempt that never got a response is
  renamed `pullwake.stream.connect` and carries the backoff wait before it;
- heartbeat spans linked to the current session, holding the outcome the
  runner reports just after the heartbeat's block;
- each wake's `pullwake.wake` trace with claim -> handle -> complete under it
  (`runner.otel_wakes`, the hot path);
- HTTP semantic conventions on every request: a CLIENT span per request
  (`traceparent` names it) and `http.client.request.duration`
  (`runner.otel_http`, an aiohttp `TraceConfig`).

Everything here is called on the runner's event loop and only enqueues or
updates memory (bounded maps); exporting happens on the SDK's threads.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from pullwake.core import catalog as c
from pullwake.core.catalog import RUNNER_ID, Component
from pullwake.core.protocol import (
    CallbackOutcome,
    ClaimResult,
    EndReason,
    HeartbeatErrorType,
    HeartbeatOutcome,
    RunnerState,
    WakeOutcome,
)
from pullwake.core.telemetry import (
    PROMETHEUS_CONTENT_TYPE,
    SERVICE_RUNNER,
    Instruments,
    Telemetry,
    TelemetryConfigError,
    build_telemetry,
)
from pullwake.runner.observe import RunnerSnapshot, SessionInfo, Transition
from pullwake.runner.otel_gauges import RunnerGauges
from pullwake.runner.otel_http import HttpClientTelemetry
from pullwake.runner.otel_wakes import WAKE_SPAN, WAKE_STEPS, WakeTraces

__all__ = [
    "CONNECT_SPAN",
    "HEARTBEAT_SPAN",
    "SESSION_SPAN",
    "WAKE_SPAN",
    "WAKE_STEPS_ENV",
    "OtelRunnerObserver",
    "instrument_runner",
]

if TYPE_CHECKING:
    from pullwake.runner.core import Runner


SESSION_SPAN: Final = c.SPAN_SESSION
CONNECT_SPAN: Final = c.SPAN_CONNECT
HEARTBEAT_SPAN: Final = c.SPAN_HEARTBEAT
WAKE_STEPS_ENV: Final = "PULLWAKE_OTEL_WAKE_STEPS"


def _ns(unix_s: float | None) -> int | None:
    return None if unix_s is None else int(unix_s * 1e9)


def _attr_key(key: str) -> str:
    """Runner-side keys (`wake_id`) -> namespaced span attribute keys."""
    if key == "wake_id":
        return "pullwake.wake.id"
    if key == "runner_id":
        return RUNNER_ID
    return key if "." in key else f"pullwake.{key}"


def _attr_value(value: Any) -> Any:
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


class OtelRunnerObserver:
    """Implements `runner.observe.RunnerObserver` on an injected `Telemetry`."""

    def __init__(
        self,
        telemetry: Telemetry,
        runner_id: str,
        snapshot: Callable[[], RunnerSnapshot] | None = None,
        *,
        wake_step_spans: bool = True,
    ) -> None:
        self.telemetry = telemetry
        # claim/handle/complete as child spans of each wake's span (True) or as
        # events on it (False: a quarter of the span cost at high wake rates)
        self.wake_step_spans = wake_step_spans
        self.runner_id = runner_id
        self._attr_cache: dict[tuple[str, str], Mapping[str, str]] = {}
        self._tracer = telemetry.tracer()
        self._sessions: dict[int, Span] = {}  # open sessions: each ends exactly once
        self._current: Span | None = None
        self._phase = RunnerState.STOPPED
        self._heartbeat_span: Span | None = None  # block done, awaiting its outcome
        self._heartbeat_open: Span | None = None  # block running
        self._links: tuple[Span | None, Sequence[Link]] = (None, ())
        self._pending_backoff: tuple[float, int, EndReason | None] | None = None
        self._gauges = RunnerGauges(runner_id, snapshot)
        self._ins = Instruments(
            telemetry.meter(),
            Component.RUNNER,
            self._gauges.callbacks(),
            counted={c.WAKES.name: lambda: self._wakes.counts()},
        )
        self._wakes = WakeTraces(
            self._tracer, self._ins, runner_id, self._session_links, step_spans=wake_step_spans
        )
        self._http = HttpClientTelemetry(self._tracer, self._ins, runner_id, lambda: self._current)

    def bind(self, snapshot: Callable[[], RunnerSnapshot]) -> None:
        """Give the gauges their source once the `Runner` exists."""
        self._gauges.bind(snapshot)

    # --- context helpers ---
    def _attrs(self, key: str, value: str) -> Mapping[str, str]:
        """Metric attributes, built once per (key, closed-enum value): the hot path."""
        attrs = self._attr_cache.get((key, value))
        if attrs is None:
            attrs = self._attr_cache[(key, value)] = {RUNNER_ID: self.runner_id, key: value}
        return attrs

    def _metric_context(self) -> otel_context.Context | None:
        """The active span's context, else the session's: exemplars link to a trace."""
        if trace.get_current_span().get_span_context().is_valid:
            return None  # the SDK uses the current context
        if self._current is not None:
            return trace.set_span_in_context(self._current)
        return None

    def _session_links(self) -> Sequence[Link]:
        """A link to the current session span, built once per session (every wake uses it).

        No attributes on the link: the linked span says what it is, and each
        attribute is paid for on every wake span (cleaned, then encoded).
        """
        if self._current is None:
            return ()
        if self._links[0] is not self._current:
            link = Link(self._current.get_span_context())
            self._links = (self._current, (link,))
        return self._links[1]

    # --- the RunnerObserver protocol ---
    def transition(self, t: Transition) -> None:
        if t.new is RunnerState.RECONNECTING:
            reason = (t.reason or EndReason.ERROR).value
            self._ins.add(
                c.STREAM_RECONNECTS, 1, self._attrs("reason", reason), self._metric_context()
            )
        if self._current is not None and self._current.is_recording():
            self._current.add_event(
                "state", {"pullwake.state.old": t.old.value, "pullwake.state.new": t.new.value}
            )
        self._phase = t.new
        if t.new is RunnerState.STOPPED:  # a stop: its dispatcher has stopped
            self.close()

    def session_started(self, s: SessionInfo) -> None:
        attributes: dict[str, Any] = {
            RUNNER_ID: self.runner_id,
            "pullwake.session.number": s.number,
            "pullwake.live.mode": s.mode.value,
            "pullwake.offset.start": s.start_offset,
        }
        if self._pending_backoff is not None:
            wait_s, tries, reason = self._pending_backoff
            attributes["pullwake.backoff.wait_s"] = wait_s
            attributes["pullwake.backoff.tries"] = tries
            if reason is not None:
                attributes["pullwake.backoff.after_reason"] = reason.value
            self._pending_backoff = None
        span = self._tracer.start_span(
            SESSION_SPAN,
            context=otel_context.Context(),  # a root: one trace per session
            # INTERNAL: the HTTP request inside is its own CLIENT span (runner.otel_http);
            # a CLIENT session span around it would nest client spans and leave the
            # server's span unpaired for service graphs
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=_ns(s.started_at),
        )
        self._sessions[s.number] = span
        self._current = span

    def session_connected(self, s: SessionInfo) -> None:
        span = self._sessions.get(s.number)
        if span is None:
            return
        if s.connected_at is not None:
            span.set_attribute(
                "pullwake.session.connect_s", max(0.0, s.connected_at - s.started_at)
            )
        span.add_event("connected", timestamp=_ns(s.connected_at))

    def session_ended(self, s: SessionInfo) -> None:
        span = self._sessions.pop(s.number, None)
        if self._current is span:
            self._current = None
        if span is not None:
            self._end_session_span(span, s, s.reason or EndReason.ERROR)

    def _end_session_span(self, span: Span, s: SessionInfo, reason: EndReason) -> None:
        if s.connected_at is None:
            span.update_name(CONNECT_SPAN)  # never streamed: a failed connect attempt
        span.set_attribute("pullwake.end.reason", reason.value)
        span.set_attribute("pullwake.wakes.received", s.wakes_received)
        if s.end_offset is not None:
            span.set_attribute("pullwake.offset.end", s.end_offset)
        if s.first_byte_at is not None:  # the body's first byte, not the headers'
            span.set_attribute("pullwake.session.ttfb_s", max(0.0, s.first_byte_at - s.started_at))
        if s.error:
            span.set_attribute("error.type", reason.value)
            span.set_attribute("pullwake.error", s.error[:500])
        if reason.is_failure:
            span.set_status(Status(StatusCode.ERROR, f"{reason.value}: {s.error or ''}"[:200]))
        span.end(end_time=_ns(s.ended_at))

    def detector_fired(
        self, s: SessionInfo | None, detector: str, details: Mapping[str, Any]
    ) -> None:
        # the runner reports a firing before the end of the session it ends
        span = self._sessions.get(s.number) if s is not None else self._current
        if span is None:
            return
        attributes = {_attr_key(k): _attr_value(v) for k, v in details.items()}
        span.add_event(f"detector.{detector}", {"pullwake.detector": detector, **attributes})

    def backoff_wait(self, seconds: float, tries: int, reason: EndReason | None) -> None:
        # the next session (or connect) span carries the wait: no metric of its own
        self._pending_backoff = (seconds, tries, reason)

    def heartbeat(
        self, outcome: HeartbeatOutcome, duration_s: float, error_type: HeartbeatErrorType | None
    ) -> None:
        # The runner reports the outcome just after its heartbeat span's block:
        # that span is still open here (see `span`), so it gets the outcome and
        # a failure's count carries its trace id as exemplar.  A heartbeat's
        # duration is its request's (`http.client.request.duration`, the span).
        end_here = self._heartbeat_span is not None
        if self._heartbeat_span is not None:  # reported after the span's block: usual
            span: Span = self._heartbeat_span
            self._heartbeat_span = None
        else:  # reported inside the block (or outside any heartbeat span)
            span = trace.get_current_span()
            if span is self._heartbeat_open:
                self._heartbeat_open = None  # tells `span` to end it at block exit
        span.set_attribute("pullwake.heartbeat.outcome", outcome.value)
        if outcome is HeartbeatOutcome.FAILED:
            etype = (error_type or HeartbeatErrorType.OTHER).value
            ctx = trace.set_span_in_context(span) if span.is_recording() else self._metric_context()
            self._ins.add(c.HEARTBEAT_FAILURES, 1, self._attrs("error.type", etype), ctx)
            span.set_attribute("error.type", etype)
            span.set_status(Status(StatusCode.ERROR, etype))
        if end_here:
            span.end()

    def wake(
        self, outcome: WakeOutcome, wake_id: str | None, latency_s: float | None = None
    ) -> None:
        self._wakes.wake(outcome, wake_id, latency_s)

    # Claim answers and callback requests export nothing of their own: each is a
    # request in `http.client.request.duration` (status, error type) under its
    # wake step's span, and a lost claim is `pullwake.wakes{outcome=fenced}`.
    def claim_result(self, result: ClaimResult) -> None:
        pass

    def callback_heartbeat(self, outcome: CallbackOutcome, duration_s: float) -> None:
        pass

    def completion(self, outcome: CallbackOutcome, duration_s: float) -> None:
        pass

    def span(self, name: str, attributes: Mapping[str, Any]) -> AbstractContextManager[None]:
        """A span around a unit of work; HTTP requests inside carry its traceparent."""
        wake_id = attributes.get("wake_id")
        if name in WAKE_STEPS and isinstance(wake_id, str) and wake_id:
            return self._wakes.step(name, wake_id)  # the hot path: see runner.otel_wakes
        return self._work_span(name, attributes)

    @contextlib.contextmanager
    def _work_span(self, name: str, attributes: Mapping[str, Any]) -> Iterator[None]:
        attrs = {_attr_key(k): _attr_value(v) for k, v in attributes.items()}
        attrs[RUNNER_ID] = self.runner_id
        full = name if name.startswith("pullwake.") else f"pullwake.{name}"
        links: Sequence[Link] = ()
        if not trace.get_current_span().get_span_context().is_valid:
            links = self._session_links()
        if full == HEARTBEAT_SPAN:
            if self._heartbeat_span is not None:  # its outcome never came
                self._heartbeat_span.end()
            hb = self._tracer.start_span(full, attributes=attrs, links=links)
            self._heartbeat_open = hb
            try:
                with trace.use_span(hb, end_on_exit=False):
                    yield
            except BaseException:  # cancelled mid-request (stop, cancelled run): no outcome
                self._heartbeat_open = None
                hb.end()
                raise
            if self._heartbeat_open is hb:  # outcome not reported yet: heartbeat() ends it
                self._heartbeat_span = hb
            else:
                hb.end()
            self._heartbeat_open = None
            return
        with trace.use_span(self._tracer.start_span(full, attributes=attrs, links=links), True):
            yield

    # --- the runner's HTTP requests ---
    def trace_config(self) -> aiohttp.TraceConfig:
        """A CLIENT span, `traceparent` and the duration per request (runner.otel_http)."""
        return self._http.trace_config()

    def close(self) -> None:
        """End what a stopped runner leaves open: a heartbeat, wakes in flight."""
        if self._heartbeat_span is not None:
            self._heartbeat_span.end()
            self._heartbeat_span = None
        self._wakes.close()


def instrument_runner(runner: Runner, env: Mapping[str, str] | None = None) -> Telemetry:
    """Build the runner's telemetry and attach it: observer, gauges, `/metrics`, HTTP spans.

    Raises `TelemetryConfigError` for bad `OTEL_*` values.  With
    `OTEL_SDK_DISABLED=true` nothing is attached (`/metrics` answers 404).
    """
    telemetry = build_telemetry(
        SERVICE_RUNNER,
        runner.config.runner_id,
        env=env,
        always_sample=frozenset({SESSION_SPAN, HEARTBEAT_SPAN}),
    )
    if not telemetry.enabled:
        return telemetry
    steps = (env if env is not None else os.environ).get(WAKE_STEPS_ENV, "spans").strip()
    if steps not in ("spans", "events"):
        raise TelemetryConfigError(f"{WAKE_STEPS_ENV}={steps!r}: want spans or events")
    observer = OtelRunnerObserver(
        telemetry, runner.config.runner_id, runner.snapshot, wake_step_spans=steps == "spans"
    )
    runner.observer.add(observer)
    runner.metrics = lambda: (telemetry.prometheus_text(), PROMETHEUS_CONTENT_TYPE)
    runner.trace_configs.append(observer.trace_config())
    return telemetry
