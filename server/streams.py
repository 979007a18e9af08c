"""Wake stream reads: the Durable Streams read protocol.

Catch-up (`?offset=X`: JSON array, `Stream-Next-Offset`, `Stream-Up-To-Date`,
`ETag`/304), long-poll (`&live=long-poll`: 200 with data or 204 on timeout)
and SSE (`&live=sse`: `event: data` + `event: control`, an SSE comment at
least every keepalive interval, a clean end every `sse_rotate_seconds` and at
once on shutdown).  Live reads are counted in `LiveReads` while they are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from aiohttp import web

from pullwake.core.protocol import (
    H_CURSOR,
    H_KEEPALIVE,
    H_NEXT_OFFSET,
    H_UP_TO_DATE,
    ErrorCode,
    LiveMode,
    current_cursor,
)
from pullwake.server.auth import authenticate, check_owner
from pullwake.server.errors import ApiError, bad_request, not_found
from pullwake.server.records import BadOffset, OffsetGone, ReadResult, UnknownStream
from pullwake.server.state import ServerState, state_of
from pullwake.server.store import Store

MAX_PARAM = 128


def next_cursor(client_cursor: str | None) -> str:
    """The current cursor, strictly past the client's when it caught up (cache buster)."""
    cur = int(current_cursor())
    if client_cursor is not None and client_cursor.isdigit() and len(client_cursor) < 12:
        c = int(client_cursor)
        if cur <= c <= cur + 1000:
            cur = c + 1
    return str(cur)


def _param(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise bad_request(f"query parameter {name} given more than once")
    if not values:
        return None
    if len(values[0]) > MAX_PARAM:
        raise bad_request(f"query parameter {name} too long")
    return values[0]


async def _read(st: ServerState, path: str, offset: str) -> ReadResult:
    try:
        return await st.db.call(Store.read, path, offset)
    except BadOffset as exc:
        raise bad_request(str(exc), ErrorCode.INVALID_OFFSET) from None
    except OffsetGone as exc:
        raise ApiError(410, ErrorCode.OFFSET_GONE, str(exc)) from None
    except UnknownStream:
        raise not_found(f"no stream at {path}") from None


def _body(events: list[str]) -> str:
    return "[" + ",".join(events) + "]"


async def read_stream(request: web.Request) -> web.StreamResponse:
    st = state_of(request)
    principal = authenticate(request, st.config)
    path = request.path
    runner_id = await st.db.call(Store.stream_runner, path)
    if runner_id is None:
        raise not_found(f"no route or stream at {request.method} {path}")
    if request.method != "GET":
        raise ApiError(
            405,
            ErrorCode.METHOD_NOT_ALLOWED,
            f"wake streams are read with GET, not {request.method}",
            headers={"Allow": "GET"},
        )
    owner = await st.db.call(Store.get_runner, runner_id)
    if owner is not None:
        check_owner(principal, owner.owner, runner_id)
    offset = _param(request, "offset")
    live = _param(request, "live")
    cursor = _param(request, "cursor")
    if offset == "":
        raise bad_request("offset must not be empty", ErrorCode.INVALID_OFFSET)
    if live is None:
        return await _catch_up(request, st, path, runner_id, offset or "-1")
    if offset is None:
        raise bad_request("live reads need an offset", ErrorCode.INVALID_OFFSET)
    if live == LiveMode.LONG_POLL.value:
        return await _long_poll(st, path, runner_id, offset, cursor)
    if live == LiveMode.SSE.value:
        return await _sse(request, st, path, runner_id, offset, cursor)
    raise bad_request("live must be 'long-poll' or 'sse'")


async def _catch_up(
    request: web.Request, st: ServerState, path: str, runner_id: str, offset: str
) -> web.StreamResponse:
    res = await _read(st, path, offset)
    st.live.read_happened(runner_id)
    etag = f'"{offset}:{res.next_offset}"'
    headers = {H_NEXT_OFFSET: res.next_offset, "ETag": etag, "Cache-Control": "no-cache"}
    if res.up_to_date:
        headers[H_UP_TO_DATE] = "true"
    inm = request.headers.get("If-None-Match")
    if inm is not None and etag in [t.strip() for t in inm.split(",")]:
        return web.Response(status=304, headers=headers)
    return web.Response(text=_body(res.events), content_type="application/json", headers=headers)


async def _long_poll(
    st: ServerState, path: str, runner_id: str, offset: str, cursor: str | None
) -> web.StreamResponse:
    deadline = time.monotonic() + st.config.long_poll_timeout
    st.live.opened(runner_id, LiveMode.LONG_POLL)
    st.observer.live_read_opened(runner_id, LiveMode.LONG_POLL)
    try:
        while True:
            waiter = st.notifier.waiter(path)
            res = await _read(st, path, offset)
            offset = res.next_offset  # `now` resolves once, at the first read
            if res.events:
                st.live.touched(runner_id)
                headers = {H_NEXT_OFFSET: res.next_offset, H_CURSOR: next_cursor(cursor)}
                if res.up_to_date:
                    headers[H_UP_TO_DATE] = "true"
                return web.Response(
                    text=_body(res.events), content_type="application/json", headers=headers
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0 or st.notifier.closing:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), remaining)
        return web.Response(
            status=204,
            headers={
                H_NEXT_OFFSET: offset,
                H_UP_TO_DATE: "true",
                H_CURSOR: next_cursor(cursor),
            },
        )
    finally:
        st.live.closed(runner_id, LiveMode.LONG_POLL)
        st.observer.live_read_closed(runner_id, LiveMode.LONG_POLL)


