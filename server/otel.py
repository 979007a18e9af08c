"""OpenTelemetry for the server: catalog instruments, `/metrics`, server spans.

Attached through the server's observer seam (`pullwake.server.observe`), so the
server core never imports OpenTelemetry.  Gauges (open streams, pending
subscriptions, active claims, lease remaining, the "client says connected but
no open stream" mismatch) are read from a `ServerSnapshot` at collection time; counters and
the request histogram come from observer calls.  A middleware continues the
runner's W3C `traceparent` with a server span per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pullwake.core import catalog as c
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
        self._ins.record(c.SERVER_REQUEST_DURATION, duration_s, {})


# --- HTTP: /metrics and server spans ------------------------------------------------
def metrics_handler(telemetry: Telemetry) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`GET /metrics`: the Prometheus text of this server's provider."""

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(
            body=telemetry.prometheus_text(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE}
        )

    return handle


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def tracing_middleware(telemetry: Telemetry) -> Middleware:
    """Continue an incoming `traceparent` with one SERVER span per request.

    Live reads keep their span open for the whole read; `/metrics` and the
    health probe are not traced (scrapes would drown the traces).
    """
    tracer = telemetry.tracer()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/metrics", "/healthz", "/readyz"):
            return await handler(request)
        resource = request.match_info.route.resource
        route = route_name(resource.canonical) if resource is not None else request.path
        parent = _PROPAGATOR.extract(dict(request.headers))
        attributes: dict[str, str | int] = {
            "http.request.method": request.method,
            "http.route": route,
            "url.path": request.path,
        }
        rid = request.match_info.get("runner_id")
        if rid:
            attributes[RUNNER_ID] = rid
        live = request.query.get("live")
        if live:
            attributes["pullwake.live.mode"] = live
        with tracer.start_as_current_span(
            f"{request.method} {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                _finish(span, exc.status)
                raise
            except asyncio.CancelledError:
                span.set_attribute("pullwake.cancelled", True)  # client went away: no error
                raise
            except BaseException as exc:
                span.record_exception(exc)
                _finish(span, 500)
                raise
            _finish(span, response.status)
            return response

    return middleware


def route_name(canonical: str) -> str:
    """A route's name for spans: without the optional trailing slash (`{_slash}`)."""
    return canonical.replace("{_slash}", "")


def _finish(span: trace.Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


def instrument_app(app: web.Application, telemetry: Telemetry) -> None:
    """Add the tracing middleware (outermost: it sees final statuses) and `GET /metrics`.

    Call before the app starts.
    """
    if telemetry.enabled:
        app.middlewares.insert(0, tracing_middleware(telemetry))
    app.router.add_get("/metrics", metrics_handler(telemetry))


def create_instrumented_app(config: ServerConfig) -> tuple[web.Application, Telemetry]:
    """`create_app` with telemetry attached: what `pullwake server` runs.

    Raises `TelemetryConfigError` for bad `OTEL_*` values.
    """
    from pullwake.server.app import create_app, snapshot_source

    telemetry = build_telemetry(SERVICE_SERVER, f"{config.host}:{config.port}")
    observer = OtelServerObserver(telemetry) if telemetry.enabled else None
    app = create_app(config, observer=observer)
    if observer is not None:
        observer.bind(snapshot_source(app).snapshot)
    instrument_app(app, telemetry)
    return app, telemetry
