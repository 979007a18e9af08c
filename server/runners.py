"""The runners API under `/_electric/runners`, as agents-server 0.6.4 answers it.

Register (upsert, always 201), list (a bare array of the caller's runners,
newest first), get, enable/disable, heartbeat (liveness lease + whitelisted
diagnostics) and health.  Claims are in `pullwake.server.claims`.  Order of
checks as upstream: body schema first (400), then 404 unknown runner, then
403 (code UNAUTHORIZED) for a caller who is not the owner.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pullwake.server import bodies, diagnostics, jsdate, schema
from pullwake.server import principal as pr
from pullwake.server.auth import check_owner, principal_of
from pullwake.server.errors import ApiError, bad_request, forbidden, json_response, not_found
from pullwake.server.health import derive_health, liveness_status
from pullwake.server.registry import Registry, Runner, WakeStreamTaken, iso, now_ms
from pullwake.server.state import ServerState, state_of

PREFIX = "/_electric/runners"
SLASH = "{_slash:/?}"  # upstream's router also matches a trailing slash
ACCESS = "Runner access requires the authenticated owner"
OWNER_MISMATCH = "owner_principal must match the authenticated principal"


def default_wake_stream(runner_id: str) -> str:
    """Upstream `runnerWakeStream`: the raw id, not encoded."""
    return f"/runners/{runner_id}/wake"


def ds_path(path: str) -> str:
    """The Durable Streams key of a path (no leading/trailing slash)."""
    return path.strip("/")


def _bad_owner(value: str) -> ApiError:
    return bad_request(
        "owner_principal must be a valid principal URL (e.g. /principal/user%3Aalice), "
        f"got: {value}"
    )


def runner_id_of(request: web.Request) -> str:
    return request.match_info["runner_id"]


async def require_runner(st: ServerState, runner_id: str) -> Runner:
    r = await st.registry.call(Registry.get_runner, runner_id)
    if r is None:
        raise not_found("Runner not found")
    return r


async def owned_runner(request: web.Request, message: str = ACCESS) -> tuple[ServerState, Runner]:
    """404 unknown, then 403 UNAUTHORIZED when the caller is not the owner."""
    st = state_of(request)
    r = await require_runner(st, runner_id_of(request))
    check_owner(principal_of(request), r.owner_principal, message)
    return st, r


def _profiles(value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Upstream keeps name, label, and description/remote when given."""
    if value is None:
        return None
    out = []
    for p in value:
        item: dict[str, Any] = {"name": p["name"], "label": p["label"]}
        if "description" in p:
            item["description"] = p["description"]
        if "remote" in p:
            item["remote"] = p["remote"]
        out.append(item)
    return out


async def register(request: web.Request) -> web.Response:
    body = await bodies.with_schema(request, schema.REGISTER)
    st = state_of(request)
    principal = principal_of(request)
    owner = body.get("owner_principal", principal.url)
    if not owner:
        raise bad_request("owner_principal is required when no authenticated principal is present")
    canonical = pr.parse_url(owner)
    if canonical is None:
        raise _bad_owner(owner)
    if canonical.url != principal.url:
        raise forbidden(OWNER_MISMATCH)
    rid: str = body["id"]
    wake_stream = body.get("wake_stream", default_wake_stream(rid))
    before = await st.registry.call(Registry.get_runner, rid)
    try:
        r = await st.registry.call(
            Registry.register,
            rid,
            owner=canonical.url,
            label=body["label"],
            kind=body.get("kind", "local"),
            admin_status=body.get("admin_status", "enabled"),
            wake_stream=wake_stream,
            sandbox_profiles=_profiles(body.get("sandbox_profiles")),
            now=now_ms(),
        )
    except WakeStreamTaken:
        # upstream: a unique-constraint violation surfacing as a bare 500
        raise RuntimeError(f"wake_stream {wake_stream} belongs to another runner") from None
    if before is not None and before.wake_stream != r.wake_stream:
        st.wake_streams.pop(ds_path(before.wake_stream), None)
    st.wake_streams[ds_path(r.wake_stream)] = r.id
    await st.ensure_stream(wake_stream)
    return json_response(r.as_json(), status=201)


async def list_runners(request: web.Request) -> web.Response:
    st = state_of(request)
    principal = principal_of(request)
    requested = request.query.get("owner_principal")
    if requested:
        canonical = pr.parse_url(requested)
        if canonical is None:
            raise _bad_owner(requested)
        if canonical.url != principal.url:
            raise forbidden(OWNER_MISMATCH)
    runners = await st.registry.call(Registry.list_runners, principal.url)
    return json_response([r.as_json() for r in runners])


