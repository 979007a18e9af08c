"""The server's own view of a runner's wake stream: is it being read right now?

Not part of upstream's API (its health has no server-side view), so it lives
at a pullwake-only endpoint, `GET /_pullwake/runners/:id/stream`, and feeds
the `pullwake.server.stream.mismatch` gauge (diagnostics say
`stream_connected` but nobody has been reading the wake stream for longer
than the grace period: the seed bug, seen from the server).  The counting
itself is `pullwake.server.livereads`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pullwake.server.auth import check_owner, principal_of
from pullwake.server.errors import json_response
from pullwake.server.health import liveness_status
from pullwake.server.livereads import ServerView, stream_mismatch
from pullwake.server.registry import Registry, iso, now_ms
from pullwake.server.runners import ACCESS, require_runner
from pullwake.server.state import state_of

PREFIX = "/_pullwake/runners"


def view_json(view: ServerView, mismatch: bool) -> dict[str, Any]:
    def ts(t: float | None) -> str | None:
        return None if t is None else iso(int(t * 1000))

    return {
        "stream_open": view.stream_open,
        "stream_open_since": ts(view.stream_open_since),
        "last_stream_read_at": ts(view.last_stream_read_at),
        "open_reads": {m.value: n for m, n in view.open_reads.items()},
        "stream_mismatch": mismatch,
    }


async def stream_view(request: web.Request) -> web.Response:
    """`GET /_pullwake/runners/:id/stream` (owner only, like upstream's runner routes)."""
    st = state_of(request)
    r = await require_runner(st, request.match_info["runner_id"])
    check_owner(principal_of(request), r.owner_principal, ACCESS)
    rt = await st.registry.call(Registry.get_runtime, r.id)
    lease = rt.lease_expires_at if rt else None
    connected = ((rt.diagnostics if rt else None) or {}).get("stream_connected")
    v = st.live.view(r.id)
    mismatch = stream_mismatch(
        connected if isinstance(connected, bool) else None,
        liveness_status(r.admin_status, lease, now_ms()),
        v,
        st.live.grace,
    )
    body = {"runner_id": r.id, "wake_stream": r.wake_stream, **view_json(v, mismatch)}
    return json_response(body)


def add_routes(app: web.Application) -> None:
    app.router.add_get(PREFIX + "/{runner_id}/stream", stream_view, allow_head=False)
