"""Who is asking: the `electric-principal` header, resolved for every request.

As upstream (`AS/server.ts:381-428`): the header in key or URL form, an
invalid one counts as absent; absent means `system:dev-local` while the dev
fallback is on (upstream: whenever its Durable Streams server is embedded,
which ours always is; `pullwake server --no-dev-principal` turns it off),
else 401 `Missing Electric-Principal` on every path.  Optionally (ours, off
unless PULLWAKE_AUTH_TOKEN is set) every request must also carry a bearer
token; `/healthz`, `/metrics` and the wake callbacks (which carry the claim
token in `Authorization`) are exempt.  `/v1/stream/...` (the DS origin, a
separate server upstream) needs no principal.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from pullwake.server import principal as pr
from pullwake.server.errors import UNAUTHORIZED, ApiError, Handler, error_response, forbidden
from pullwake.server.state import state_of

PRINCIPAL_KEY: web.RequestKey[pr.Principal] = web.RequestKey("pullwake_principal", pr.Principal)
H_PRINCIPAL = "electric-principal"
OPEN_PATHS = ("/healthz", "/readyz", "/metrics")
CALLBACK_PREFIX = "/_electric/wake-callbacks/"
DS_ORIGIN = "/v1/stream/"


def _token_ok(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode()
    )


@web.middleware
async def principal_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in OPEN_PATHS:
        return await handler(request)
    config = state_of(request).config
    if (
        config.auth_token is not None
        and not request.path.startswith(CALLBACK_PREFIX)
        and not _token_ok(request, config.auth_token)
    ):
        return error_response(
            401,
            UNAUTHORIZED,
            "missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if request.path.startswith(DS_ORIGIN):
        # the embedded DS server's own origin: upstream serves it on a separate port
        # with no principal resolution at all
        return await handler(request)
    p = pr.parse_input(request.headers.get(H_PRINCIPAL))
    if p is None and config.dev_principal_fallback:
        p = pr.DEV_PRINCIPAL
    if p is None:
        return error_response(401, UNAUTHORIZED, "Missing Electric-Principal")
    request[PRINCIPAL_KEY] = p
    return await handler(request)


def principal_of(request: web.Request) -> pr.Principal:
    p: pr.Principal | None = request.get(PRINCIPAL_KEY)
    if p is None:  # the middleware always sets it
        raise ApiError(401, UNAUTHORIZED, "Runner route requires an authenticated principal")
    return p


def check_owner(principal: pr.Principal, owner_url: str, message: str) -> None:
    if principal.url != owner_url:
        raise forbidden(message)
