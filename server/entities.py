"""The subset of upstream's entity API that makes wakes: types, spawn, send, signal.

Wakes come from entity streams, as upstream (upstream-protocol.md 5.2): an
entity whose dispatch policy targets a runner is *linked* at spawn and before
every send to the Durable Streams pull-wake subscription
`runner:<runnerId>:<sha256(entity url)[:16]>` (streams: the entity's main
stream; wake stream: the runner's).  A message appended to the main stream
then makes DS announce a wake on the runner's wake stream.

Served: `POST /_electric/entity-types`, `PUT|GET /_electric/entities/<type>/<id>`,
`POST .../send`, `POST .../signal` (SIGSTOP/SIGCONT only: enough to pause
an entity, whose claims then answer `{"done":true}`).  No permissions beyond
the runner owner check; the dev principal may do everything, as upstream
in dev.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from aiohttp import web

from pullwake.server import bodies, schema
from pullwake.server.auth import principal_of
from pullwake.server.ds.subscriptions import SubscriptionError
from pullwake.server.errors import (
    UNKNOWN_ENTITY_TYPE,
    ApiError,
    bad_request,
    forbidden,
    json_response,
    not_found,
)
from pullwake.server.registry import Entity, Registry, iso, now_ms
from pullwake.server.runners import SLASH, ds_path
from pullwake.server.state import ServerState, state_of

TYPES = "/_electric/entity-types"
ENTITIES = "/_electric/entities"
DISPATCH_OWNER = "Runner dispatch requires the authenticated owner"


def subscription_id(target: dict[str, Any], entity_url: str) -> str:
    """Upstream `subscriptionIdForEntityDispatchTarget` for runner targets."""
    base = target.get("subscription_id") or f"runner:{target['runnerId']}"
    digest = hashlib.sha256(entity_url.encode()).hexdigest()[:16]
    return f"{base}:{digest}"


def runner_target(policy: dict[str, Any] | None) -> dict[str, Any] | None:
    targets = (policy or {}).get("targets") or []
    first = targets[0] if targets else None
    return first if isinstance(first, dict) and first.get("type") == "runner" else None


def entity_url(type_name: str, instance_id: str) -> str | None:
    """Upstream `entityUrlFromSegments` (no principal entities here)."""
    if not type_name or not instance_id:
        return None
    if type_name.startswith("_") or "*" in type_name or "*" in instance_id:
        return None
    return f"/{type_name}/{instance_id}"


async def effective_policy(st: ServerState, e: Entity) -> dict[str, Any] | None:
    if e.dispatch_policy is not None:
        return e.dispatch_policy
    t = await st.registry.call(Registry.get_entity_type, e.type)
    return None if t is None else t.default_dispatch_policy


async def check_dispatch_allowed(request: web.Request, policy: dict[str, Any] | None) -> None:
    """Upstream `assertDispatchPolicyAllowed`: the runner exists and is the caller's."""
    target = runner_target(policy)
    if target is None:
        return
    st = state_of(request)
    r = await st.registry.call(Registry.get_runner, target["runnerId"])
    if r is None:
        raise not_found(f'Runner "{target["runnerId"]}" not found')
    if r.owner_principal != principal_of(request).url:
        raise forbidden(DISPATCH_OWNER)


async def link(st: ServerState, e: Entity) -> str | None:
    """Ensure the entity's runner subscription includes its main stream; its id."""
    target = runner_target(await effective_policy(st, e))
    if target is None:
        return None
    sub_id = subscription_id(target, e.url)
    main = ds_path(e.main_stream)
    await st.ensure_stream(e.main_stream)
    r = await st.registry.call(Registry.get_runner, target["runnerId"])
    if r is None:
        raise not_found(f'Runner "{target["runnerId"]}" not found')
    await st.ensure_stream(r.wake_stream)
    state = st.subs.state(sub_id)
    if state is not None:
        if main not in {s.path for s in state.streams}:
            await st.subs.add_streams(sub_id, [main])
        return sub_id
    spec: dict[str, Any] = {
        "type": "pull-wake",
        "streams": [main],
        "wake_stream": ds_path(r.wake_stream),
        "description": f"Electric Agents runner {target['runnerId']}",
    }
    if st.config.claim_lease_ms is not None:
        spec["lease_ttl_ms"] = st.config.claim_lease_ms
    try:
        await st.subs.put(sub_id, spec)
    except SubscriptionError as exc:
        if exc.code != "SUBSCRIPTION_ALREADY_EXISTS":
            raise
        await st.subs.add_streams(sub_id, [main])
    return sub_id


