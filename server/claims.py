"""Claims: who handles a wake, for how long, and what happens when they don't.

200 with a claim token and a lease for the first claim, 409
`ALREADY_CLAIMED` while another claim's lease is live, 204 when there is
nothing to claim.  A lease that runs out without `complete` re-opens the
wake and announces it again on the stream (at least once: the wake id lets
the runner drop duplicates); `sweep_expired_claims` does that in the
background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from pullwake.core.protocol import RUNNERS_PREFIX, ClaimOutcome, ErrorCode
from pullwake.server import claimstore, validate
from pullwake.server.api import owned_runner
from pullwake.server.errors import ApiError, bad_request, not_found
from pullwake.server.records import iso, now_ms
from pullwake.server.state import STATE, ServerState

log = logging.getLogger("pullwake.server.claims")
MAX_CLAIM_LEASE_MS = 3600 * 1000


def _wake_id(body: dict[str, Any]) -> str | None:
    value = body.get("wake_id", body.get("wakeId"))
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        raise bad_request("wake_id must be a non-empty string")
    return value


async def claim(request: web.Request) -> web.StreamResponse:
    st, r = await owned_runner(request)
    body = await validate.read_json_object(request, required=False)
    wake_id = _wake_id(body)
    sub = body.get("subscription_id")
    own = f"runner:{r.id}"
    if sub is not None and sub != own and not (isinstance(sub, str) and sub.startswith(own + ":")):
        # as the original: a wake event read from another runner's stream is not ours
        raise bad_request(f"subscription_id does not match runner {r.id}")
    lease_ms = validate.opt_int(body, "lease_ms", 1, MAX_CLAIM_LEASE_MS) or int(
        st.config.claim_lease_seconds * 1000
    )
    if r.admin_status != "enabled":
        raise ApiError(409, ErrorCode.NOT_RUNNING, f"runner {r.id} is disabled")
    result = await st.db.call(claimstore.claim, r.id, wake_id, lease_ms, now_ms())
    st.observer.claim_answered(r.id, result.outcome)
    if result.outcome is ClaimOutcome.EMPTY:
        return web.Response(status=204)
    wake = result.wake
    assert wake is not None
    if result.outcome is ClaimOutcome.CONFLICT:
        raise ApiError(
            409,
            ErrorCode.ALREADY_CLAIMED,
            f"wake {wake.wake_id} is already claimed",
            details={"wake_id": wake.wake_id, "lease_expires_at": iso(wake.lease_expires_at)},
        )
    return web.json_response(
        {
            "wakeId": wake.wake_id,
            "claimToken": wake.claim_token,
            "runnerId": r.id,
            "subscription_id": f"runner:{r.id}",
            "streams": [r.wake_stream],
            "lease_ms": lease_ms,
            "leaseExpiresAt": iso(wake.lease_expires_at),
            "payload": wake.payload,
        }
    )


async def complete(request: web.Request) -> web.Response:
    st, r = await owned_runner(request)
    wake_id = _wake_id({"wake_id": request.match_info["wake_id"]})
    assert wake_id is not None
    body = await validate.read_json_object(request, required=True)
    token = body.get("claimToken", body.get("claim_token"))
    if not isinstance(token, str) or not token:
        raise bad_request("claimToken is required")
    wake = await st.db.call(claimstore.get_wake, wake_id)
    if wake is None or wake.runner_id != r.id:
        raise not_found(f"wake {wake_id} not found")
    if not await st.db.call(claimstore.complete, r.id, wake_id, token, now_ms()):
        raise ApiError(
            409,
            ErrorCode.INVALID_CLAIM_TOKEN,
            f"wake {wake_id} has no live claim with this token (expired, completed or wrong)",
        )
    st.observer.claim_answered(r.id, ClaimOutcome.COMPLETED)
    return web.json_response({"wakeId": wake_id, "status": "completed"})


async def sweep_once(st: ServerState) -> int:
    """Expire overdue claims once; returns how many wakes were re-announced."""
    expired = await st.db.call(claimstore.expire_claims, now_ms())
    for runner_id, path in expired:
        st.notifier.notify(path)
        st.observer.claim_answered(runner_id, ClaimOutcome.EXPIRED)
    return len(expired)


async def _sweep_forever(st: ServerState) -> None:
    while True:
        try:
            await sweep_once(st)
        except Exception:
            log.exception("claim sweep failed")
        await asyncio.sleep(st.config.sweep_interval)


async def claim_sweeper(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: run the sweeper for the app's lifetime."""
    task = asyncio.create_task(_sweep_forever(app[STATE]))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def add_routes(app: web.Application) -> None:
    p = RUNNERS_PREFIX
    app.router.add_post(p + "/{runner_id}/claim", claim)
    app.router.add_post(p + "/{runner_id}/claims/{wake_id}/complete", complete)
