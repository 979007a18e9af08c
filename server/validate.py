"""Request bodies and fields: parse, type-check, reject with a clear 4xx.

Pure functions over bytes and decoded JSON (plus one coroutine that reads
the body with the size limit), so the whole bad-input matrix is testable
without sockets.  Nothing here touches the store: a rejected request changes
nothing.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from aiohttp import web

from pullwake.core.protocol import (
    DIAGNOSTIC_ENUMS,
    DIAGNOSTIC_FIELDS,
    MAX_BODY_BYTES,
    RUNNER_ID_RE,
    ErrorCode,
)
from pullwake.server.errors import ApiError, bad_request

MAX_LEASE_MS = 24 * 3600 * 1000
# A body not complete by then is 408.  Slow clients, and broken chunked framing
# that arrives after the handler started reading: aiohttp then never ends the
# read (the connection would hold a handler until the client gives up).
BODY_READ_SECONDS = 30.0
MAX_TEXT = 1024  # label, kind, diagnostics strings


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """`1e400` parses to inf, which would be re-serialised as `Infinity`: not JSON."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def parse_json(raw: bytes) -> Any:
    """Decode strict JSON or raise 400.

    Strict means what we store can always be written back as valid UTF-8
    JSON: no NaN/Infinity, no number that overflows a float, no unpaired
    `\\ud800`-style surrogate escape (SQLite and every reader of the wake
    stream would choke on it), bounded nesting.
    """
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # unpaired surrogates raise
        return value
    except UnicodeEncodeError:
        raise bad_request("malformed JSON body: unpaired surrogate in a string") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise bad_request(f"malformed JSON body: {msg}") from None


def check_content_type(content_type: str) -> None:
    """JSON bodies only: `application/json` or any `+json` type."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(
            415,
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"expected Content-Type application/json, got {ctype or 'none'!r}",
        )


async def read_json_object(request: web.Request, *, required: bool) -> dict[str, Any]:
    """The request's JSON object body; `{}` for an empty optional body."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Refused before reading: a truncated deflate/gzip body can leave aiohttp's
        # body read waiting forever (measured: ~3 % of such requests never answered).
        raise ApiError(
            415,
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Encoding {encoding[:32]!r} is not supported; send plain JSON",
        )
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise ApiError(413, ErrorCode.PAYLOAD_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    total = 0
    try:
        async with asyncio.timeout(BODY_READ_SECONDS):
            while chunk := await request.content.read(65536):  # chunked: no length
                total += len(chunk)
                if total > MAX_BODY_BYTES:
                    raise ApiError(
                        413, ErrorCode.PAYLOAD_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes"
                    )
                chunks.append(chunk)
    except web.RequestPayloadError as exc:  # bad gzip, broken chunked framing
        msg = " ".join(str(exc).split())[:200]
        raise bad_request(f"cannot read the request body: {msg}") from None
    except TimeoutError:
        raise ApiError(
            408,
            ErrorCode.INVALID_REQUEST,
            f"request body not complete within {BODY_READ_SECONDS:g} s",
            headers={"Connection": "close"},
        ) from None
    raw = b"".join(chunks)
    if not raw.strip():
        if required:
            raise bad_request("a JSON object body is required")
        return {}
    check_content_type(request.headers.get("Content-Type", ""))
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise bad_request(f"body must be a JSON object, got {type(body).__name__}")
    return body


def runner_id(value: Any) -> str:
    if not isinstance(value, str) or not RUNNER_ID_RE.match(value):
        raise bad_request(
            "runner id must be 1-128 characters of letters, digits, '.', '_', ':', '-'"
        )
    return value


def opt_text(body: dict[str, Any], key: str, default: str | None = None) -> str | None:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise bad_request(f"{key} must be a string of at most {MAX_TEXT} characters")
    return value


def opt_int(body: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad_request(f"{key} must be an integer in [{lo}, {hi}]")
    return value


def wake_stream_path(value: Any, default: str) -> str:
    """A custom wake stream path: absolute, URL-safe, not a reserved path."""
    if value is None:
        return default
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or value.split("/")[1] in ("_electric", "metrics", "healthz", "readyz")
        or len(value) > 256
        or any(c in value for c in "?#&=, \\")
        or "//" in value
        or value == "/"
    ):
        raise bad_request(
            "wake_stream must be an absolute path outside /_electric, /metrics, /healthz, /readyz"
        )
    return value


def clean_diagnostics(value: Any) -> tuple[dict[str, Any], list[str]]:
    """Keep whitelisted, well-typed diagnostics; return (kept, dropped names).

    Unknown names, wrong types and values outside a closed enum are dropped,
    not stored: the runner's other fields still count.
    """
    if value is None:
        return {}, []
    if not isinstance(value, dict):
        raise bad_request("diagnostics must be a JSON object")
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, val in value.items():
        types = DIAGNOSTIC_FIELDS.get(key)
        ok = types is not None and (
            val is None
            or (isinstance(val, types) and not (isinstance(val, bool) and bool not in types))
        )
        if ok and isinstance(val, float) and not math.isfinite(val):
            ok = False
        if ok and isinstance(val, int | float) and not isinstance(val, bool) and val < 0:
            ok = False  # counters and durations; the original drops negatives too
        if ok and isinstance(val, str):
            ok = len(val) <= MAX_TEXT and (
                key not in DIAGNOSTIC_ENUMS or val in DIAGNOSTIC_ENUMS[key]
            )
        if ok:
            kept[key] = val
        else:
            dropped.append(str(key)[:64])
    return kept, sorted(dropped)