def _event(kind: str, key: str, value: dict[str, Any], txid: str | None = None) -> dict[str, Any]:
    """A state-protocol change event, as upstream writes them to entity streams."""
    headers: dict[str, Any] = {} if txid is None else {"txid": txid}
    headers["operation"] = "insert"  # upstream's key order: txid first
    return {"type": kind, "key": key, "value": value, "headers": headers}


async def create_entity_type(request: web.Request) -> web.Response:
    body = await bodies.with_schema(request, schema.ENTITY_TYPE)
    st = state_of(request)
    for required in ("name", "description"):
        if not body.get(required):
            raise bad_request(f"Missing required field: {required}")
    name = body["name"]
    if name.startswith("_"):
        raise bad_request('Entity type names starting with "_" are reserved')
    policy = body.get("default_dispatch_policy")
    await check_dispatch_allowed(request, policy)
    t = await st.registry.call(
        Registry.put_entity_type, name, body.get("description"), policy, now_ms()
    )
    return json_response(t.as_json(), status=201)


def _url_or_500(request: web.Request) -> str:
    url = entity_url(request.match_info["type"], request.match_info["instance_id"])
    if url is None:
        # upstream: its entity middleware skips such URLs and the handler then
        # throws ("existing entity middleware did not run"): a bare 500
        raise RuntimeError(f"not an entity URL: {request.path}")
    return url


async def spawn(request: web.Request) -> web.Response:
    st = state_of(request)
    url = _url_or_500(request)
    type_name = request.match_info["type"]
    t = await st.registry.call(Registry.get_entity_type, type_name)
    if t is None:
        raise ApiError(404, UNKNOWN_ENTITY_TYPE, f'Entity type "{type_name}" not found')
    body = await bodies.with_schema(request, schema.SPAWN)
    principal = principal_of(request)
    policy = body.get("dispatch_policy") or t.default_dispatch_policy
    await check_dispatch_allowed(request, policy)
    now = now_ms()
    e = Entity(
        url=url,
        type=type_name,
        status="idle",
        main_stream=f"{url}/main",
        dispatch_policy=policy,
        tags=body.get("tags", {}),
        spawn_args=body.get("args", {}),
        created_by=principal.url,
        created_at=now,
        updated_at=now,
    )
    if not await st.registry.call(Registry.create_entity, e):
        raise ApiError(409, "DUPLICATE_URL", f'Entity already exists at URL "{url}"')
    await st.ensure_stream(e.main_stream)
    created = _event(
        "entity_created",
        "entity-created",
        {"entity_type": type_name, "timestamp": iso(now), "args": e.spawn_args},
    )
    await st.ds.append_json(ds_path(e.main_stream), [created])
    initial = body.get("initialMessage")
    if "initialMessage" in body:
        await link(st, e)  # before the message, so it is pending work
        await _append_message(st, e, principal.url, initial, body.get("initialMessageType"))
    else:
        await link(st, e)
    out = e.as_json(spawn="args" not in body)  # upstream: spawn_args only when given
    out["txid"] = await st.registry.call(Registry.next_txid)
    return json_response(out, status=201, headers={"x-write-token": str(uuid.uuid4())})


async def _entity(request: web.Request) -> tuple[ServerState, Entity]:
    st = state_of(request)
    url = _url_or_500(request)
    e = await st.registry.call(Registry.get_entity, url)
    if e is None:
        type_name = request.match_info["type"]
        if await st.registry.call(Registry.get_entity_type, type_name) is not None:
            raise not_found(f"Entity not found at {url}")
        raise ApiError(404, UNKNOWN_ENTITY_TYPE, f'Entity type "{type_name}" not found')
    return st, e


async def get_entity(request: web.Request) -> web.Response:
    _, e = await _entity(request)
    return json_response(e.as_json())


