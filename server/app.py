"""`create_app(config, observer=...)`: the aiohttp application, wired up.

Route order matters: `/healthz`, the runners API and claims first; the
catch-all stream route last (any other path may be a wake stream).  On
shutdown every live read is told to end at once (`Notifier.close_all`), so
SIGINT/SIGTERM never waits on an open SSE response.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from pullwake.core.protocol import MAX_BODY_BYTES
from pullwake.server import api, claims, streams
from pullwake.server.config import ServerConfig
from pullwake.server.errors import Handler, error_middleware
from pullwake.server.live import LiveReads, Notifier
from pullwake.server.observe import (
    NullServerObserver,
    SafeObserver,
    ServerObserver,
    ServerSnapshotSource,
)
from pullwake.server.state import STATE, ServerState
from pullwake.server.store import AsyncStore, Store

LIVE_READ = "pullwake_live_read"


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@web.middleware
async def timing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Report non-streaming request durations to the observer."""
    start = time.perf_counter()
    resp = await handler(request)
    if request.query.get("live") is None:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        if name.startswith("/{tail"):
            name = "stream"
        request.app[STATE].observer.request_finished(
            name, request.method, resp.status, time.perf_counter() - start
        )
    return resp


AppSetup = Callable[[web.Application], None]


def create_app(
    config: ServerConfig,
    observer: ServerObserver | None = None,
    *,
    setup: AppSetup | None = None,
    store: Store | None = None,
) -> web.Application:
    """Build the app; the store opens here (a bad --db fails before listening).

    `setup(app)` runs before the catch-all stream route is added: the place
    to add routes (`/metrics`), middlewares (trace continuation) or
    `cleanup_ctx` entries (a meter provider's shutdown).
    """
    store = store or Store(config.db, retain=config.retain)
    live = LiveReads(config.stream_grace_seconds)
    state = ServerState(
        config=config,
        db=AsyncStore(store),
        live=live,
        notifier=Notifier(),
        observer=SafeObserver(observer or NullServerObserver()),
        snapshots=ServerSnapshotSource(store, live),
    )
    app = web.Application(
        middlewares=[timing_middleware, error_middleware], client_max_size=MAX_BODY_BYTES
    )
    app[STATE] = state
    app.router.add_get("/healthz", healthz)
    api.add_routes(app)
    claims.add_routes(app)
    if setup is not None:
        setup(app)
    streams.add_routes(app)

    async def end_live_reads(app: web.Application) -> None:
        app[STATE].notifier.close_all()

    async def close_store(app: web.Application) -> AsyncIterator[None]:
        yield
        app[STATE].db.close()

    app.on_shutdown.append(end_live_reads)
    app.cleanup_ctx.append(close_store)
    app.cleanup_ctx.append(claims.claim_sweeper)
    return app


def snapshot_source(app: web.Application) -> ServerSnapshotSource:
    """Where telemetry reads gauges (`.snapshot()`, thread-safe)."""
    return app[STATE].snapshots
