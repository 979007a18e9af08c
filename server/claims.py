"""Claims and their completion, as agents-server 0.6.4 answers them.

`POST /_electric/runners/:id/claim` claims a pull-wake subscription
(`runner:<id>:<hash>`, from the wake event) in the Durable Streams layer and
answers the claim notification (`consumerId`, `epoch`, `wakeId`,
`streamPath`, `streams[{path, offset}]`, `callback`, `claimToken`, `entity`,
`principal`), `{"done":true}` for a paused/stopped entity, 204 for an
unknown subscription, 409 ALREADY_CLAIMED / NO_PENDING_WORK / NOT_RUNNING.

`POST /_electric/wake-callbacks/:consumerId` is the claim's `callback`:
`{epoch, wakeId}` asks for a write token; `{epoch}` acks nothing and
extends the lease; `{epoch, acks, done:true}` completes.  Any DS refusal is
a 502 WAKE_CALLBACK_FAILED carrying DS's status and body (FENCED,
TOKEN_INVALID, INVALID_OFFSET ...).  See upstream-protocol.md sections 6-7.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from aiohttp import web

from pullwake.core.protocol import ClaimOutcome, CompletionOutcome
from pullwake.server import bodies, schema
from pullwake.server import principal as pr
from pullwake.server.ds.subscriptions import SubscriptionError
from pullwake.server.errors import (
    NOT_RUNNING,
    UNAUTHORIZED,
    WAKE_CALLBACK_FAILED,
    WAKE_CALLBACK_NOT_FOUND,
    ApiError,
    bad_request,
    json_response,
    not_found,
)
from pullwake.server.registry import Claim, Registry, now_ms
from pullwake.server.runners import PREFIX, SLASH, owned_runner
from pullwake.server.state import ServerState, state_of

CLAIM_OWNER = "Runner claim requires the authenticated owner"
CALLBACKS = "/_electric/wake-callbacks"
_BEARER = re.compile(r"^Bearer\s+", re.IGNORECASE)


def ds_error_json(exc: SubscriptionError) -> str:
    """DS's error body exactly as it goes over the wire (compact JSON)."""
    return json.dumps(exc.body(), separators=(",", ":"), ensure_ascii=False)


def public_base(request: web.Request, st: ServerState) -> str:
    """Upstream builds callback URLs from its public URL, else its listen address."""
    if st.config.public_url:
        return st.config.public_url.rstrip("/")
    host = st.config.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    port = sock[1] if sock else st.config.port
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _with_slash(path: str) -> str:
    return path if path.startswith("/") else "/" + path


async def claim(request: web.Request) -> web.StreamResponse:
    body = await bodies.with_schema(request, schema.CLAIM)
    st, r = await owned_runner(request, CLAIM_OWNER)
    if r.admin_status != "enabled":
        st.observer.claim_answered(r.id, ClaimOutcome.NOT_RUNNING)
        raise ApiError(409, NOT_RUNNING, "Runner is disabled")
    expected = f"runner:{r.id}"
    sub_id = body.get("subscription_id", expected)
    if sub_id != expected and not sub_id.startswith(expected + ":"):
        raise bad_request("Wake event subscription_id does not match runner")
    try:
        grant = await st.subs.claim(sub_id, r.id)
    except SubscriptionError as exc:
        if exc.status == 404:
            st.observer.claim_answered(r.id, ClaimOutcome.UNKNOWN)
            return web.Response(status=204)
        if exc.status == 409 and exc.code in ("ALREADY_CLAIMED", "NO_PENDING_WORK"):
            outcome = (
                ClaimOutcome.ALREADY_CLAIMED
                if exc.code == "ALREADY_CLAIMED"
                else ClaimOutcome.NO_PENDING_WORK
            )
            st.observer.claim_answered(r.id, outcome)
            raise ApiError(409, exc.code, exc.message or ds_error_json(exc)) from None
        raise
    streams: list[dict[str, Any]] = grant["streams"]
    primary = next((s for s in streams if s.get("has_pending")), streams[0] if streams else None)
    if primary is None:
        raise ApiError(502, "INVALID_REQUEST", "Claim response did not include a stream")
    primary_path = _with_slash(primary["path"])
    entity = await st.registry.call(Registry.entity_by_stream, primary_path)
    if entity is None:
        raise not_found("Claim stream is not attached to an entity")
    if entity.status in ("stopped", "paused"):
        await st.subs.release(
            sub_id, grant["token"], {"wake_id": grant["wake_id"], "generation": grant["generation"]}
        )
        st.observer.claim_answered(r.id, ClaimOutcome.DONE)
        return json_response({"done": True})
    now = now_ms()
    lease_ttl = grant.get("lease_ttl_ms")
    await st.registry.call(
        Registry.materialize_claim,
        Claim(
            consumer_id=grant["wake_id"],
            epoch=grant["generation"],
            entity_url=entity.url,
            stream_path=primary_path,
            runner_id=r.id,
            status="active",
            claimed_at=now,
            last_heartbeat_at=None,
            lease_expires_at=now + lease_ttl if lease_ttl else None,
        ),
        sub_id,
        now=now,
    )
    st.observer.claim_answered(r.id, ClaimOutcome.CLAIMED)
    wake_id = grant["wake_id"]
    ent: dict[str, Any] = {
        "type": entity.type,
        "status": entity.status,
        "url": entity.url,
        "streams": {"main": entity.main_stream},
        "tags": entity.tags,
        "spawnArgs": entity.spawn_args,
        "createdBy": entity.created_by,
    }
    notification: dict[str, Any] = {
        "consumerId": wake_id,
        "epoch": grant["generation"],
        "wakeId": wake_id,
        "streamPath": primary_path,
        "streams": [
            {"path": _with_slash(s["path"]), "offset": s.get("tail_offset") or ""} for s in streams
        ],
        "callback": f"{public_base(request, st)}{CALLBACKS}/{pr.encode_uri_component(wake_id)}",
        "claimToken": grant["token"],
        "triggerEvent": "message_received",
        "entity": ent,
    }
    principal = pr.from_created_by(entity.created_by)
    if principal is not None:
        notification["principal"] = principal
    return json_response(notification)


