"""The agents-server's error shape, and the middleware that guarantees it.

Every API failure leaves as `{"error": {"code", "message", "details"?}}` with
`content-type: application/json; charset=utf-8`, the upstream codes
(`INVALID_REQUEST`, `UNAUTHORIZED` also for 403, `NOT_FOUND`, ...) and the
upstream 500 (`INTERNAL_SERVER_ERROR` / `Internal server error`, the cause
only in our log).  Any other path under `/_electric/` is a 404 with an empty
body, as upstream's router fall-through.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger("pullwake.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

INVALID_REQUEST = "INVALID_REQUEST"
UNAUTHORIZED = "UNAUTHORIZED"
NOT_FOUND = "NOT_FOUND"
NOT_RUNNING = "NOT_RUNNING"
INTERNAL = "INTERNAL_SERVER_ERROR"
UNKNOWN_ENTITY_TYPE = "UNKNOWN_ENTITY_TYPE"
WAKE_CALLBACK_NOT_FOUND = "WAKE_CALLBACK_NOT_FOUND"
WAKE_CALLBACK_FAILED = "WAKE_CALLBACK_FAILED"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
JSON_UTF8 = "application/json; charset=utf-8"


class ApiError(Exception):
    """A client-visible failure: status, code, message, optional details."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


class EmptyNotFound(Exception):
    """Upstream's router fall-through: 404, no body."""


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """JSON as upstream's itty-router `json()`: compact, utf-8 content type."""
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    resp = web.Response(text=text, status=status, headers=headers)
    resp.headers["Content-Type"] = JSON_UTF8
    return resp


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    err: dict[str, Any] = {"code": code, "message": message}
    if details:
        err["details"] = details
    return json_response({"error": err}, status, headers)


def bad_request(message: str, details: Any = None) -> ApiError:
    return ApiError(400, INVALID_REQUEST, message, details)


def forbidden(message: str) -> ApiError:
    """Upstream's 403s carry the code UNAUTHORIZED (it has no FORBIDDEN)."""
    return ApiError(403, UNAUTHORIZED, message)


def not_found(message: str, code: str = NOT_FOUND) -> ApiError:
    return ApiError(404, code, message)


def empty_not_found() -> web.Response:
    return web.Response(status=404)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
    except EmptyNotFound:
        return empty_not_found()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        electric = request.path.startswith("/_electric/") or request.path == "/_electric"
        if electric and exc.status in (404, 405):
            return empty_not_found()  # no such route upstream: bare 404
        if exc.status == 413:
            return error_response(413, PAYLOAD_TOO_LARGE, exc.reason)
        raise
    except (HttpProcessingError, web.RequestPayloadError) as exc:  # e.g. a bad gzip body
        if request.path.startswith("/_electric"):
            return error_response(400, INVALID_REQUEST, "Invalid request body")
        code = getattr(exc, "code", 400)
        resp = web.Response(status=code if 400 <= code < 500 else 400, body=b"Bad Request")
        resp.headers["Content-Type"] = "text/plain"
        return resp
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, INTERNAL, "Internal server error")