async def _append_message(
    st: ServerState,
    e: Entity,
    sender: str,
    payload: Any,
    message_type: str | None,
    key: str | None = None,
    mode: str | None = None,
    *,
    from_principal: bool = False,
) -> tuple[str, str]:
    """Append an inbox message to the entity's main stream; (txid, new tail).

    The event has upstream's fields in upstream's order, so the entity stream
    holds the same bytes as upstream's for the same messages (same offsets).
    """
    now = iso(now_ms())
    value: dict[str, Any] = {
        "from": sender,
        "payload": payload,
        "timestamp": now,
        "mode": mode or "immediate",
        "status": "pending" if mode in ("queued", "paused") else "processed",
    }
    if from_principal:  # the send route names the principal twice, as upstream
        value["from_principal"] = sender
    if message_type:
        value["message_type"] = message_type
    if value["status"] == "processed":
        value["processed_at"] = now
    txid = str(uuid.uuid4())
    key = key or f"msg-in-{now_ms()}-{uuid.uuid4().hex[:6]}"
    tail = await st.ds.append_json(ds_path(e.main_stream), [_event("inbox", key, value, txid)])
    target = runner_target(await effective_policy(st, e))
    st.observer.message_sent(target["runnerId"] if target else "")
    return txid, tail


async def send(request: web.Request) -> web.Response:
    st, e = await _entity(request)
    body = await bodies.with_schema(request, schema.SEND)
    if "payload" not in body:
        raise bad_request("Missing required field: payload")
    principal = principal_of(request)
    if "from" in body and body["from"] != principal.url:
        raise bad_request("Request from must match Electric-Principal")
    if "from_principal" in body and body["from_principal"] != principal.url:
        raise bad_request("Request from_principal must match Electric-Principal")
    if e.status == "paused" and body.get("mode") != "paused":
        await st.registry.call(Registry.set_entity_status, e.url, "idle", now_ms())
    await link(st, e)
    txid, tail = await _append_message(
        st,
        e,
        principal.url,
        body.get("payload"),
        body.get("type"),
        body.get("key"),
        body.get("mode"),
        from_principal=True,
    )
    resp = json_response({"txid": txid})
    resp.headers["x-pullwake-offset"] = tail  # ours: where this message ends in the stream
    return resp


SIGNALS = {"SIGSTOP": "paused", "SIGCONT": "idle"}
SERVER_SENDER = "/_electric/server"


async def signal(request: web.Request) -> web.Response:
    st, e = await _entity(request)
    body = await bodies.with_schema(request, schema.SIGNAL)
    sig = body["signal"]
    if sig not in SIGNALS:
        raise ApiError(
            400, "INVALID_SIGNAL", f"pullwake serves SIGSTOP and SIGCONT only, not {sig}"
        )
    if e.status in ("stopped", "killed"):
        raise ApiError(409, "INVALID_SIGNAL", f"Cannot signal a {e.status} entity")
    new = SIGNALS[sig]
    # as upstream: SIGSTOP pauses (handled); SIGCONT resumes a paused entity but is
    # recorded as unhandled (the runtime's to act on), and changes nothing otherwise
    handled = sig == "SIGSTOP"
    if sig == "SIGCONT" and e.status != "paused":
        new = e.status
    now = now_ms()
    txid = await st.registry.call(Registry.next_txid)
    await st.registry.call(Registry.set_entity_status, e.url, new, now)
    stamp = iso(now)
    value: dict[str, Any] = {
        "signal": sig,
        "status": "handled" if handled else "unhandled",
        "sender": SERVER_SENDER,
        "timestamp": stamp,
    }
    if "reason" in body:
        value["reason"] = body["reason"]
    if "payload" in body:
        value["payload"] = body["payload"]
    if handled:
        value.update(
            handled_at=stamp,
            handled_by=SERVER_SENDER,
            outcome="transitioned",
            previous_state=e.status,
            new_state=new,
        )
    event = {
        "type": "signal",
        "key": f"sig-{now}-{uuid.uuid4().hex[:8]}",
        "value": value,
        "headers": {"operation": "insert", "timestamp": stamp, "txid": str(txid)},
    }
    await st.ds.append_json(ds_path(e.main_stream), [event])
    return json_response(
        {
            "url": e.url,
            "signal": sig,
            "previous_state": e.status,
            "new_state": new,
            "created_at": now,
            "txid": txid,
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post(TYPES + SLASH, create_entity_type)
    base = ENTITIES + "/{type}/{instance_id}"
    app.router.add_put(base + SLASH, spawn)
    app.router.add_get(base + SLASH, get_entity)  # upstream has HEAD on entities too
    app.router.add_post(base + "/send" + SLASH, send)
    app.router.add_post(base + "/signal" + SLASH, signal)