def claim_token(request: web.Request) -> str | None:
    """`electric-claim-token`, else `Authorization: Bearer` (upstream order)."""
    token = request.headers.get("electric-claim-token", "").strip()
    if token:
        return token
    auth = _BEARER.sub("", request.headers.get("Authorization", ""), count=1)
    return auth.strip() or None


def ds_payload(consumer_id: str, body: dict[str, Any] | None) -> dict[str, Any]:
    """Upstream `encodeWakeCallbackPayload` (stream paths without leading slash)."""
    if body is None:
        return {}
    out: dict[str, Any] = {"wake_id": body.get("wake_id", body.get("wakeId", consumer_id))}
    generation = body.get("generation", body.get("epoch"))
    if generation is not None:
        out["generation"] = generation
    acks = []
    for ack in body.get("acks") or []:
        stream = ack.get("stream")
        if not isinstance(stream, str):
            stream = ack.get("path") if isinstance(ack.get("path"), str) else ""
        offset = ack.get("offset")
        acks.append(
            {"stream": stream.lstrip("/"), "offset": offset if isinstance(offset, str) else ""}
        )
    out["acks"] = acks
    if "done" in body:
        out["done"] = body["done"]
    return out


async def wake_callback(request: web.Request) -> web.Response:
    st = state_of(request)
    consumer_id = request.match_info["consumer_id"]
    target = await st.registry.call(Registry.get_callback, consumer_id)
    if target is None:
        raise ApiError(404, WAKE_CALLBACK_NOT_FOUND, "Unknown wake-callback consumer")
    body = await bodies.optional_json(request, schema.CALLBACK)
    is_claim_request = body is not None and ("wakeId" in body or "wake_id" in body)
    is_done = body is not None and body.get("done") is True
    if is_claim_request and not is_done:
        # a write token for the runtime's writes during the wake; no DS call
        return json_response({"ok": True, "writeToken": str(uuid.uuid4())})
    token = claim_token(request)
    if token is None:
        raise ApiError(401, UNAUTHORIZED, "Missing claim token")
    runner_id = await _runner_of(st, consumer_id)
    try:
        result = await st.subs.ack(target.subscription_id, token, ds_payload(consumer_id, body))
    except SubscriptionError as exc:
        fenced = exc.code == "FENCED"
        st.observer.completion(
            runner_id, CompletionOutcome.FENCED if fenced else CompletionOutcome.REJECTED
        )
        raise ApiError(
            502, WAKE_CALLBACK_FAILED, f"Subscription ack failed: {exc.status} {ds_error_json(exc)}"
        ) from None
    out: dict[str, Any] = {
        "ok": result.get("ok", True),
        "next_wake": result.get("next_wake", False),
    }
    if is_claim_request:
        out["writeToken"] = str(uuid.uuid4())
    epoch = None if body is None else body.get("generation", body.get("epoch"))
    now = now_ms()
    if is_done:
        if epoch is not None:
            await st.registry.call(Registry.release_claim, consumer_id, epoch, now)
        st.observer.completion(runner_id, CompletionOutcome.DONE)
    else:
        if epoch is not None:
            await st.registry.call(Registry.claim_heartbeat, consumer_id, epoch, now)
        st.observer.completion(runner_id, CompletionOutcome.EXTENDED)
    return json_response(out)


async def _runner_of(st: ServerState, consumer_id: str) -> str:
    """For metrics only: the runner that made this claim ("" if unknown)."""
    rid = await st.registry.call(Registry.claim_runner, consumer_id)
    return rid or ""


def add_routes(app: web.Application) -> None:
    app.router.add_post(PREFIX + "/{runner_id}/claim" + SLASH, claim)
    app.router.add_post(CALLBACKS + "/{consumer_id}" + SLASH, wake_callback)