async def get_runner(request: web.Request) -> web.Response:
    _, r = await owned_runner(request)
    return json_response(r.as_json())


def _lease_expiry(body: dict[str, Any], now: int, default_ms: int) -> int:
    given = body.get("liveness_lease_expires_at")
    if given:
        ms = jsdate.parse_ms(given)
        if ms is None:
            # upstream: new Date(garbage) fails the write -> a bare 500
            raise RuntimeError(f"unparsable liveness_lease_expires_at {given[:64]!r}")
        return ms
    lease_ms = body.get("lease_ms", default_ms)
    expiry = int(now + lease_ms)  # JS Date truncates fractional milliseconds
    if abs(expiry) > jsdate.MAX_MS:
        raise RuntimeError(f"lease_ms {lease_ms!r} is out of the Date range")
    return expiry


async def heartbeat(request: web.Request) -> web.Response:
    body = await bodies.with_schema(request, schema.HEARTBEAT)
    st, r = await owned_runner(request)
    now = now_ms()
    expiry = _lease_expiry(body, now, st.config.default_lease_ms)
    offset = body.get("wake_stream_offset", body.get("wakeStreamOffset"))
    clean = diagnostics.sanitize(body.get("diagnostics"))
    await st.registry.call(
        Registry.heartbeat,
        r.id,
        lease_expires_at=expiry,
        offset=offset,
        diagnostics=clean,
        now=now,
    )
    st.observer.heartbeat_accepted(r.id)
    out = r.as_json()
    out["last_seen_at"] = iso(now)
    out["liveness_lease_expires_at"] = iso(expiry)
    if offset is not None:
        out["wake_stream_offset"] = offset
    if clean is not None:
        out["diagnostics"] = clean
    return json_response(out)


async def _set_admin(request: web.Request, status: str) -> web.Response:
    st, r = await owned_runner(request)
    updated = await st.registry.call(Registry.set_admin_status, r.id, status, now_ms())
    if updated is None:
        raise not_found("Runner not found")
    return json_response(updated.as_json())


async def enable(request: web.Request) -> web.Response:
    return await _set_admin(request, "enabled")


async def disable(request: web.Request) -> web.Response:
    return await _set_admin(request, "disabled")


async def health(request: web.Request) -> web.Response:
    st, r = await owned_runner(request)
    now = now_ms()
    rt = await st.registry.call(Registry.get_runtime, r.id)
    claims = await st.registry.call(Registry.active_claims, r.id)
    stats = await st.registry.call(Registry.dispatch_stats, r.id)
    lease = rt.lease_expires_at if rt else None
    last_seen = rt.last_seen_at if rt else None
    liveness = liveness_status(r.admin_status, lease, now)
    client = diagnostics.sanitize(rt.diagnostics if rt else None)
    h = derive_health(
        admin_status=r.admin_status,
        liveness=liveness,
        lease_expires_at_ms=lease,
        last_seen_at_ms=last_seen,
        client=client,
        now_ms=now,
    )
    body = {
        "runner": {
            "id": r.id,
            "admin_status": r.admin_status,
            "liveness_status": liveness,
            "lease_expires_at": iso(lease),
            "lease_remaining_ms": None if lease is None else max(0, lease - now),
            "wake_stream": r.wake_stream,
            "wake_stream_offset": rt.wake_stream_offset if rt else None,
            "last_seen_at": iso(last_seen),
            "created_at": iso(r.created_at),
        },
        "client": client,
        "claims": {"active_count": len(claims), "active": [c.as_json() for c in claims]},
        "dispatch": stats,
        "health": h.as_json(),
    }
    return json_response(body)


async def electric_health(request: web.Request) -> web.Response:
    """Upstream's `GET /_electric/health` (the principal rules apply to it too)."""
    return json_response({"status": "ok"})


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight on any `/_electric` path: 204 (the CORS headers are added app-wide)."""
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/_electric/health" + SLASH, electric_health, allow_head=False)
    app.router.add_route("OPTIONS", "/_electric/{tail:.*}", preflight)
    p = PREFIX
    for root in (p, p + "/"):
        app.router.add_post(root, register)
        app.router.add_get(root, list_runners, allow_head=False)
    app.router.add_get(p + "/{runner_id}/health" + SLASH, health, allow_head=False)
    app.router.add_get(p + "/{runner_id}" + SLASH, get_runner, allow_head=False)
    app.router.add_post(p + "/{runner_id}/heartbeat" + SLASH, heartbeat)
    app.router.add_post(p + "/{runner_id}/enable" + SLASH, enable)
    app.router.add_post(p + "/{runner_id}/disable" + SLASH, disable)
