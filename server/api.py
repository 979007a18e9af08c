"""The runners API under `/_electric/runners`: registry, leases, health, publish.

Claims live in `pullwake.server.claims`, stream reads in `pullwake.server.streams`.
Every handler authenticates first, then validates, then touches the store;
a rejected request changes nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from pullwake.core.protocol import (
    OFFSET_NOW,
    OFFSET_START,
    RUNNERS_PREFIX,
    ErrorCode,
    parse_offset,
    wake_stream_path,
)
from pullwake.server import claimstore, validate
from pullwake.server.auth import authenticate, check_owner
from pullwake.server.errors import ApiError, bad_request, not_found
from pullwake.server.health import derive_health, liveness_status, stream_mismatch
from pullwake.server.live import ServerView
from pullwake.server.records import NotOwner, Published, Runner, StreamTaken, iso, now_ms
from pullwake.server.state import ServerState, state_of
from pullwake.server.store import Store

ADMIN_STATUSES = ("enabled", "disabled")


def runner_json(r: Runner, now: int) -> dict[str, Any]:
    lease = r.lease_expires_at
    return {
        "id": r.id,
        "label": r.label,
        "kind": r.kind,
        "owner": r.owner,
        "admin_status": r.admin_status,
        "liveness_status": liveness_status(r.admin_status, lease, now),
        "wake_stream": r.wake_stream,
        "wake_stream_offset": r.wake_stream_offset,
        "last_seen_at": iso(r.last_seen_at),
        "liveness_lease_expires_at": iso(lease),
        "created_at": iso(r.created_at),
        "updated_at": iso(r.updated_at),
        "diagnostics": r.diagnostics,
    }


async def owned_runner(request: web.Request) -> tuple[ServerState, Runner]:
    """Authenticate, then 400 bad id / 404 unknown / 403 not the owner."""
    st = state_of(request)
    principal = authenticate(request, st.config)
    rid = validate.runner_id(request.match_info["runner_id"])
    r = await st.db.call(Store.get_runner, rid)
    if r is None:
        raise not_found(f"runner {rid} not found")
    check_owner(principal, r.owner, rid)
    return st, r


async def register(request: web.Request) -> web.Response:
    st = state_of(request)
    principal = authenticate(request, st.config)
    body = await validate.read_json_object(request, required=True)
    rid = validate.runner_id(body.get("id"))
    label = validate.opt_text(body, "label", rid) or rid
    kind = validate.opt_text(body, "kind", "pull-wake") or "pull-wake"
    admin = validate.opt_text(body, "admin_status")
    if admin is not None and admin not in ADMIN_STATUSES:
        raise bad_request("admin_status must be 'enabled' or 'disabled'")
    stream = validate.wake_stream_path(body.get("wake_stream"), wake_stream_path(rid))
    before = await st.db.call(Store.get_runner, rid)
    try:
        r, created = await st.db.call(
            Store.register,
            rid,
            owner=principal,
            label=label,
            kind=kind,
            admin_status=admin,
            wake_stream=stream,
            now=now_ms(),
        )
    except NotOwner as exc:
        check_owner(principal, exc.owner, rid)
        raise
    except StreamTaken:
        raise bad_request(f"wake_stream {stream} belongs to another runner") from None
    if before is not None and before.wake_stream != r.wake_stream:
        # Readers of the old path would otherwise sit on keepalives with no data
        # until their next rotation; woken, they re-read, find no stream and end.
        st.notifier.notify(before.wake_stream)
    return web.json_response(runner_json(r, now_ms()), status=201 if created else 200)


async def list_runners(request: web.Request) -> web.Response:
    st = state_of(request)
    principal = authenticate(request, st.config)
    runners = await st.db.call(Store.list_runners, principal)
    now = now_ms()
    return web.json_response({"runners": [runner_json(r, now) for r in runners]})


async def get_runner(request: web.Request) -> web.Response:
    _, r = await owned_runner(request)
    return web.json_response(runner_json(r, now_ms()))


def _offset(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request("wake_stream_offset must be a string", ErrorCode.INVALID_OFFSET)
    if value in (OFFSET_START, OFFSET_NOW):
        return value
    try:
        parse_offset(value)
    except ValueError:
        raise bad_request(
            f"bad wake_stream_offset {value[:64]!r}", ErrorCode.INVALID_OFFSET
        ) from None
    return value


async def heartbeat(request: web.Request) -> web.Response:
    st, r = await owned_runner(request)
    body = await validate.read_json_object(request, required=False)
    lease_ms = validate.opt_int(body, "lease_ms", 1, validate.MAX_LEASE_MS)
    # the original also accepts the camelCase spelling
    offset = _offset(body.get("wake_stream_offset", body.get("wakeStreamOffset")))
    diag, dropped = validate.clean_diagnostics(body.get("diagnostics"))
    r = await st.db.call(
        Store.heartbeat,
        r.id,
        lease_ms=lease_ms or st.config.default_lease_ms,
        offset=offset,
        diagnostics=diag if "diagnostics" in body and body["diagnostics"] is not None else None,
        now=now_ms(),
    )
    st.observer.heartbeat_accepted(r.id)
    out = runner_json(r, now_ms())
    if dropped:
        out["diagnostics_dropped"] = dropped
    return web.json_response(out)


async def _set_admin(request: web.Request, status: str) -> web.Response:
    st, r = await owned_runner(request)
    r = await st.db.call(Store.set_admin_status, r.id, status, now_ms())
    return web.json_response(runner_json(r, now_ms()))


async def enable(request: web.Request) -> web.Response:
    return await _set_admin(request, "enabled")


async def disable(request: web.Request) -> web.Response:
    return await _set_admin(request, "disabled")


def server_view_json(view: ServerView, mismatch: bool) -> dict[str, Any]:
    def ts(t: float | None) -> str | None:
        return None if t is None else iso(int(t * 1000))

    return {
        "stream_open": view.stream_open,
        "stream_open_since": ts(view.stream_open_since),
        "last_stream_read_at": ts(view.last_stream_read_at),
        "open_reads": {m.value: n for m, n in view.open_reads.items()},
        "stream_mismatch": mismatch,
    }


async def health(request: web.Request) -> web.Response:
    st, r = await owned_runner(request)
    now = now_ms()
    claims = await st.db.call(claimstore.active_claims, r.id, now)
    liveness = liveness_status(r.admin_status, r.lease_expires_at, now)
    view = st.live.view(r.id, time.time())
    mismatch = stream_mismatch(r.diagnostics, liveness, view, st.config.stream_grace_seconds)
    h = derive_health(
        admin_status=r.admin_status,
        liveness=liveness,
        lease_expires_at_ms=r.lease_expires_at,
        last_seen_at_ms=r.last_seen_at,
        diagnostics=r.diagnostics,
        mismatch=mismatch,
        now_ms=now,
    )
    body = {
        "runner": {
            "id": r.id,
            "admin_status": r.admin_status,
            "liveness_status": liveness,
            "lease_expires_at": iso(r.lease_expires_at),
            # never negative, as in the original: an expired lease has 0 ms left
            "lease_remaining_ms": (
                None if r.lease_expires_at is None else max(0, r.lease_expires_at - now)
            ),
            "wake_stream": r.wake_stream,
            "wake_stream_offset": r.wake_stream_offset,
            "last_seen_at": iso(r.last_seen_at),
            "created_at": iso(r.created_at),
        },
        "client": r.diagnostics or {},
        "claims": {
            "active_count": len(claims),
            "active": [
                {
                    "wake_id": w.wake_id,
                    "claimed_at": iso(w.claimed_at),
                    "lease_expires_at": iso(w.lease_expires_at),
                }
                for w in claims
            ],
        },
        "server_view": server_view_json(view, mismatch),
        "health": h.as_json(),
    }
    return web.json_response(body)


async def publish(request: web.Request) -> web.Response:
    st, r = await owned_runner(request)
    body = await validate.read_json_object(request, required=False)

    async def append_and_notify() -> Published:
        p = await st.db.call(Store.publish, r.id, body or None, now_ms())
        st.notifier.notify(p.stream)
        st.observer.wake_published(r.id)
        return p

    # Shielded: a client that hangs up mid-publish must not leave a committed
    # wake un-notified (live readers only re-read when notified).
    published = await asyncio.shield(append_and_notify())
    return web.json_response(
        {"wake_id": published.wake_id, "offset": published.offset, "stream": published.stream},
        status=201,
    )


def add_routes(app: web.Application) -> None:
    p = RUNNERS_PREFIX
    for root in (p, p + "/"):
        app.router.add_post(root, register)
        app.router.add_get(root, list_runners)
    app.router.add_get(p + "/{runner_id}", get_runner)
    app.router.add_post(p + "/{runner_id}/heartbeat", heartbeat)
    app.router.add_post(p + "/{runner_id}/enable", enable)
    app.router.add_post(p + "/{runner_id}/disable", disable)
    app.router.add_get(p + "/{runner_id}/health", health)
    app.router.add_post(p + "/{runner_id}/wakes", publish)


__all__ = ["ApiError", "add_routes", "owned_runner", "runner_json"]
