"""OpenTelemetry for the server: catalog instruments, `/metrics`, server spans.

Attached through the server's observer seam (`pullwake.server.observe`), so the
server core never imports OpenTelemetry.  Gauges (open streams, pending
subscriptions, active claims, lease remaining, the "client says connected but
no open stream" mismatch) are read from a `ServerSnapshot` at collection time; counters
come from observer calls.  A middleware (`http_middleware`) continues the runner's W3C
`traceparent` with a SERVER span per request and times it into
`http.server.request.duration`, both by the HTTP semantic conventions
(`pullwake.core.http_semconv` says why not the aiohttp server instrumentation).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pullwake.core import catalog as c
from pullwake.core import http_semconv as hs
from pullwake.core.catalog import RUNNER_ID, Component
from pullwake.core.instruments import CachedSnapshot
from pullwake.core.protocol import ClaimOutcome, CompletionOutcome, LiveMode
from pullwake.core.telemetry import (
    PROMETHEUS_CONTENT_TYPE,
    SERVICE_SERVER,
    Instruments,
    Telemetry,
    build_telemetry,
)
from pullwake.server.config import ServerConfig
from pullwake.server.observe import ServerSnapshot

_PROPAGATOR: Final = TraceContextTextMapPropagator()

Gauge = Iterable[tuple[float, Mapping[str, str]]]


class OtelServerObserver:
    """A `ServerObserver` recording into catalog instruments.

    `bind(snapshot)` hands it the app's snapshot callable once the store
    exists; until then the gauges report nothing.
    """

    def __init__(
        self, telemetry: Telemetry, snapshot: Callable[[], ServerSnapshot] | None = None
    ) -> None:
        self.telemetry = telemetry
        self._snapshot = CachedSnapshot(snapshot)
        self._ins = Instruments(
            telemetry.meter(),
            Component.SERVER,
            {
                c.SERVER_STREAMS_OPEN.name: self._streams_open,
                c.SERVER_SUBSCRIPTIONS_PENDING.name: self._pending,
                c.SERVER_CLAIMS_ACTIVE.name: self._active_claims,
                c.SERVER_LEASE_REMAINING.name: self._lease,
                c.SERVER_STREAM_MISMATCH.name: self._mismatch,
            },
        )

    def bind(self, snapshot: Callable[[], ServerSnapshot]) -> None:
        self._snapshot.source = snapshot

    # --- gauges (called on a metric reader's thread or the /metrics handler) ---
    def _streams_open(self) -> Gauge:
        snap = self._snapshot.get()
        for r in snap.runners if snap else ():
            for mode in LiveMode:
                yield (
                    float(r.open_streams.get(mode, 0)),
                    {RUNNER_ID: r.runner_id, "live.mode": mode},
                )

    def _pending(self) -> Gauge:
        snap = self._snapshot.get()
        return (
            [(float(r.pending_subscriptions), {RUNNER_ID: r.runner_id}) for r in snap.runners]
            if snap
            else []
        )

    def _active_claims(self) -> Gauge:
        snap = self._snapshot.get()
        return (
            [(float(r.active_claims), {RUNNER_ID: r.runner_id}) for r in snap.runners]
            if snap
            else []
        )

    def _lease(self) -> Gauge:
        snap = self._snapshot.get()
        return (
            [
                (r.lease_remaining_s, {RUNNER_ID: r.runner_id})
                for r in snap.runners
                if r.lease_remaining_s is not None
            ]
            if snap
            else []
        )

    def _mismatch(self) -> Gauge:
        snap = self._snapshot.get()
        return (
            [(1.0 if r.stream_mismatch else 0.0, {RUNNER_ID: r.runner_id}) for r in snap.runners]
            if snap
            else []
        )

    # --- the ServerObserver protocol ---
    def heartbeat_accepted(self, runner_id: str) -> None:
        self._ins.add(c.SERVER_HEARTBEATS, 1, {RUNNER_ID: runner_id})

    def message_sent(self, runner_id: str) -> None:
        self._ins.add(c.SERVER_MESSAGES, 1, {RUNNER_ID: runner_id})

    def wake_announced(self, runner_id: str) -> None:
        self._ins.add(c.SERVER_WAKES_ANNOUNCED, 1, {RUNNER_ID: runner_id})

    def claim_answered(self, runner_id: str, outcome: ClaimOutcome) -> None:
        self._ins.add(c.SERVER_CLAIMS, 1, {RUNNER_ID: runner_id, "outcome": outcome.value})

    def completion(self, runner_id: str, outcome: CompletionOutcome) -> None:
        self._ins.add(c.SERVER_COMPLETIONS, 1, {RUNNER_ID: runner_id, "outcome": outcome.value})

    def lease_expired(self, runner_id: str) -> None:
        self._ins.add(c.SERVER_LEASE_EXPIRIES, 1, {RUNNER_ID: runner_id})

    def live_read_opened(self, runner_id: str, mode: LiveMode) -> None:
        pass  # the open-streams gauge reads the snapshot, the authoritative count

    def live_read_closed(self, runner_id: str, mode: LiveMode) -> None:
        pass

    def request_finished(self, route: str, method: str, status: int, duration_s: float) -> None:
        pass  # timed with the conventions' attributes by `http_middleware` instead

    @property
    def instruments(self) -> Instruments:
        """The server's catalog instruments (`http_middleware` times requests into them)."""
        return self._ins


# --- HTTP: /metrics and server spans ------------------------------------------------
def metrics_handler(telemetry: Telemetry) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`GET /metrics`: the Prometheus text of this server's provider."""

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(
            body=telemetry.prometheus_text(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE}
        )

    return handle


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_UNTRACED: Final = frozenset({"/metrics", "/healthz", "/readyz"})


