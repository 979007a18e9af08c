"""Who is asking, and may they act on this runner.

`electric-principal: <kind>:<name>` names the caller; only the principal that
registered a runner may act on it.  `--dev` treats a missing principal as
`system:dev-local`.  When `PULLWAKE_AUTH_TOKEN` is set every API and stream
request must also carry `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from pullwake.core.protocol import DEV_PRINCIPAL, H_PRINCIPAL, PRINCIPAL_KINDS, ErrorCode
from pullwake.server.config import ServerConfig
from pullwake.server.errors import ApiError


def parse_principal(value: str | None, *, dev: bool) -> str:
    """The caller's principal, or 401 when missing or malformed."""
    if value is None or not value.strip():
        if dev:
            return DEV_PRINCIPAL
        raise ApiError(401, ErrorCode.UNAUTHORIZED, f"missing {H_PRINCIPAL} header")
    value = value.strip()
    kind, sep, name = value.partition(":")
    # isprintable(): no control characters, and no surrogate-escaped bytes that
    # were not UTF-8 on the wire (SQLite could not store such an owner).
    if (
        not sep
        or kind not in PRINCIPAL_KINDS
        or not name
        or len(value) > 256
        or not value.isprintable()
    ):
        raise ApiError(
            401,
            ErrorCode.UNAUTHORIZED,
            f"{H_PRINCIPAL} must be <kind>:<name> with kind one of {', '.join(PRINCIPAL_KINDS)}",
        )
    return value


def check_token(request: web.Request, token: str | None) -> None:
    """Enforce the optional shared bearer token (constant-time compare)."""
    if token is None:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    # surrogateescape: header bytes that were not UTF-8 compare as the raw bytes
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode()
    ):
        raise ApiError(
            401,
            ErrorCode.UNAUTHORIZED,
            "missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


def authenticate(request: web.Request, config: ServerConfig) -> str:
    """Token (if configured) then principal; returns the principal."""
    check_token(request, config.auth_token)
    return parse_principal(request.headers.get(H_PRINCIPAL), dev=config.dev)


def check_owner(principal: str, owner: str, runner_id: str) -> None:
    if principal != owner:
        raise ApiError(403, ErrorCode.FORBIDDEN, f"{principal} does not own runner {runner_id}")
