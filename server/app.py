"""`create_app(config, observer=...)`: the aiohttp application, wired up.

The control plane (runners, entities, claims: `pullwake.server.registry`)
and the embedded Durable Streams server (`pullwake.server.ds`: streams, wake
events, pull-wake subscriptions, its HTTP protocol at `/v1/stream/<path>`
and, as the agents-server proxies it, at every path not under `/_electric/`)
share one SQLite file in separate tables.  Route order matters: the
agents-server routes and ours first, DS's catch-all last.  On shutdown DS
ends every live read at once, so SIGINT/SIGTERM never waits on an open SSE
response.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from pullwake.core.protocol import LiveMode
from pullwake.server import claims, entities, runners, view
from pullwake.server.auth import principal_middleware
from pullwake.server.config import ServerConfig
from pullwake.server.ds.http import DSConfig, DSServer
from pullwake.server.ds.http import add_routes as add_ds_routes
from pullwake.server.ds.store import Appended
from pullwake.server.ds.subscriptions import SubscriptionManager
from pullwake.server.errors import Handler, error_middleware
from pullwake.server.livereads import LiveReads
from pullwake.server.observe import (
    NullServerObserver,
    SafeObserver,
    ServerObserver,
    ServerSnapshotSource,
)
from pullwake.server.registry import AsyncRegistry, Registry
from pullwake.server.state import STATE, ServerState


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@web.middleware
async def timing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Report non-streaming request durations to the observer."""
    start = time.perf_counter()
    resp = await handler(request)
    if request.query.get("live") is None:
        route = request.match_info.route.resource
        name = route.canonical.replace("{_slash}", "") if route is not None else "unmatched"
        if name.startswith("/{tail"):
            name = "stream"
        request.app[STATE].observer.request_finished(
            name, request.method, resp.status, time.perf_counter() - start
        )
    return resp


AppSetup = Callable[[web.Application], None]


def _pending_by_runner(subs: SubscriptionManager) -> Callable[[], dict[str, int]]:
    """Subscriptions with un-acked data per runner, from DS memory (any thread)."""
    last: dict[str, int] = {}

    def count() -> dict[str, int]:
        nonlocal last
        try:
            out: dict[str, int] = {}
            for s in subs.states("runner:"):
                if s.has_pending:
                    rid = runner_of_subscription(s.id)
                    out[rid] = out.get(rid, 0) + 1
            last = out
        except RuntimeError:  # DS changed its dict under a metrics thread: keep the last
            pass
        return last

    return count


def create_app(
    config: ServerConfig,
    observer: ServerObserver | None = None,
    *,
    setup: AppSetup | None = None,
) -> web.Application:
    """Build the app; the databases open here (a bad --db fails before listening).

    `setup(app)` runs before the catch-all stream route is added: the place
    to add routes (`/metrics`), middlewares (trace continuation) or
    `cleanup_ctx` entries (a meter provider's shutdown).
    """
    registry = Registry(config.db)
    dsconf = DSConfig(
        long_poll_timeout=config.long_poll_timeout,
        compat_upstream=config.compat_upstream,
        keepalive_interval=config.keepalive_interval,
        sse_rotate_seconds=None if config.compat_upstream else config.sse_rotate_seconds,
        compression=True,
    )
    dss = DSServer.open(config.db, dsconf, webhooks=True)
    live = LiveReads(config.stream_grace_seconds)
    safe = SafeObserver(observer or NullServerObserver())
    state = ServerState(
        config=config,
        registry=AsyncRegistry(registry),
        ds=dss.store,
        subs=dss.subs,
        live=live,
        observer=safe,
        snapshots=ServerSnapshotSource(registry, live, _pending_by_runner(dss.subs)),
    )
    for r in registry.all_runners():
        state.wake_streams[r.wake_stream.strip("/")] = r.id
    dss.observer = _WakeStreamReads(state)
    app = web.Application(
        middlewares=[timing_middleware, error_middleware, principal_middleware],
        client_max_size=dsconf.max_body_bytes,  # our own routes read at most MAX_BODY_BYTES
    )
    app[STATE] = state
    app.router.add_get("/healthz", healthz)
    runners.add_routes(app)
    claims.add_routes(app)
    entities.add_routes(app)
    view.add_routes(app)
    if setup is not None:
        setup(app)
    add_ds_routes(app, dss, reserved=RESERVED_ROOTS)  # last: a catch-all

    def on_append(ev: Appended) -> None:
        if ev.internal:  # a wake event DS wrote
            rid = state.wake_streams.get(ev.path)
            if rid is not None:
                safe.wake_announced(rid)

    dss.store.on_append(on_append)
    dss.subs.on_expired(
        lambda sub_id, _gen, _wake: safe.lease_expired(runner_of_subscription(sub_id))
    )

    async def close_registry(app: web.Application) -> AsyncIterator[None]:
        yield
        state.registry.close()

    app.cleanup_ctx.append(close_registry)
    app.on_response_prepare.append(_cors)
    return app


CORS = {
    "access-control-allow-headers": "content-type, authorization, electric-claim-token, "
    "electric-owner-entity, electric-principal, ngrok-skip-browser-warning",
    "access-control-allow-methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
    "access-control-allow-origin": "*",
    "access-control-expose-headers": "*",
}


async def _cors(request: web.Request, response: web.StreamResponse) -> None:
    """The agents-server's CORS headers on its own routes (DS sets them on streams)."""
    if request.path.startswith("/_electric"):
        for k, v in CORS.items():
            response.headers.setdefault(k, v)


def runner_of_subscription(sub_id: str) -> str:
    """`runner:<id>:<hash>` -> `<id>` (ids may contain `:`)."""
    return sub_id[len("runner:") :].rsplit(":", 1)[0] if sub_id.startswith("runner:") else ""


RESERVED_ROOTS = ("_electric", "_pullwake", "metrics", "healthz", "readyz")


class _WakeStreamReads:
    """DS's live-read hooks -> the server view of runners' wake streams (+ metrics)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def _runner(self, path: str) -> str | None:
        return self.state.wake_streams.get(path.strip("/"))

    def live_opened(self, path: str, mode: str) -> None:
        rid = self._runner(path)
        if rid is not None and mode in LiveMode._value2member_map_:
            self.state.live.opened(rid, LiveMode(mode))
            self.state.observer.live_read_opened(rid, LiveMode(mode))

    def live_closed(self, path: str, mode: str) -> None:
        rid = self._runner(path)
        if rid is not None and mode in LiveMode._value2member_map_:
            self.state.live.closed(rid, LiveMode(mode))
            self.state.observer.live_read_closed(rid, LiveMode(mode))

    def live_touched(self, path: str) -> None:
        rid = self._runner(path)
        if rid is not None:
            self.state.live.touched(rid)

    def caught_up(self, path: str) -> None:
        self.live_touched(path)


def snapshot_source(app: web.Application) -> ServerSnapshotSource:
    """Where telemetry reads gauges (`.snapshot()`, thread-safe)."""
    return app[STATE].snapshots