def http_middleware(telemetry: Telemetry, instruments: Instruments | None = None) -> Middleware:
    """One SERVER span per request (continuing an incoming `traceparent`) and
    `http.server.request.duration`, by the HTTP semantic conventions.

    Span name `{method} {route}` with the route template (`http.route`), never
    the raw path; a request no route matched is named `{method}` alone.  ERROR
    only from 500 on (a 4xx is the client's mistake) or on an exception.  Live
    reads keep their span open for the whole read and are not timed (their life
    is the stream's, not a request's); `/metrics` and the health probes are
    neither traced nor timed (scrapes would drown both).  A request whose client
    went away (cancelled) is marked `pullwake.cancelled` and not timed.
    """
    tracer = telemetry.tracer()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _UNTRACED:
            return await handler(request)
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = route_name(resource.canonical) if resource is not None else None
        method = hs.method_of(request.method)
        parent = _PROPAGATOR.extract(dict(request.headers))
        attributes: dict[str, str | int] = {
            hs.HTTP_REQUEST_METHOD: method,
            hs.URL_SCHEME: request.scheme,
            hs.URL_PATH: request.path,
        }
        if method == hs.OTHER:
            attributes[hs.HTTP_REQUEST_METHOD_ORIGINAL] = request.method
        _recommended(request, attributes)
        if request.query_string:
            attributes[hs.URL_QUERY] = hs.redacted_query(request.rel_url)
        if route is not None:
            attributes[hs.HTTP_ROUTE] = route
        rid = request.match_info.get("runner_id")
        if rid:
            attributes[RUNNER_ID] = rid
        live = request.query.get("live")
        if live:
            attributes["pullwake.live.mode"] = live
        verb = "HTTP" if method == hs.OTHER else method  # the conventions' name for _OTHER
        name = f"{verb} {route}" if route else verb
        with tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:

            def finish(status: int, error: str | None) -> None:
                _finish(span, status, error)
                if instruments is not None and not live:
                    _measure(instruments, started, attributes, status, error)

            try:
                response = await handler(request)
            except web.HTTPException as exc:
                finish(exc.status, hs.server_error_type(exc.status))
                raise
            except asyncio.CancelledError:
                span.set_attribute("pullwake.cancelled", True)  # client went away: no error
                raise
            except BaseException as exc:
                span.record_exception(exc)
                finish(500, hs.exception_type(exc))
                raise
            finish(response.status, hs.server_error_type(response.status))
            return response

    return middleware


def _recommended(request: web.Request, attributes: dict[str, str | int]) -> None:
    """The conventions' recommended SERVER span attributes (spans only, never metrics)."""
    url = request.url
    if url.host:
        attributes[hs.SERVER_ADDRESS] = url.host
    if url.port:
        attributes[hs.SERVER_PORT] = url.port
    if request.remote:
        attributes[hs.CLIENT_ADDRESS] = request.remote
    attributes[hs.NETWORK_PROTOCOL_VERSION] = f"{request.version.major}.{request.version.minor}"
    agent = request.headers.get("User-Agent")
    if agent:
        attributes[hs.USER_AGENT_ORIGINAL] = agent[:256]


def _measure(
    instruments: Instruments,
    started: float,
    span_attributes: Mapping[str, str | int],
    status: int,
    error: str | None,
) -> None:
    attrs: dict[str, str | int] = {
        k: span_attributes[k]
        for k in (hs.HTTP_REQUEST_METHOD, hs.URL_SCHEME, hs.HTTP_ROUTE)
        if k in span_attributes
    }
    attrs[hs.HTTP_RESPONSE_STATUS_CODE] = status
    if error is not None:
        attrs[hs.ERROR_TYPE] = error
    instruments.checked(c.HTTP_SERVER_DURATION, {k: str(v) for k, v in attrs.items()}).record(
        time.perf_counter() - started, attrs
    )


def route_name(canonical: str) -> str:
    """A route's template for spans and `http.route`: without the optional trailing
    slash (`{_slash}`)."""
    return canonical.replace("{_slash}", "")


def _finish(span: trace.Span, status: int, error: str | None) -> None:
    span.set_attribute(hs.HTTP_RESPONSE_STATUS_CODE, status)
    if error is not None:
        span.set_attribute(hs.ERROR_TYPE, error)
        span.set_status(Status(StatusCode.ERROR))


def instrument_app(
    app: web.Application, telemetry: Telemetry, observer: OtelServerObserver | None = None
) -> None:
    """Add the HTTP middleware (outermost: it sees final statuses) and `GET /metrics`.

    Requests are timed into `observer`'s instruments (without one: spans only).
    Call before the app starts.
    """
    if telemetry.enabled:
        instruments = observer.instruments if observer is not None else None
        app.middlewares.insert(0, http_middleware(telemetry, instruments))
    app.router.add_get("/metrics", metrics_handler(telemetry))


def create_instrumented_app(config: ServerConfig) -> tuple[web.Application, Telemetry]:
    """`create_app` with telemetry attached: what `pullwake server` runs.

    Raises `TelemetryConfigError` for bad `OTEL_*` values.
    """
    from pullwake.server.app import create_app, snapshot_source

    # service.instance.id: a uuid4 per process (host:port is not unique: 0.0.0.0:4437)
    telemetry = build_telemetry(SERVICE_SERVER)
    observer = OtelServerObserver(telemetry) if telemetry.enabled else None
    app = create_app(config, observer=observer)
    if observer is not None:
        observer.bind(snapshot_source(app).snapshot)
    instrument_app(app, telemetry, observer)
    return app, telemetry
