"""The Durable Streams HTTP protocol on aiohttp, as `@durable-streams/server` 0.3.7 speaks it.

PUT create, POST append (producers, `Stream-Seq`, close), GET read (catch-up
with ETag/304 and compression, long-poll -> 204 on timeout, SSE with one
`event: data` per stored message and an `event: control` after each batch),
HEAD, DELETE, and `/__ds/subscriptions/...` + `/__ds/jwks.json`.  Status
codes, headers and text/plain bodies follow the reference server.

Mounted twice: `/v1/stream/<path>` (the DS origin, with DS's own CORS headers)
and `/<path>` (as the agents-server proxies every path not under
`/_electric/`: its CORS headers, bodies never compressed).  Both name the same
stream `<path>`.

Idle SSE: upstream writes nothing while idle except a pair of control events
every long-poll timeout.  pullwake by default adds an SSE comment every
`keepalive_interval` and a `Stream-Keepalive-Interval` header (the runner's
watchdog uses them) and sends one control event per timeout instead of the pair;
`DSConfig(compat_upstream=True)` turns all that off so the idle behaviour is
exactly upstream's.  Live reads are reported to a
`LiveObserver` (opened/closed/touched per path) for the server's own view.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import logging
import math
import random
import re
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

import aiohttp
from aiohttp import web

from pullwake.server.ds.signing import WEBHOOK_KEYS
from pullwake.server.ds.store import (
    OFFSET_NOW,
    OFFSET_RE,
    DSStore,
    Message,
    Producer,
    ReadResult,
    StoreError,
    drain,
    format_body,
    message_items,
    normalize_content_type,
    parse_expires_at,
)
from pullwake.server.ds.subscriptions import (
    Subscription,
    SubscriptionError,
    SubscriptionManager,
    normalize_path,
)

log = logging.getLogger("pullwake.server.ds.http")

DS_PREFIX = "/v1/stream/"
COMPRESSION_THRESHOLD = 1024
CURSOR_EPOCH_MS = 1728432000000  # 2024-10-09T00:00:00Z
CURSOR_INTERVAL_S = 20
H_KEEPALIVE = "Stream-Keepalive-Interval"

DS_CORS = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "GET, POST, PUT, DELETE, HEAD, OPTIONS",
    "access-control-allow-headers": (
        "content-type, authorization, if-none-match, Stream-Seq, Stream-TTL, Stream-Expires-At, "
        "Stream-Closed, Producer-Id, Producer-Epoch, Producer-Seq, Stream-Forked-From, "
        "Stream-Fork-Offset, Stream-Fork-Sub-Offset"
    ),
    "access-control-expose-headers": (
        "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, "
        "Producer-Epoch, Producer-Seq, Producer-Expected-Seq, Producer-Received-Seq, "
        "etag, content-type, content-encoding, vary"
    ),
}
# What the agents-server's proxy puts on DS answers at its root (probe 07-reads).
PROXY_CORS = {
    "access-control-allow-headers": (
        "content-type, authorization, electric-claim-token, electric-owner-entity, "
        "electric-principal, ngrok-skip-browser-warning"
    ),
    "access-control-allow-methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
    "access-control-allow-origin": "*",
    "access-control-expose-headers": "*",
}
SECURITY = {"x-content-type-options": "nosniff", "cross-origin-resource-policy": "cross-origin"}
_DS_COMMON = {**DS_CORS, **SECURITY}  # on every answer (unless the handler set one)
_PROXY_COMMON = {**PROXY_CORS, **SECURITY}
_TTL_RE = re.compile(r"^(0|[1-9]\d*)$")
_INT_RE = re.compile(r"^\d+$")
_CT_RE = re.compile(r"^[\w-]+/[\w-]+")


class LiveObserver(Protocol):
    """Told about reads per DS path (the server's own view, metrics). Must not raise."""

    def live_opened(self, path: str, mode: str) -> None: ...

    def live_closed(self, path: str, mode: str) -> None: ...

    def live_touched(self, path: str) -> None:
        """Data was delivered on a live read."""

    def caught_up(self, path: str) -> None:
        """A catch-up (non-live) read happened."""


class NullLiveObserver:
    def live_opened(self, path: str, mode: str) -> None:
        pass

    def live_closed(self, path: str, mode: str) -> None:
        pass

    def live_touched(self, path: str) -> None:
        pass

    def caught_up(self, path: str) -> None:
        pass


@dataclass(frozen=True)
class DSConfig:
    long_poll_timeout: float = 30.0  # upstream default; also the idle SSE control interval
    compat_upstream: bool = False  # idle SSE exactly as upstream: no comments, no header
    keepalive_interval: float = 15.0  # SSE comment this often (not in compat mode)
    sse_rotate_seconds: float | None = None  # end SSE responses after this (None: never)
    compression: bool = True  # gzip/deflate >= 1 KiB on /v1/stream (never at the root)
    max_body_bytes: int = 64 * 1024 * 1024
    cursor_interval_s: int = CURSOR_INTERVAL_S


Guard = Callable[[web.Request, str], Awaitable[None] | None]


@dataclass
class DSServer:
    """Everything the routes need; build with `DSServer.open(db_path, config)`."""

    store: DSStore
    subs: SubscriptionManager
    config: DSConfig = field(default_factory=DSConfig)
    observer: LiveObserver = field(default_factory=NullLiveObserver)
    guard: Guard | None = None  # e.g. bearer-token auth; may raise web.HTTPException
    base_url: str | None = None  # public URL for Location/callbacks (else from the request)
    _session: aiohttp.ClientSession | None = None
    _closing: bool = False

    @staticmethod
    def open(db_path: str, config: DSConfig | None = None, *, webhooks: bool = True) -> DSServer:
        store = DSStore(db_path)
        srv = DSServer(store=store, subs=SubscriptionManager(store, webhooks=webhooks))
        if config is not None:
            srv.config = config
        srv.subs._sender = srv._send_webhook
        return srv

    async def startup(self) -> None:
        await self.subs.start()

    async def shutdown(self) -> None:
        """on_shutdown: end live reads now, stop timers."""
        self._closing = True
        self.store.close_all()
        self.subs.shutdown()
        if self._session is not None:
            await self._session.close()

    def close(self) -> None:
        """After the app stopped: join the writer thread, close SQLite."""
        self.store.close()

    async def _send_webhook(self, sub: Subscription, body: str) -> tuple[bool, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        assert sub.webhook_url is not None
        headers = {
            "content-type": "application/json",
            "webhook-signature": WEBHOOK_KEYS.signature_header(body),
        }
        async with self._session.post(sub.webhook_url, data=body, headers=headers) as resp:
            if not 200 <= resp.status < 300:
                return False, None
            try:
                return True, json.loads(await resp.read())
            except ValueError:
                return True, None


DS_SERVER: web.AppKey[DSServer] = web.AppKey("pullwake_ds_server", DSServer)


# --- helpers -------------------------------------------------------------------------
def calculate_cursor(interval_s: int = CURSOR_INTERVAL_S) -> int:
    return (int(time.time() * 1000) - CURSOR_EPOCH_MS) // (interval_s * 1000)


def response_cursor(client: str | None, interval_s: int = CURSOR_INTERVAL_S) -> str:
    """Upstream's cache-busting cursor: the interval number, jittered past the client's."""
    cur = calculate_cursor(interval_s)
    if not client:
        return str(cur)
    m = re.match(r"^\s*[+-]?\d+", client)
    if m is None or int(m.group(0)) < cur:
        return str(cur)
    jitter = 1 + random.randint(0, 3599)
    return str(int(m.group(0)) + max(1, math.ceil(jitter / interval_s)))


def text(status: int, body: str = "", headers: dict[str, str] | None = None) -> web.Response:
    h = {"content-type": "text/plain"}
    h.update(headers or {})
    return web.Response(status=status, body=body.encode(), headers=h)


def empty(status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, headers=headers or {})


def json_response(status: int, body: Any) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        headers={"content-type": "application/json"},
    )


def sse_data(payload: str) -> str:
    """Each line of the payload becomes its own `data:` line (no space: exact bytes)."""
    lines = re.split(r"\r\n|\r|\n", payload)
    return "".join(f"data:{line}\n" for line in lines) + "\n"


def _etag_path(rel: str) -> str:
    return base64.b64encode((DS_PREFIX + rel).encode()).decode()


@dataclass(frozen=True)
class Target:
    rel: str  # DS-relative path
    ds_origin: bool  # under /v1/stream (else the agents-server style root)
    full: str  # the request's raw path


def target_of(request: web.Request) -> Target:
    raw = request.raw_path.split("?", 1)[0]
    if raw.startswith(DS_PREFIX):
        return Target(raw[len(DS_PREFIX) :], True, raw)
    return Target(raw.lstrip("/"), False, raw)


# --- the handler ---------------------------------------------------------------------
async def handle(request: web.Request) -> web.StreamResponse:
    ds = request.app[DS_SERVER]
    t = target_of(request)
    if ds.base_url is None:
        ds.subs.base_url = f"{request.scheme}://{request.host}"
    resp = await _dispatch(ds, request, t)
    if resp.prepared:  # SSE: headers went out with the first bytes
        return resp
    h = resp.headers
    for k, v in (_DS_COMMON if t.ds_origin else _PROXY_COMMON).items():
        if k not in h:
            h[k] = v
    return resp


async def _dispatch(ds: DSServer, request: web.Request, t: Target) -> web.StreamResponse:
    method = request.method.upper()
    if method == "OPTIONS":
        return empty(204)
    if ds.guard is not None:
        res = ds.guard(request, t.rel)
        if res is not None:
            await res
    if t.rel == "__ds" or t.rel.startswith("__ds/"):
        return await _subscriptions(ds, request, t.rel, method)
    try:
        if method == "PUT":
            return await _create(ds, request, t)
        if method == "HEAD":
            return await _head(ds, t)
        if method == "GET":
            return await _read(ds, request, t)
        if method == "POST":
            return await _append(ds, request, t)
        if method == "DELETE":
            if not await ds.store.delete(t.rel):
                return text(404, "Stream not found")
            return empty(204)  # subscriptions unlink it through store.on_delete
    except StoreError as exc:
        return text(exc.status, exc.text, exc.headers)
    return text(405, "Method not allowed")


async def _body(ds: DSServer, request: web.Request) -> bytes:
    content = request.content
    if content.is_eof():  # a small body usually arrived with the headers: no iteration
        data = content.read_nowait()
        if len(data) > ds.config.max_body_bytes:
            raise StoreError(413, "Payload too large")
        return data
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_any():
        size += len(chunk)
        if size > ds.config.max_body_bytes:
            raise StoreError(413, "Payload too large")
        chunks.append(chunk)
    return b"".join(chunks)


def _location(ds: DSServer, request: web.Request, t: Target) -> str:
    base = ds.base_url or f"{request.scheme}://{request.host}"
    return base.rstrip("/") + t.full


async def _create(ds: DSServer, request: web.Request, t: Target) -> web.StreamResponse:
    h = request.headers
    ct: str | None = h.get("content-type")
    forked_from = h.get("Stream-Forked-From")
    fork_offset = h.get("Stream-Fork-Offset")
    sub_raw = h.get("Stream-Fork-Sub-Offset")
    if not ct or not ct.strip() or not _CT_RE.match(ct):
        ct = None if forked_from else "application/octet-stream"
    ttl_h, exp_h = h.get("Stream-TTL"), h.get("Stream-Expires-At")
    closed = h.get("Stream-Closed") == "true"
    if ttl_h and exp_h:
        return text(400, "Cannot specify both Stream-TTL and Stream-Expires-At")
    ttl = None
    if ttl_h:
        if not _TTL_RE.match(ttl_h):
            return text(400, "Invalid Stream-TTL value")
        ttl = int(ttl_h)
    if exp_h and parse_expires_at(exp_h) is None:
        return text(400, "Invalid Stream-Expires-At timestamp")
    if fork_offset and not re.match(r"^\d+_\d+$", fork_offset):
        return text(400, "Invalid Stream-Fork-Offset format")
    sub_offset = None
    if sub_raw is not None:
        if not forked_from:
            return text(400, "Stream-Fork-Sub-Offset requires Stream-Forked-From")
        if not _TTL_RE.match(sub_raw):
            return text(400, "Invalid Stream-Fork-Sub-Offset format")
        sub_offset = int(sub_raw)
    body = await _body(ds, request)
    res = await ds.store.create(
        t.rel,
        content_type=ct,
        ttl_seconds=ttl,
        expires_at=exp_h or None,
        initial=body,
        closed=closed,
        forked_from=normalize_fork_source(forked_from) if forked_from else None,
        fork_offset=fork_offset or None,
        fork_sub_offset=sub_offset,
    )
    headers = {
        "content-type": res.info.content_type or ct or "application/octet-stream",
        "Stream-Next-Offset": res.info.offset,
    }
    if res.created:
        headers["location"] = _location(ds, request, t)
    if res.info.closed:
        headers["Stream-Closed"] = "true"
    return empty(201 if res.created else 200, headers)


def normalize_fork_source(source: str) -> str:
    """`Stream-Forked-From` names a URL path (`/v1/stream/x`) or a DS path (`x`)."""
    raw = source.split("?", 1)[0]
    if raw.startswith(DS_PREFIX):
        return raw[len(DS_PREFIX) :]
    return raw.lstrip("/")


async def _head(ds: DSServer, t: Target) -> web.StreamResponse:
    try:
        m = await ds.store.head(t.rel)
    except StoreError as exc:
        return empty(exc.status, {"content-type": "text/plain"})
    headers = {"Stream-Next-Offset": m.offset, "cache-control": "no-store"}
    if m.content_type:
        headers["content-type"] = m.content_type
    if m.closed:
        headers["Stream-Closed"] = "true"
    if m.ttl_seconds is not None:
        headers["Stream-TTL"] = str(m.ttl_seconds)
    if m.expires_at:
        headers["Stream-Expires-At"] = m.expires_at
    suffix = ":c" if m.closed else ""
    headers["etag"] = f'"{_etag_path(t.rel)}:-1:{m.offset}{suffix}"'
    return empty(200, headers)


def _producer(request: web.Request) -> Producer | web.Response | None:
    h = request.headers
    pid, ep, sq = h.get("Producer-Id"), h.get("Producer-Epoch"), h.get("Producer-Seq")
    if pid is None and ep is None and sq is None:
        return None
    if pid is None or ep is None or sq is None:
        return text(
            400,
            "All producer headers (Producer-Id, Producer-Epoch, Producer-Seq) "
            "must be provided together",
        )
    if pid == "":
        return text(400, "Invalid Producer-Id: must not be empty")
    if not _INT_RE.match(ep) or int(ep) > 2**53 - 1:
        return text(400, "Invalid Producer-Epoch: must be a non-negative integer")
    if not _INT_RE.match(sq) or int(sq) > 2**53 - 1:
        return text(400, "Invalid Producer-Seq: must be a non-negative integer")
    return Producer(pid, int(ep), int(sq))


def _producer_failure(res: Any, p: Producer | None) -> web.Response | None:
    if res.status == "stale_epoch":
        return text(403, "Stale producer epoch", {"Producer-Epoch": str(res.current_epoch)})
    if res.status == "invalid_epoch_seq":
        return text(400, "New epoch must start with sequence 0")
    if res.status == "sequence_gap":
        return text(
            409,
            "Producer sequence gap",
            {
                "Producer-Expected-Seq": str(res.expected_seq),
                "Producer-Received-Seq": str(res.received_seq),
            },
        )
    return None


async def _append(ds: DSServer, request: web.Request, t: Target) -> web.StreamResponse:
    ct = request.headers.get("content-type")
    seq = request.headers.get("Stream-Seq")
    close = request.headers.get("Stream-Closed") == "true"
    p = _producer(request)
    if isinstance(p, web.Response):
        return p
    body = await _body(ds, request)
    if not body and close:
        res = await ds.store.close_stream(t.rel, p)
        ds.store.touch(t.rel)  # a write: slides the TTL (the reference forgets this one)
        if p is not None:
            if res.status == "duplicate":
                return empty(
                    204,
                    {
                        "Stream-Next-Offset": res.offset,
                        "Stream-Closed": "true",
                        "Producer-Epoch": str(p.epoch),
                        "Producer-Seq": str(res.last_seq),
                    },
                )
            fail = _producer_failure(res, p)
            if fail is not None:
                return fail
            if res.status == "closed":
                return text(
                    409,
                    "Stream is closed",
                    {"Stream-Closed": "true", "Stream-Next-Offset": res.offset},
                )
            return empty(
                204,
                {
                    "Stream-Next-Offset": res.offset,
                    "Stream-Closed": "true",
                    "Producer-Epoch": str(p.epoch),
                    "Producer-Seq": str(p.seq),
                },
            )
        return empty(204, {"Stream-Next-Offset": res.offset, "Stream-Closed": "true"})
    if not body:
        return text(400, "Empty body")
    if not ct:
        return text(400, "Content-Type header is required")
    res = await ds.store.append(t.rel, body, content_type=ct, seq=seq, producer=p, close=close)
    ds.store.touch(t.rel)
    if res.status == "closed":
        return text(
            409, "Stream is closed", {"Stream-Closed": "true", "Stream-Next-Offset": res.offset}
        )
    if res.status == "duplicate":
        assert p is not None
        headers = {"Producer-Epoch": str(p.epoch), "Producer-Seq": str(res.last_seq)}
        if res.closed:
            headers["Stream-Closed"] = "true"
            headers["Stream-Next-Offset"] = res.offset
        return empty(204, headers)
    fail = _producer_failure(res, p)
    if fail is not None:
        return fail
    headers = {"Stream-Next-Offset": res.offset}
    if p is not None:
        headers["Producer-Epoch"] = str(p.epoch)
        headers["Producer-Seq"] = str(p.seq)
    if close:
        headers["Stream-Closed"] = "true"
    return empty(200 if p is not None else 204, headers)


def _is_json(ct: str | None) -> bool:
    return ct is not None and "application/json" in ct


def _compress(
    ds: DSServer, request: web.Request, t: Target, data: bytes, headers: dict[str, str]
) -> bytes:
    if not (ds.config.compression and t.ds_origin and len(data) >= COMPRESSION_THRESHOLD):
        return data
    raw = request.headers.get("accept-encoding", "").lower()
    accept = [e.split(";")[0].strip() for e in raw.split(",")]
    if "gzip" in accept:
        headers["content-encoding"], headers["vary"] = "gzip", "accept-encoding"
        return gzip.compress(data, mtime=0)
    if "deflate" in accept:
        headers["content-encoding"], headers["vary"] = "deflate", "accept-encoding"
        return zlib.compress(data)
    return data


async def _read(ds: DSServer, request: web.Request, t: Target) -> web.StreamResponse:
    store = ds.store
    m = await store.head(t.rel)  # 404 / 410
    q = request.query
    offsets = q.getall("offset", [])
    offset = offsets[0] if offsets else None
    live = q.get("live")
    cursor = q.get("cursor")
    if offset is not None:
        if offset == "":
            return text(400, "Empty offset parameter")
        if len(offsets) > 1:
            return text(400, "Multiple offset parameters not allowed")
        if not OFFSET_RE.match(offset):
            return text(400, "Invalid offset format")
    if live in ("long-poll", "sse") and not offset:
        return text(400, f"{'SSE' if live == 'sse' else 'Long-poll'} requires offset parameter")
    if live == "sse":
        assert offset is not None
        start = m.offset if offset == OFFSET_NOW else offset
        ct = normalize_content_type(m.content_type)
        b64 = not (ct.startswith("text/") or ct == "application/json")
        return await _sse(ds, request, t, start, cursor, b64, m.content_type)
    effective = m.offset if offset == OFFSET_NOW else offset
    if offset == OFFSET_NOW and live != "long-poll":
        headers = {
            "Stream-Next-Offset": m.offset,
            "Stream-Up-To-Date": "true",
            "cache-control": "no-store",
        }
        if m.content_type:
            headers["content-type"] = m.content_type
        if m.closed:
            headers["Stream-Closed"] = "true"
        store.touch(t.rel)  # a read: slides the TTL (the reference forgets this one)
        ds.observer.caught_up(t.rel)
        return web.Response(
            status=200, body=b"[]" if _is_json(m.content_type) else b"", headers=headers
        )
    res = await store.read(t.rel, effective or "-1")
    caught_up = (effective is not None and effective == res.tail) or offset == OFFSET_NOW
    if live == "long-poll" and caught_up and not res.messages:
        polled = await _long_poll(ds, t, effective or res.tail, cursor)
        if isinstance(polled, web.Response):
            return polled
        res = polled
    elif live != "long-poll":
        ds.observer.caught_up(t.rel)
    headers = {}
    if res.content_type:
        headers["content-type"] = res.content_type
    headers["Stream-Next-Offset"] = res.next_offset
    if live == "long-poll":
        headers["Stream-Cursor"] = response_cursor(cursor, ds.config.cursor_interval_s)
    if res.up_to_date:
        headers["Stream-Up-To-Date"] = "true"
    closed_now = res.closed and res.at_tail
    if closed_now:
        headers["Stream-Closed"] = "true"
    etag = f'"{_etag_path(t.rel)}:{offset or "-1"}:{res.next_offset}{":c" if closed_now else ""}"'
    headers["etag"] = etag
    if request.headers.get("if-none-match") == etag:
        return empty(304, {"etag": etag})
    data = format_body(res.messages, _is_json(res.content_type))
    data = _compress(ds, request, t, data, headers)
    return web.Response(status=200, body=data, headers=headers)


async def _long_poll(
    ds: DSServer, t: Target, offset: str, cursor: str | None
) -> web.Response | ReadResult:
    """Wait at the tail: a ReadResult with data, or the 204 to send."""
    store = ds.store
    m = await store.head(t.rel)
    if m.closed:
        return empty(
            204,
            {"Stream-Next-Offset": m.offset, "Stream-Up-To-Date": "true", "Stream-Closed": "true"},
        )
    deadline = time.monotonic() + ds.config.long_poll_timeout
    ds.observer.live_opened(t.rel, "long-poll")
    store.follow(t.rel)  # new data is handed over in memory while we wait
    try:
        while True:
            remaining = deadline - time.monotonic()
            changed = remaining > 0 and await store.wait(t.rel, offset, remaining)
            closing = ds._closing or store.notifier.closing
            if changed and not closing:
                res = await store.read(t.rel, offset)
                if res.messages:
                    ds.observer.live_touched(t.rel)
                    return res
                if not res.closed:
                    continue
            head = {
                "Stream-Next-Offset": offset,
                "Stream-Up-To-Date": "true",
                "Stream-Cursor": response_cursor(cursor, ds.config.cursor_interval_s),
            }
            with contextlib.suppress(StoreError):
                if (await store.head(t.rel)).closed:
                    head["Stream-Closed"] = "true"
            return empty(204, head)
    finally:
        store.unfollow(t.rel)
        ds.observer.live_closed(t.rel, "long-poll")


def _sse_payload(msg: Message, b64: bool, json_mode: bool) -> str:
    if b64:
        return base64.b64encode(msg.data).decode()
    if json_mode:
        return "[" + message_items(msg).decode("utf-8", "replace") + "]"
    return msg.data.decode("utf-8", "replace")


async def _sse(
    ds: DSServer,
    request: web.Request,
    t: Target,
    offset: str,
    cursor: str | None,
    b64: bool,
    content_type: str | None,
) -> web.StreamResponse:
    cfg, store = ds.config, ds.store
    headers = {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        "connection": "keep-alive",
    }
    if b64:
        headers["Stream-SSE-Data-Encoding"] = "base64"
    keepalive = not cfg.compat_upstream and cfg.keepalive_interval > 0
    if keepalive:
        headers[H_KEEPALIVE] = f"{cfg.keepalive_interval:g}"
    common = dict(DS_CORS if t.ds_origin else PROXY_CORS)
    common.update(SECURITY)
    common.update(headers)
    resp = web.StreamResponse(status=200, headers=common)
    await resp.prepare(request)
    json_mode = _is_json(content_type)
    paired = not cfg.compat_upstream
    rotate_at = (
        None if cfg.sse_rotate_seconds is None else time.monotonic() + cfg.sse_rotate_seconds
    )
    ds.observer.live_opened(t.rel, "sse")
    store.follow(t.rel)  # new data is handed over in memory while we wait

    def control(off: str, closed: bool, up_to_date: bool) -> str:
        data: dict[str, Any] = {"streamNextOffset": off}
        if closed:
            data["streamClosed"] = True
        else:
            data["streamCursor"] = response_cursor(cursor, cfg.cursor_interval_s)
            if up_to_date:
                data["upToDate"] = True
        return "event: control\n" + sse_data(json.dumps(data, separators=(",", ":")))

    try:
        current = offset
        while not (ds._closing or store.notifier.closing):
            res = await store.read(t.rel, current)
            out = []
            for i, msg in enumerate(res.messages):
                out.append("event: data\n" + sse_data(_sse_payload(msg, b64, json_mode)))
                if paired and i < len(res.messages) - 1:
                    # protocol 5.8: a control event after every data event (upstream
                    # 0.3.7 sends one per batch; --compat upstream keeps that)
                    out.append(control(msg.offset, False, False))
            if res.messages:
                ds.observer.live_touched(t.rel)
            at_tail_closed = res.closed and res.at_tail
            out.append(control(res.next_offset, at_tail_closed, res.up_to_date))
            await resp.write("".join(out).encode())
            if at_tail_closed:
                break
            current = res.next_offset
            if not res.up_to_date:
                continue  # a capped read: more right away
            # caught up: wait for more (upstream: up to the long-poll timeout, then a
            # keep-alive control event; pullwake mode: comments in between)
            deadline = time.monotonic() + cfg.long_poll_timeout
            changed = False
            while True:
                remaining = deadline - time.monotonic()
                if rotate_at is not None:
                    remaining = min(remaining, rotate_at - time.monotonic())
                step = min(remaining, cfg.keepalive_interval) if keepalive else remaining
                if step > 0 and await store.wait(t.rel, current, step):
                    changed = True
                    break
                if ds._closing or store.notifier.closing:
                    break
                if rotate_at is not None and time.monotonic() >= rotate_at:
                    break
                if time.monotonic() >= deadline:
                    break
                await resp.write(b": keepalive\n\n")
            if ds._closing or store.notifier.closing:
                break
            if rotate_at is not None and time.monotonic() >= rotate_at:
                await resp.write(b": rotate\n\n")  # planned end: the runner says `rotated`
                break
            if not changed and not paired:
                # upstream: a control event at the timeout, then another after the re-read
                # below (a pair); pullwake mode sends only the re-read's one (its idle
                # bytes are the keepalive comments plus one control per timeout)
                try:
                    closed = (await store.head(t.rel)).closed
                except StoreError:
                    break
                await resp.write(control(current, closed, True).encode())
                if closed:
                    break
    except (ConnectionResetError, StoreError):
        pass
    finally:
        store.unfollow(t.rel)
        ds.observer.live_closed(t.rel, "sse")
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()
    return resp


# --- subscriptions ---------------------------------------------------------------------
async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    return json.loads(raw.decode("utf-8", "replace"))


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("authorization")
    if not auth or not auth.startswith("Bearer "):
        return None
    return auth[len("Bearer ") :]


def _sub_error(status: int, code: str, message: str) -> web.Response:
    return json_response(status, {"error": {"code": code, "message": message}})


async def _subscriptions(
    ds: DSServer, request: web.Request, rel: str, method: str
) -> web.StreamResponse:
    subs = ds.subs
    if rel == "__ds/jwks.json":
        if method != "GET":
            return text(405, "Method not allowed")
        return web.Response(
            status=200,
            body=json.dumps(WEBHOOK_KEYS.jwks(), separators=(",", ":")).encode(),
            headers={
                "content-type": "application/jwk-set+json",
                "cache-control": "public, max-age=300",
            },
        )
    prefix = "__ds/subscriptions/"
    route = None
    if rel.startswith(prefix):
        parts = rel[len(prefix) :].split("/")
        sub_id = unquote(parts[0]) if parts[0] else ""
        tail = parts[1:]
        if sub_id:
            if not tail:
                route = ("base", sub_id, "")
            elif tail[0] == "streams" and len(tail) == 1:
                route = ("streams", sub_id, "")
            elif tail[0] == "streams":
                route = ("stream", sub_id, normalize_path(unquote("/".join(tail[1:]))))
            elif len(tail) == 1 and tail[0] in ("callback", "claim", "ack", "release"):
                route = (tail[0], sub_id, "")
    if route is None:
        return _sub_error(404, "SUBSCRIPTION_NOT_FOUND", "Durable Streams control route not found")
    action, sub_id, stream = route
    try:
        if action == "base":
            if method == "PUT":
                body, created = await subs.put(sub_id, await _json_body(request))
                return json_response(201 if created else 200, body)
            if method == "GET":
                return json_response(200, subs.get(sub_id))
            if method == "DELETE":
                await subs.delete(sub_id)
                return empty(204)
            return text(405, "Method not allowed")
        if action == "streams":
            if method != "POST":
                return text(405, "Method not allowed")
            parsed = await _json_body(request)
            streams = parsed.get("streams") if isinstance(parsed, dict) else None
            if not isinstance(streams, list) or any(
                not isinstance(s, str) or not s for s in streams
            ):
                return _sub_error(
                    400, "INVALID_REQUEST", "streams must be a non-empty string array"
                )
            await subs.add_streams(sub_id, [normalize_path(s) for s in streams])
            return empty(204)
        if action == "stream":
            if method != "DELETE":
                return text(405, "Method not allowed")
            await subs.remove_stream(sub_id, stream)
            return empty(204)
        if action == "claim":
            parsed = await _json_body(request)
            worker = parsed.get("worker") if isinstance(parsed, dict) else None
            if not isinstance(worker, str) or not worker:
                return _sub_error(400, "INVALID_REQUEST", "worker must be a non-empty string")
            return json_response(200, await subs.claim(sub_id, worker))
        token = _bearer(request)
        if not token:
            return _sub_error(401, "TOKEN_INVALID", "Missing or malformed Authorization header")
        parsed = await _json_body(request)
        req = parsed if isinstance(parsed, dict) else {}
        if action == "ack":
            return json_response(200, await subs.ack(sub_id, token, req))
        if action == "callback":
            return json_response(200, await subs.callback(sub_id, token, req))
        await subs.release(sub_id, token, req)
        return empty(204)
    except SubscriptionError as exc:
        return json_response(exc.status, exc.body())
    except ValueError:
        return _sub_error(400, "INVALID_REQUEST", "Invalid JSON body")


# --- wiring ---------------------------------------------------------------------------
RESERVED_ROOTS = ("_electric", "metrics", "healthz", "readyz")


def add_routes(
    app: web.Application,
    ds: DSServer,
    *,
    root: bool = True,
    reserved: tuple[str, ...] = RESERVED_ROOTS,
) -> None:
    """Mount the DS protocol at `/v1/stream/...` and (root=True) at every other path
    except `reserved` first segments.  Add it LAST (the root route is a catch-all).
    Registers startup/shutdown/cleanup on the app."""
    app[DS_SERVER] = ds
    app.router.add_route("*", "/v1/stream/{tail:.*}", handle)
    if root:
        alt = "|".join(re.escape(r) for r in reserved)
        app.router.add_route("*", rf"/{{tail:(?!(?:{alt})(?:/|$)).*}}", handle)

    async def on_startup(app: web.Application) -> None:
        await ds.startup()

    async def on_shutdown(app: web.Application) -> None:
        await ds.shutdown()

    async def on_cleanup(app: web.Application) -> None:
        await drain(2.0)  # store calls and subscription operations still finishing
        ds.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)


def create_app(ds: DSServer, *, client_max_size: int = 64 * 1024 * 1024) -> web.Application:
    """A stand-alone DS application (tests, `python -m pullwake.server.ds`)."""
    app = web.Application(client_max_size=client_max_size)
    add_routes(app, ds)
    return app
