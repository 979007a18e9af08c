"""Reading request bodies as upstream's `withSchema` middleware does.

The body is parsed as JSON whatever its content type; an empty or
whitespace body is `{}`; unparsable -> 400 `Invalid JSON body`; a schema
mismatch -> 400 `Request body does not match API schema` with Ajv-style
details.  Ours on top (no upstream client can tell): a body over
MAX_BODY_BYTES is 413, and one that stops arriving is 408 after
BODY_READ_SECONDS instead of holding a handler forever.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from pullwake.core.protocol import MAX_BODY_BYTES
from pullwake.server import schema
from pullwake.server.errors import INVALID_REQUEST, PAYLOAD_TOO_LARGE, ApiError, bad_request

# A body not complete by then is 408: slow clients, and broken chunked framing
# that arrives after the handler started reading (aiohttp never ends that read).
BODY_READ_SECONDS = 30.0
INVALID_JSON = "Invalid JSON body"
SCHEMA_MISMATCH = "Request body does not match API schema"


async def read_raw(request: web.Request) -> bytes:
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Not decoded upstream either (its JSON.parse then fails); refused before
        # reading, since a truncated deflate body can leave aiohttp's read hanging.
        raise bad_request(INVALID_JSON)
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise ApiError(413, PAYLOAD_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    total = 0
    try:
        async with asyncio.timeout(BODY_READ_SECONDS):
            while chunk := await request.content.read(65536):
                total += len(chunk)
                if total > MAX_BODY_BYTES:
                    raise ApiError(413, PAYLOAD_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
    except web.RequestPayloadError as exc:  # bad chunked framing
        msg = " ".join(str(exc).split())[:200]
        raise bad_request(f"cannot read the request body: {msg}") from None
    except TimeoutError:
        raise ApiError(
            408,
            INVALID_REQUEST,
            f"request body not complete within {BODY_READ_SECONDS:g} s",
            headers={"Connection": "close"},
        ) from None
    return b"".join(chunks)


def check(body: Any, sch: schema.Schema) -> Any:
    details = schema.validate(sch, body)
    if details:
        raise bad_request(SCHEMA_MISMATCH, details)
    return body


async def with_schema(request: web.Request, sch: schema.Schema) -> dict[str, Any]:
    """Upstream `withSchema`: JSON whatever the content type, empty = {}."""
    raw = await read_raw(request)
    if not raw.strip():
        body: Any = {}
    else:
        try:
            body = schema.parse_json(raw)
        except schema.InvalidJson:
            raise bad_request(INVALID_JSON) from None
    checked: dict[str, Any] = check(body, sch)
    return checked


async def optional_json(request: web.Request, sch: schema.Schema) -> dict[str, Any] | None:
    """Upstream `validateOptionalJsonBody` (wake callbacks): None = no body.

    Unparsable JSON is a 400 only when the content type says JSON; otherwise
    the body counts as absent.
    """
    raw = await read_raw(request)
    if not raw.strip():
        return None
    try:
        body = schema.parse_json(raw)
    except schema.InvalidJson:
        if "application/json" in request.headers.get("Content-Type", "").lower():
            raise bad_request(INVALID_JSON) from None
        return None
    checked: dict[str, Any] = check(body, sch)
    return checked
