"""Each wake's trace and metrics: the runner's telemetry hot path.

Split from `runner.otel` because this part runs several times per wake (at
100 wakes/s, hundreds of calls a second on the event loop) and is written
for cost: attribute dicts are built and checked against the catalog once
per closed-enum value, `pullwake.wakes` is a dict increment read by an
observable counter at collection time (an SDK measurement goes through
every metric reader: the dearest call here after starting a span), the
session link is built once per session, and a step is a small class-based
context manager instead of nested generators.

Shape of a wake's trace: one root `pullwake.wake` span (runner id, wake id,
link to the stream session that delivered it) with `pullwake.wake.claim`,
`.handle` and `.complete` as children - or, with step spans off, those
steps as `<step>.start`/`<step>.end` events on the root (one span a wake).
The children carry no attributes of their own: the root has them, and every
span already carries the runner id as `service.instance.id`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, Status, StatusCode, Tracer

from pullwake.core import catalog as c
from pullwake.core.catalog import RUNNER_ID, Metric
from pullwake.core.protocol import WakeOutcome
from pullwake.core.telemetry import Instruments

WAKE_SPAN: Final = c.SPAN_WAKE
WAKE_STEPS: Final = frozenset({"claim", "handle", "complete"})
_STEP_NAMES: Final = {s: f"{WAKE_SPAN}.{s}" for s in WAKE_STEPS}
_STEP_EVENTS: Final = {s: (f"{s}.start", f"{s}.end") for s in WAKE_STEPS}
_TERMINAL: Final = frozenset(
    {WakeOutcome.SKIPPED, WakeOutcome.FAILED, WakeOutcome.DUPLICATE, WakeOutcome.FENCED}
)
MAX_OPEN_WAKES: Final = 1024  # wake spans whose end never came are ended beyond this


class WakeTraces:
    """Wake spans (bounded map wake id -> open root span) and the wake metrics."""

    def __init__(
        self,
        tracer: Tracer,
        instruments: Instruments,
        runner_id: str,
        session_links: Callable[[], Sequence[Link]],
        *,
        step_spans: bool = True,
    ) -> None:
        self.step_spans = step_spans
        self._tracer = tracer
        self._ins = instruments
        self._runner_id = runner_id
        self._session_links = session_links
        self._open: OrderedDict[str, Span] = OrderedDict()
        self._counts: dict[WakeOutcome, int] = {}
        self._count_attrs = {
            o: self._catalog_attrs(c.WAKES, {RUNNER_ID: runner_id, "outcome": o.value})
            for o in WakeOutcome
        }
        rid = {RUNNER_ID: runner_id}
        self._latency: tuple[Any, dict[str, str]] = (self._ins.checked(c.WAKE_LATENCY, rid), rid)

    def _catalog_attrs(self, m: Metric, attrs: dict[str, str]) -> dict[str, str]:
        self._ins.check(m, attrs)
        return attrs

    def counts(self) -> Iterable[tuple[float, Mapping[str, str]]]:
        """`pullwake.wakes` totals for its observable counter (collection time)."""
        return [(float(n), self._count_attrs[o]) for o, n in list(self._counts.items())]

    # --- metrics ---
    def wake(self, outcome: WakeOutcome, wake_id: str | None, latency_s: float | None) -> None:
        # no exemplar for the count: the latency carries the wake's trace
        self._counts[outcome] = self._counts.get(outcome, 0) + 1
        if latency_s is not None:
            span = self._open.get(wake_id) if wake_id is not None else None
            ctx = trace.set_span_in_context(span) if span is not None else None
            histogram, rid = self._latency
            histogram.record(latency_s, rid, context=ctx)
        if wake_id is None:
            return
        if outcome is WakeOutcome.RECEIVED:
            self.root(wake_id)
        elif outcome in _TERMINAL:
            span = self._open.pop(wake_id, None)
            if span is not None:
                span.set_attribute("pullwake.wake.outcome", outcome.value)
                if outcome in (WakeOutcome.FAILED, WakeOutcome.FENCED):
                    span.set_status(Status(StatusCode.ERROR, "failed"))
                span.end()
        elif outcome is WakeOutcome.HANDLED:
            span = self._open.get(wake_id)
            if span is not None:
                span.set_attribute("pullwake.wake.outcome", outcome.value)

    # --- spans ---
    def root(self, wake_id: str) -> Span:
        """The wake's root span, started on first sight (received, or a step)."""
        span = self._open.get(wake_id)
        if span is None:
            span = self._tracer.start_span(
                WAKE_SPAN,
                context=otel_context.Context(),  # a root: one trace per wake
                attributes={RUNNER_ID: self._runner_id, "pullwake.wake.id": wake_id},
                links=self._session_links(),
            )
            self._open[wake_id] = span
            while len(self._open) > MAX_OPEN_WAKES:
                _, stale = self._open.popitem(last=False)
                stale.set_attribute("pullwake.wake.abandoned", True)
                stale.end()
        return span

    def step(self, name: str, wake_id: str) -> _Step:
        """Context manager for claim/handle/complete; `complete` ends the wake's span."""
        return _Step(self, name, wake_id)

    def end(self, wake_id: str) -> None:
        span = self._open.pop(wake_id, None)
        if span is not None:
            span.end()

    def close(self) -> None:
        """End the spans of wakes still in flight (the runner stopped)."""
        while self._open:
            _, span = self._open.popitem(last=False)
            span.set_attribute("pullwake.wake.abandoned", True)
            span.end()


class _Step:
    """One wake step as the active span (so its HTTP request carries traceparent).

    An exception escaping the step is recorded on it with ERROR status, as
    `trace.use_span` would; a cancellation is not an error.
    """

    __slots__ = ("_name", "_owner", "_span", "_token", "_wake_id")

    def __init__(self, owner: WakeTraces, name: str, wake_id: str) -> None:
        self._owner = owner
        self._name = name
        self._wake_id = wake_id
        self._span: Span | None = None
        self._token: object = None

    def __enter__(self) -> None:
        owner = self._owner
        wake = owner.root(self._wake_id)
        if owner.step_spans:
            span = owner._tracer.start_span(
                _STEP_NAMES[self._name], context=trace.set_span_in_context(wake)
            )
        else:
            wake.add_event(_STEP_EVENTS[self._name][0])
            span = wake
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]
        span = self._span
        assert span is not None
        if isinstance(exc, Exception) and span.is_recording():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        if self._owner.step_spans:
            span.end()
        else:
            span.add_event(_STEP_EVENTS[self._name][1])
        if self._name == "complete":
            self._owner.end(self._wake_id)
