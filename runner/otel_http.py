"""HTTP semantic conventions on every runner request: CLIENT spans, request durations.

One aiohttp `TraceConfig` on both of the runner's sessions (stream GET, tail
probe, register, heartbeat, claim, lease heartbeats and the completion
callback).  A `TraceConfig` and not an aiohttp request class: only its signals
see a request that never got a connection (refused, timed out) - a request
class is built but never sent.  Why not
`opentelemetry-instrumentation-aiohttp-client`: see `pullwake.core.http_semconv`
(old attribute names by default, global providers, no `runner.id`, no session
parent).

Per request: a CLIENT span named after the method (`GET`, `POST`: the
conventions' name while `url.template` is experimental), a child of the active
span (a heartbeat, a wake's claim/complete step) or else of the current stream
session's span; `traceparent` names this span, so the server's SERVER span is
its child (service graphs pair them).  Attributes: `http.request.method`,
`url.full` (no credentials, query values outside the protocol's parameters
redacted; headers - the claim token's `Authorization` - are never recorded),
`server.address`, `server.port`, `http.response.status_code`, `error.type`;
status ERROR from 400 on or on an exception.  The span ends and the duration
is measured at the response headers: a stream's span is its connect, the
session span covers its life.

A request cancelled by a deadline (an `asyncio.timeout` around it, which
absorbs the cancel) is a `TimeoutError`; any other cancellation (a stop, a
reconnect) ends the span without a measurement (`pullwake.cancelled`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping
from types import SimpleNamespace
from typing import Final

import aiohttp
import yarl
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pullwake.core import catalog as c
from pullwake.core import http_semconv as hs
from pullwake.core.catalog import RUNNER_ID
from pullwake.core.telemetry import Instruments

__all__ = ["HttpClientTelemetry"]

log = logging.getLogger("pullwake.runner.otel")
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_MAX_ATTR_SETS: Final = 256  # cached metric attribute sets (statuses x errors: a few)

# (method, address, port, status, error.type) -> metric attributes, catalog-checked
_Key = tuple[str, str, int, int | None, str | None]
_Ended = tuple[float, int]  # (perf_counter, unix ns) when the request ended


class HttpClientTelemetry:
    """CLIENT spans, `traceparent` and `http.client.request.duration` for aiohttp requests."""

    def __init__(
        self,
        tracer: Tracer,
        instruments: Instruments,
        runner_id: str,
        session_span: Callable[[], Span | None],
    ) -> None:
        self._tracer = tracer
        self._ins = instruments
        self._runner_id = runner_id
        self._session_span = session_span
        self._histogram = instruments.checked(
            c.HTTP_CLIENT_DURATION, self._check_keys(("GET", "", 0, 200, "500"))
        )
        self._attrs: dict[_Key, Mapping[str, str | int]] = {}

    def _check_keys(self, key: _Key) -> dict[str, str]:
        """The attribute keys of a measurement as strings, for the catalog's check."""
        return {k: str(v) for k, v in self._metric_attrs(key).items()}

    def _metric_attrs(self, key: _Key) -> dict[str, str | int]:
        method, address, port, status, error = key
        attrs: dict[str, str | int] = {
            RUNNER_ID: self._runner_id,
            hs.HTTP_REQUEST_METHOD: method,
            hs.SERVER_ADDRESS: address,
            hs.SERVER_PORT: port,
        }
        if status is not None:
            attrs[hs.HTTP_RESPONSE_STATUS_CODE] = status
        if error is not None:
            attrs[hs.ERROR_TYPE] = error
        return attrs

    def _attributes(self, key: _Key) -> Mapping[str, str | int]:
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = self._metric_attrs(key)
            self._ins.check(c.HTTP_CLIENT_DURATION, self._check_keys(key))
            if len(self._attrs) < _MAX_ATTR_SETS:
                self._attrs[key] = attrs
        return attrs

    # --- the request's life ---
    def start(self, method: str, url: yarl.URL, headers: MutableMapping[str, str]) -> _Request:
        """Start the CLIENT span and put its `traceparent` into `headers`."""
        parent: otel_context.Context | None = None
        if not trace.get_current_span().get_span_context().is_valid:
            session = self._session_span()
            if session is not None:
                parent = trace.set_span_in_context(session)
        name = hs.method_of(method)
        attributes: dict[str, str | int] = {
            hs.HTTP_REQUEST_METHOD: name,
            hs.URL_FULL: hs.redacted_url(url),
            hs.SERVER_ADDRESS: url.host or "",
            hs.SERVER_PORT: url.port or 0,
        }
        if name == hs.OTHER:
            attributes[hs.HTTP_REQUEST_METHOD_ORIGINAL] = method
            name = "HTTP"
        span = self._tracer.start_span(
            name, context=parent, kind=SpanKind.CLIENT, attributes=attributes
        )
        _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
        key = (str(attributes[hs.HTTP_REQUEST_METHOD]), url.host or "", url.port or 0)
        return _Request(span, key, time.perf_counter())

    def answered(self, req: _Request, status: int) -> None:
        """Response headers are in: the request's outcome is its status."""
        span = req.span
        span.set_attribute(hs.HTTP_RESPONSE_STATUS_CODE, status)
        error = hs.client_error_type(status)
        if error is not None:
            span.set_attribute(hs.ERROR_TYPE, error)
            span.set_status(Status(StatusCode.ERROR))
        self._finish(req, status, error)

    def failed(self, req: _Request, exc: BaseException, deadline: object = None) -> None:
        """No answer: the exception's class is the error.

        A cancellation is decided once the cancel has run its course: absorbed by an
        `asyncio.timeout` around the request (the task goes on: a timeout, whichever
        of the nested deadlines fired) or not (a stop: no outcome).  A `deadline`
        hint (`trace_request_ctx`) that has expired settles it at once.
        """
        ended = (time.perf_counter(), time.time_ns())
        if not isinstance(exc, asyncio.CancelledError):
            self._failed(req, exc, ended)
        elif isinstance(deadline, asyncio.Timeout) and deadline.expired():
            self._failed(req, TimeoutError("the request's deadline passed"), ended)
        else:
            task = asyncio.current_task()
            if task is None:
                self._cancelled(req, ended)
            else:  # after this task step: the cancel has reached whatever absorbs it
                task.get_loop().call_soon(self._settle_cancel, req, task, ended)

    def _settle_cancel(self, req: _Request, task: asyncio.Task[object], ended: _Ended) -> None:
        try:
            stopped = task.cancelled() if task.done() else task.cancelling() > 0
            if stopped:
                self._cancelled(req, ended)
            else:
                self._failed(req, TimeoutError("the request was cancelled by a deadline"), ended)
        except Exception:  # telemetry never hurts the runner
            log.warning("HTTP client span not ended", exc_info=True)

    def _cancelled(self, req: _Request, ended: _Ended) -> None:
        req.span.set_attribute("pullwake.cancelled", True)  # a stop: not an outcome
        req.span.end(end_time=ended[1])

    def _failed(self, req: _Request, exc: BaseException, ended: _Ended) -> None:
        span = req.span
        error = hs.exception_type(exc)
        span.set_attribute(hs.ERROR_TYPE, error)
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{error}: {exc}"[:200]))
        self._finish(req, None, error, ended)

    def _finish(
        self, req: _Request, status: int | None, error: str | None, ended: _Ended | None = None
    ) -> None:
        ended = ended or (time.perf_counter(), time.time_ns())
        method, address, port = req.key
        attrs = self._attributes((method, address, port, status, error))
        ctx = trace.set_span_in_context(req.span)
        self._histogram.record(ended[0] - req.started, attrs, context=ctx)
        req.span.end(end_time=ended[1])

    # --- aiohttp ---
    def trace_config(self) -> aiohttp.TraceConfig:
        """The aiohttp hooks: start at the request, finish at its headers or exception."""
        config = aiohttp.TraceConfig()

        async def on_request_start(
            _session: aiohttp.ClientSession,
            ctx: SimpleNamespace,
            params: aiohttp.TraceRequestStartParams,
        ) -> None:
            try:
                ctx.pullwake_request = self.start(params.method, params.url, params.headers)
            except Exception:  # telemetry never fails a request
                log.warning("HTTP client span not started", exc_info=True)

        async def on_request_end(
            _session: aiohttp.ClientSession,
            ctx: SimpleNamespace,
            params: aiohttp.TraceRequestEndParams,
        ) -> None:
            req = getattr(ctx, "pullwake_request", None)
            if req is not None:
                try:
                    self.answered(req, params.response.status)
                except Exception:
                    log.warning("HTTP client span not ended", exc_info=True)

        async def on_request_exception(
            _session: aiohttp.ClientSession,
            ctx: SimpleNamespace,
            params: aiohttp.TraceRequestExceptionParams,
        ) -> None:
            req = getattr(ctx, "pullwake_request", None)
            if req is not None:
                try:
                    self.failed(req, params.exception, ctx.trace_request_ctx)
                except Exception:
                    log.warning("HTTP client span not ended", exc_info=True)

        config.on_request_start.append(on_request_start)
        config.on_request_end.append(on_request_end)
        config.on_request_exception.append(on_request_exception)
        return config


class _Request:
    """One request in flight: its span, metric key and start (perf_counter)."""

    __slots__ = ("key", "span", "started")

    def __init__(self, span: Span, key: tuple[str, str, int], started: float) -> None:
        self.span = span
        self.key = key
        self.started = started