def _sse_data(events: list[str]) -> bytes:
    return f"event: data\ndata: {_body(events)}\n\n".encode()


def _sse_control(next_offset: str, cursor: str, up_to_date: bool) -> bytes:
    ctl = {"streamNextOffset": next_offset, "streamCursor": cursor, "upToDate": up_to_date}
    return f"event: control\ndata: {json.dumps(ctl, separators=(',', ':'))}\n\n".encode()


async def _sse(
    request: web.Request,
    st: ServerState,
    path: str,
    runner_id: str,
    offset: str,
    cursor: str | None,
) -> web.StreamResponse:
    cfg = st.config
    waiter = st.notifier.waiter(path)
    res = await _read(st, path, offset)  # 400/404/410 before the 200 is committed
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            H_KEEPALIVE: f"{cfg.keepalive_interval:g}",
        }
    )
    await resp.prepare(request)
    st.live.opened(runner_id, LiveMode.SSE)
    st.observer.live_read_opened(runner_id, LiveMode.SSE)
    rotate_at = time.monotonic() + cfg.sse_rotate_seconds
    try:
        # First bytes at once: the client's idle watchdog starts from here,
        # and a control event tells it where it stands even with no data.
        head = b": connected\n\n" + (_sse_data(res.events) if res.events else b"")
        await resp.write(head + _sse_control(res.next_offset, next_cursor(cursor), res.up_to_date))
        last_write = time.monotonic()
        offset, up_to_date = res.next_offset, res.up_to_date
        while not st.notifier.closing:
            if up_to_date:
                now = time.monotonic()
                if now >= rotate_at:
                    await resp.write(b": rotate\n\n")  # planned: the runner says `rotated`
                    break
                timeout = min(last_write + cfg.keepalive_interval, rotate_at) - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), max(0.0, timeout))
                if st.notifier.closing:
                    break
                if not waiter.is_set():
                    if time.monotonic() >= last_write + cfg.keepalive_interval:
                        await resp.write(b": keepalive\n\n")
                        last_write = time.monotonic()
                    continue
            waiter = st.notifier.waiter(path)
            res = await _read(st, path, offset)
            if res.events:
                await resp.write(
                    _sse_data(res.events)
                    + _sse_control(res.next_offset, next_cursor(cursor), res.up_to_date)
                )
                last_write = time.monotonic()
                st.live.touched(runner_id)
            offset, up_to_date = res.next_offset, res.up_to_date
    except (ConnectionResetError, ApiError):
        pass  # client gone, or its offset fell out of retention: end; it reconnects
    finally:
        st.live.closed(runner_id, LiveMode.SSE)
        st.observer.live_read_closed(runner_id, LiveMode.SSE)
    return resp


# Paths a wake stream can never have: the API and the operational endpoints,
# so routes added after this catch-all (e.g. `/metrics`) still resolve.
RESERVED_PREFIXES = ("_electric", "metrics", "healthz", "readyz")
_RESERVED = "|".join(RESERVED_PREFIXES)


def add_routes(app: web.Application) -> None:
    """Last: every other path may be a wake stream."""
    app.router.add_route("*", rf"/{{tail:(?!(?:{_RESERVED})(?:/|$)).*}}", read_stream)
