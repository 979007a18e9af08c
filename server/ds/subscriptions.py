"""Durable Streams subscriptions: the pull-wake (and webhook) API the agents-server uses.

Semantics are those of `@durable-streams/server` 0.3.7's subscription manager
(upstream-protocol.md section 0.1): a per-subscription generation counter, at
most one wake at a time, pending = some linked stream's tail > its acked
offset, claim / ack / release, a lease reset by every ack, lease expiry ->
generation+1 and a new wake event, `done` with leftovers -> the next wake at
once.  Unlike upstream (memory only, random HMAC key per process) every state
change is persisted in the stream store's SQLite *in the same transaction* as
the wake event it produces, and the token key survives restarts: a kill -9
loses no acknowledged offset, no generation, no outstanding wake, and a claim
in flight stays valid.  `start()` re-arms lease timers and announces pending
work that has no wake.

All operations run on the event loop, one at a time per subscription (an
asyncio.Lock each); SQLite work goes through the store's writer thread.  An
append to a stream an idle subscription links is seen before its commit
(`DSStore.on_append_early`): the wake event it announces joins the append's
transaction, one flush for both.
The clock is injected (unix ms) so lease tests need no sleeping:
`expire_due()` applies every lease that has run out by the clock.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar
from urllib.parse import quote, urlsplit

from pullwake.server.ds.store import (
    OFFSET_START,
    ZERO_OFFSET,
    Appended,
    DSStore,
    StoreCore,
    now_ms,
    shielded,
)

log = logging.getLogger("pullwake.server.ds.subscriptions")

DEFAULT_LEASE_TTL_MS = 30_000
MIN_LEASE_TTL_MS = 1_000
MAX_LEASE_TTL_MS = 600_000
TOKEN_TTL_S = 3600
MAX_RETRY_DELAY_MS = 60_000
PULL_WAKE = "pull-wake"
WEBHOOK = "webhook"
_KEY_NAME = "subscriptions.hmac_key"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ds_subscriptions (id TEXT PRIMARY KEY, record TEXT NOT NULL);
"""


class SubscriptionError(Exception):
    """A refused subscription operation, as upstream answers it."""

    def __init__(self, status: int, code: str, message: str | None, **extra: Any) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """`{"error": {code, message, ...extra}}` (ALREADY_CLAIMED has no message)."""
        err: dict[str, Any] = {"code": self.code}
        if self.message is not None:
            err["message"] = self.message
        err.update(self.extra)
        return {"error": err}


def _err(status: int, code: str, message: str) -> SubscriptionError:
    return SubscriptionError(status, code, message)


def _not_found() -> SubscriptionError:
    return _err(404, "SUBSCRIPTION_NOT_FOUND", "Subscription not found")


def normalize_path(path: str) -> str:
    return path.strip("/") if path else path


def glob_match(pattern: str, path: str) -> bool:
    """`*` = one segment, `**` = zero or more segments, `%2A` = a literal `*`."""
    pat = [s for s in pattern.strip("/").split("/") if s]
    parts = [s for s in path.strip("/").split("/") if s]

    def match(pi: int, si: int) -> bool:
        while pi < len(pat) and si < len(parts):
            seg = pat[pi]
            if seg == "**":
                return any(match(pi + 1, i) for i in range(si, len(parts) + 1))
            if seg != "*" and seg.replace("%2A", "*").replace("%2a", "*") != parts[si]:
                return False
            pi, si = pi + 1, si + 1
        while pi < len(pat) and pat[pi] == "**":
            pi += 1
        return pi == len(pat) and si == len(parts)

    return match(0, 0)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{ms % 1000:03d}Z"
    )


@dataclass
class Link:
    path: str
    link_types: list[str]  # "explicit" and/or "glob"
    acked_offset: str


@dataclass
class Subscription:
    """One subscription's full state (persisted as JSON)."""

    id: str
    type: str
    config_hash: str
    created_at: str
    lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS
    pattern: str | None = None
    webhook_url: str | None = None
    wake_stream: str | None = None
    description: str | None = None
    status: str = "active"
    streams: dict[str, Link] = field(default_factory=dict)
    generation: int = 0
    wake_id: str | None = None
    wake_snapshot: dict[str, str] = field(default_factory=dict)
    token: str | None = None
    holder: str | None = None
    lease_expires_at: int | None = None  # unix ms; None = no lease timer
    retry_count: int = 0
    wake_trigger: str = ""  # the stream named by the current wake's event

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> Subscription:
        raw = json.loads(text)
        raw["streams"] = {p: Link(**v) for p, v in raw["streams"].items()}
        return Subscription(**raw)

    def copy(self) -> Subscription:
        return Subscription.from_json(self.to_json())


@dataclass(frozen=True)
class StreamInfo:
    path: str
    link_type: str
    acked_offset: str
    tail_offset: str
    has_pending: bool

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SubscriptionState:
    """What health needs about one subscription, from memory (no I/O)."""

    id: str
    type: str
    wake_stream: str | None
    generation: int
    wake_id: str | None
    holder: str | None  # the claiming worker, None when not claimed
    wake_outstanding: bool  # announced and not claimed
    lease_expires_at: int | None  # unix ms while claimed (or a webhook wake is out)
    has_pending: bool
    streams: tuple[StreamInfo, ...]


def _config_hash(spec: dict[str, Any]) -> str:
    canonical = {
        "type": spec["type"],
        "pattern": spec.get("pattern"),
        "streams": sorted(set(spec["streams"])),
        "webhook": {"url": spec["webhook_url"]} if spec.get("webhook_url") else None,
        "wake_stream": spec.get("wake_stream"),
        "lease_ttl_ms": spec["lease_ttl_ms"],
        "description": spec.get("description"),
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def parse_create(body: Any) -> dict[str, Any]:
    """Validate a PUT body as upstream does; SubscriptionError 400 INVALID_REQUEST."""

    def bad(msg: str) -> SubscriptionError:
        return _err(400, "INVALID_REQUEST", msg)

    if not isinstance(body, dict):
        raise bad("Request body must be a JSON object")
    typ = body.get("type")
    if typ not in (WEBHOOK, PULL_WAKE):
        raise bad('type must be "webhook" or "pull-wake"')
    raw_pattern = body.get("pattern")
    pattern = normalize_path(raw_pattern) if isinstance(raw_pattern, str) and raw_pattern else None
    raw_streams = body.get("streams")
    streams: list[str] = []
    if isinstance(raw_streams, list) and raw_streams:
        if any(not isinstance(s, str) for s in raw_streams):
            raise bad("streams must contain only strings")
        streams = [normalize_path(s) for s in raw_streams]
    if not pattern and not streams:
        raise bad("At least one of pattern or streams is required")
    lease = body.get("lease_ttl_ms", DEFAULT_LEASE_TTL_MS)
    if (
        isinstance(lease, bool)
        or not isinstance(lease, int | float)
        or lease != int(lease)
        or not MIN_LEASE_TTL_MS <= lease <= MAX_LEASE_TTL_MS
    ):
        raise bad("lease_ttl_ms must be an integer from 1000 to 600000")
    webhook_url = None
    if typ == WEBHOOK:
        hook = body.get("webhook")
        if not isinstance(hook, dict):
            raise bad("webhook subscriptions require webhook.url")
        url = hook.get("url")
        if not isinstance(url, str) or not url:
            raise bad("webhook subscriptions require webhook.url")
        webhook_url = url
    ws = body.get("wake_stream")
    wake_stream = normalize_path(ws) if isinstance(ws, str) and ws else None
    if typ == PULL_WAKE and not wake_stream:
        raise bad("pull-wake subscriptions require wake_stream")
    desc = body.get("description")
    return {
        "type": typ,
        "pattern": pattern,
        "streams": streams,
        "webhook_url": webhook_url,
        "wake_stream": wake_stream,
        "lease_ttl_ms": int(lease),
        "description": desc if isinstance(desc, str) else None,
    }


def validate_webhook_url(raw: str) -> str | None:
    """None if acceptable, else the reason (the reference's rules)."""
    try:
        url = urlsplit(raw)
        host = (url.hostname or "").lower()
    except ValueError:
        return "webhook.url must be a valid URL"
    if not url.scheme or not host:
        return "webhook.url must be a valid URL"
    local = host == "localhost" or (
        host.startswith("127.")
        and len(host.split(".")) == 4
        and all(p.isdigit() and len(p) <= 3 for p in host.split("."))
    )
    if url.scheme == "http":
        return None if local else "http webhook URLs are only allowed for localhost or 127.0.0.x"
    if url.scheme != "https":
        return "webhook.url must use https"
    if host == "localhost":
        return "localhost webhook URLs must use http for dev"
    parts = host.split(".")
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        a, b = int(parts[0]), int(parts[1])
        if a in (10, 127, 0) or (a == 172 and 16 <= b <= 31) or (a, b) in ((192, 168), (169, 254)):
            return "webhook.url must not target private or link-local hosts"
    if ":" in host:
        return "IPv6 webhook hosts are not accepted by the reference server"
    return None


WebhookSender = Callable[[Subscription, str], Awaitable[tuple[bool, Any]]]


P = ParamSpec("P")
T = TypeVar("T")


def _whole(
    fn: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """An operation runs to its end even if its caller is cancelled (a client gone
    mid-request): the database and the in-memory state never part ways, and no
    committed append goes unannounced."""

    @functools.wraps(fn)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return await shielded(fn(*args, **kwargs))

    return run


class SubscriptionManager:
    """Pull-wake / webhook subscriptions over a `DSStore` (see module doc).

    Create it with the store, `await start()` once the event loop runs (loads
    and re-arms), `shutdown()` on exit.  It registers itself as the store's
    append listener: any append (HTTP or in-process) to a linked stream may
    announce a wake.
    """

    def __init__(
        self,
        store: DSStore,
        *,
        clock: Callable[[], int] = now_ms,
        webhooks: bool = True,
        base_url: str = "http://127.0.0.1",
        webhook_sender: WebhookSender | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.webhooks = webhooks
        self.base_url = base_url  # for webhook callback URLs; set once listening
        self._sender = webhook_sender
        self._subs: dict[str, Subscription] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._by_stream: dict[str, set[str]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._key = b""
        self._shutting_down = False
        self._started = False
        self._start_lock = asyncio.Lock()
        self._loader: asyncio.Task[Any] | None = None
        self._patterned: set[str] = set()  # ids of subscriptions with a glob pattern
        self._expiry_listeners: list[Callable[[str, int, str | None], None]] = []
        store.on_append(self._on_append)
        store.on_append_early(self._may_wake)
        store.on_delete(self.on_stream_deleted)

    # --- lifecycle ----------------------------------------------------------------
    def on_expired(self, callback: Callable[[str, int, str | None], None]) -> None:
        """`callback(sub_id, generation, wake_id)` after a lease ran out (the expired
        claim's generation and wake; a new wake may already be announced).  Sync,
        exceptions are logged."""
        self._expiry_listeners.append(callback)

    @_whole
    async def start(self) -> None:
        """Load persisted subscriptions, re-arm leases, announce pending work.

        Idempotent; every public operation awaits it first, so an early call
        (an append before the app's startup hook ran) cannot see an empty state.
        """
        async with self._start_lock:
            if self._started:
                return
            self._loader = asyncio.current_task()
            try:
                await self._load()
            finally:
                self._loader = None
            self._started = True
        await self.expire_due()

    async def _ready(self) -> None:
        # the loading task itself may come back here (a delete listener): let it through
        if not self._started and asyncio.current_task() is not self._loader:
            await self.start()

    async def _load(self) -> None:
        def load(core: StoreCore) -> tuple[bytes, list[str]]:
            core.db.execute(_SCHEMA)  # one statement: executescript would end the batch's tx
            key = core.kv_get(_KEY_NAME)
            if key is None:
                key = os.urandom(32).hex()
                core.kv_set(_KEY_NAME, key)
            rows = core.db.execute("SELECT record FROM ds_subscriptions ORDER BY id")
            return bytes.fromhex(key), [str(r[0]) for r in rows]

        self._key, records = await self.store.call(load)
        for text in records:
            sub = Subscription.from_json(text)
            self._subs[sub.id] = sub
            self._index(sub)
        for sub_id in list(self._subs):
            async with self._lock(sub_id):
                loaded = self._subs.get(sub_id)
                if loaded is None:
                    continue
                sub = loaded
                if sub.lease_expires_at is not None:
                    self._arm(sub)
                    if sub.type == WEBHOOK and sub.wake_id is not None and sub.holder is None:
                        self._spawn(self._deliver(sub.id, sub.wake_id))
                elif sub.wake_id is None and sub.holder is None and self._has_pending(sub):
                    new = sub.copy()
                    await self._create_wake(new, self._first_pending(new))
                    await self._commit(new, wake=True)

    def shutdown(self) -> None:
        self._shutting_down = True
        for h in self._timers.values():
            h.cancel()
        self._timers.clear()
        for t in self._tasks:
            t.cancel()

    # --- internals: locking, indexing, persistence ---------------------------------------
    def _lock(self, sub_id: str) -> asyncio.Lock:
        lock = self._locks.get(sub_id)
        if lock is None:
            lock = self._locks[sub_id] = asyncio.Lock()
        return lock

    def _index(self, sub: Subscription) -> None:
        if sub.pattern:
            self._patterned.add(sub.id)
        for path in sub.streams:
            self._by_stream.setdefault(path, set()).add(sub.id)

    def _unindex(self, sub: Subscription) -> None:
        self._patterned.discard(sub.id)
        for path in sub.streams:
            ids = self._by_stream.get(path)
            if ids is not None:
                ids.discard(sub.id)
                if not ids:
                    del self._by_stream[path]

    async def _commit(self, sub: Subscription, *, wake: bool = False, delete: bool = False) -> None:
        """Persist `sub` (and its new wake event when `wake`) in one transaction,
        then make it the in-memory state."""
        event: bytes | None = None
        if wake and sub.type == PULL_WAKE and sub.wake_stream:
            event = json.dumps(
                {
                    "type": "wake",
                    "subscription_id": sub.id,
                    "stream": sub.wake_trigger,
                    "generation": sub.generation,
                    "ts": self.clock(),
                },
                separators=(",", ":"),
                ensure_ascii=False,
            ).encode()
        record = sub.to_json()
        wake_stream = sub.wake_stream

        def write(core: StoreCore) -> None:
            with core.tx() as db:
                if delete:
                    db.execute("DELETE FROM ds_subscriptions WHERE id=?", (sub.id,))
                    return
                if event is not None and wake_stream is not None:
                    m = core.live_meta(wake_stream)
                    if m is None or m.soft_deleted:
                        log.warning("wake stream does not exist: %s", wake_stream)
                    else:
                        core.append(wake_stream, event, internal=True)
                db.execute(
                    "INSERT OR REPLACE INTO ds_subscriptions (id, record) VALUES (?,?)",
                    (sub.id, record),
                )

        await self.store.call(write)
        old = self._subs.get(sub.id)
        if old is not None:
            self._unindex(old)
        if delete:
            self._subs.pop(sub.id, None)
            self._disarm(sub.id)
            return
        self._subs[sub.id] = sub
        self._index(sub)
        if sub.lease_expires_at is None:
            self._disarm(sub.id)
        else:
            self._arm(sub)
        if wake and sub.type == WEBHOOK and sub.wake_id is not None:
            self._spawn(self._deliver(sub.id, sub.wake_id))

    def _arm(self, sub: Subscription) -> None:
        self._disarm(sub.id)
        if sub.lease_expires_at is None or self._shutting_down:
            return
        delay = max(0.0, (sub.lease_expires_at - self.clock()) / 1000)
        loop = asyncio.get_running_loop()
        self._timers[sub.id] = loop.call_later(delay, self._on_timer, sub.id)

    def _on_timer(self, sub_id: str) -> None:
        self._timers.pop(sub_id, None)
        self._spawn(self._expire(sub_id))

    def _disarm(self, sub_id: str) -> None:
        h = self._timers.pop(sub_id, None)
        if h is not None:
            h.cancel()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- pending work --------------------------------------------------------------------
    def _tail(self, path: str) -> str:
        return self.store.tail(path) or ZERO_OFFSET

    def _infos(self, sub: Subscription) -> list[StreamInfo]:
        out = []
        for link in sub.streams.values():
            tail = self._tail(link.path)
            out.append(
                StreamInfo(
                    link.path,
                    "explicit" if "explicit" in link.link_types else "glob",
                    link.acked_offset,
                    tail,
                    tail > link.acked_offset,
                )
            )
        return out

    def _has_pending(self, sub: Subscription) -> bool:
        return any(i.has_pending for i in self._infos(sub))

    def _first_pending(self, sub: Subscription) -> str:
        return next((i.path for i in self._infos(sub) if i.has_pending), "")

    def _link(self, sub: Subscription, path: str, link_type: str, acked: str) -> None:
        path = normalize_path(path)
        link = sub.streams.get(path)
        if link is None:
            sub.streams[path] = Link(path, [link_type], acked)
        elif link_type not in link.link_types:
            link.link_types.append(link_type)

    # --- tokens --------------------------------------------------------------------------
    def _mint(self, sub: Subscription) -> str:
        payload = {
            "sub": f"subscription:{sub.id}",
            "epoch": sub.generation,
            "exp": self.clock() // 1000 + TOKEN_TTL_S,
            "jti": os.urandom(8).hex(),
        }
        p = _b64url(json.dumps(payload, separators=(",", ":")).encode())
        sig = _b64url(hmac.new(self._key, p.encode(), hashlib.sha256).digest())
        return f"{p}.{sig}"

    def _check_token(self, sub: Subscription, token: str) -> int:
        """The token's epoch; SubscriptionError 401 TOKEN_INVALID / TOKEN_EXPIRED."""
        invalid = _err(401, "TOKEN_INVALID", "Token invalid")
        parts = token.split(".")
        if len(parts) != 2:
            raise invalid
        want = _b64url(hmac.new(self._key, parts[0].encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(parts[1].encode(), want.encode()):
            raise invalid
        try:
            payload = json.loads(_unb64url(parts[0]))
            sub_ok = payload["sub"] == f"subscription:{sub.id}"
            exp, epoch = payload["exp"], payload["epoch"]
        except (ValueError, KeyError, TypeError):
            raise invalid from None
        if not sub_ok:
            raise invalid
        if self.clock() // 1000 > exp:
            raise _err(401, "TOKEN_EXPIRED", "Token expired")
        return int(epoch)

    def _fence(self, sub: Subscription, token: str, request: dict[str, Any]) -> None:
        epoch = self._check_token(sub, token)
        gen = request.get("generation")
        if (
            epoch != sub.generation
            or isinstance(gen, bool)
            or gen != sub.generation
            or request.get("wake_id") != sub.wake_id
        ):
            raise _err(409, "FENCED", "Wake generation is stale")

    # --- wakes ---------------------------------------------------------------------------
    async def _create_wake(self, sub: Subscription, trigger: str) -> None:
        """Mutates `sub` (a copy): generation+1, new wake; the caller commits with wake=True."""
        sub.generation += 1
        sub.wake_id = "w_" + os.urandom(12).hex()
        sub.wake_snapshot = {i.path: i.tail_offset for i in self._infos(sub)}
        sub.wake_trigger = trigger
        if sub.type == WEBHOOK:
            sub.token = self._mint(sub)
            sub.lease_expires_at = self.clock() + sub.lease_ttl_ms

    def _clear_claim(self, sub: Subscription) -> None:
        sub.holder = sub.token = sub.wake_id = None
        sub.lease_expires_at = None
        sub.wake_snapshot = {}

    async def _next_if_pending(self, sub: Subscription) -> bool:
        if not self._has_pending(sub):
            return False
        await self._create_wake(sub, self._first_pending(sub))
        return True

    def _get(self, sub_id: str) -> Subscription:
        sub = self._subs.get(sub_id)
        if sub is None:
            raise _not_found()
        return sub

    def _apply_acks(self, sub: Subscription, request: dict[str, Any]) -> None:
        acks = request.get("acks")
        if not acks:
            return
        if not isinstance(acks, list):
            raise _err(400, "INVALID_REQUEST", "acks must be an array")
        parsed: list[tuple[str, str]] = []
        for ack in acks:
            ack = ack if isinstance(ack, dict) else {}
            raw = ack.get("stream") or ack.get("path") or ""
            path = normalize_path(raw) if isinstance(raw, str) else ""
            link = sub.streams.get(path)
            if not path or link is None:
                raise _err(409, "INVALID_OFFSET", "Ack references an unknown subscription stream")
            offset = ack.get("offset")
            offset = offset if isinstance(offset, str) else ""
            if offset == OFFSET_START:
                raise _err(409, "INVALID_OFFSET", "Ack offset must not be -1")
            if offset < link.acked_offset:
                raise _err(409, "INVALID_OFFSET", "Ack offset regresses the committed cursor")
            if offset > self._tail(path):
                raise _err(409, "INVALID_OFFSET", "Ack offset is beyond stream tail")
            parsed.append((path, offset))
        for path, offset in parsed:
            sub.streams[path].acked_offset = offset

    # --- public API ----------------------------------------------------------------------
    @_whole
    async def put(self, sub_id: str, body: Any) -> tuple[dict[str, Any], bool]:
        """Create or confirm; returns (serialized, created).  409 on another config."""
        await self._ready()
        spec = parse_create(body)
        async with self._lock(sub_id):
            h = _config_hash(spec)
            existing = self._subs.get(sub_id)
            if existing is not None:
                if existing.config_hash != h:
                    raise _err(
                        409,
                        "SUBSCRIPTION_ALREADY_EXISTS",
                        "Subscription already exists with different configuration",
                    )
                return self.serialize(existing), False
            if spec["type"] == WEBHOOK:
                if not self.webhooks:
                    raise _err(
                        400,
                        "INVALID_REQUEST",
                        "webhook subscriptions are not enabled on this server",
                    )
                reason = validate_webhook_url(spec["webhook_url"])
                if reason is not None:
                    raise _err(400, "WEBHOOK_URL_REJECTED", reason)
            sub = Subscription(
                id=sub_id,
                type=spec["type"],
                config_hash=h,
                created_at=iso_ms(self.clock()),
                lease_ttl_ms=spec["lease_ttl_ms"],
                pattern=spec["pattern"],
                webhook_url=spec["webhook_url"],
                wake_stream=spec["wake_stream"],
                description=spec["description"],
            )
            for path in spec["streams"]:
                self._link(sub, path, "explicit", self._tail(path))
            if sub.pattern:
                for path in self.store.paths():
                    if glob_match(sub.pattern, path):
                        self._link(sub, path, "glob", self._tail(path))
            await self._commit(sub)
            return self.serialize(sub), True

    def get(self, sub_id: str) -> dict[str, Any]:
        return self.serialize(self._get(sub_id))

    def exists(self, sub_id: str) -> bool:
        return sub_id in self._subs

    @_whole
    async def delete(self, sub_id: str) -> None:
        """Idempotent (upstream answers 204 either way)."""
        await self._ready()
        async with self._lock(sub_id):
            sub = self._subs.get(sub_id)
            if sub is not None:
                await self._commit(sub.copy(), delete=True)

    @_whole
    async def add_streams(self, sub_id: str, streams: list[str]) -> None:
        await self._ready()
        async with self._lock(sub_id):
            sub = self._get(sub_id).copy()
            for path in streams:
                self._link(sub, path, "explicit", self._tail(normalize_path(path)))
            await self._commit(sub)

    @_whole
    async def remove_stream(self, sub_id: str, path: str) -> None:
        await self._ready()
        async with self._lock(sub_id):
            sub = self._get(sub_id).copy()
            link = sub.streams.get(normalize_path(path))
            if link is None:
                return
            if "explicit" in link.link_types:
                link.link_types.remove("explicit")
            if not link.link_types:
                del sub.streams[link.path]
            await self._commit(sub)

    @_whole
    async def claim(self, sub_id: str, worker: str) -> dict[str, Any]:
        """200 body `{wake_id, generation, token, streams, lease_ttl_ms}`."""
        await self._ready()
        async with self._lock(sub_id):
            sub = self._get(sub_id)
            if sub.type != PULL_WAKE:
                raise _err(400, "INVALID_REQUEST", "Subscription is not pull-wake")
            if sub.holder:
                raise SubscriptionError(
                    409,
                    "ALREADY_CLAIMED",
                    None,
                    current_holder=sub.holder,
                    generation=sub.generation,
                )
            if not self._has_pending(sub):
                raise _err(409, "NO_PENDING_WORK", "Subscription has no pending work")
            sub = sub.copy()
            wake = False
            if not sub.wake_id:
                await self._create_wake(sub, self._first_pending(sub))
                wake = True
            sub.holder = worker
            sub.token = self._mint(sub)
            sub.lease_expires_at = self.clock() + sub.lease_ttl_ms
            await self._commit(sub, wake=wake)
            return {
                "wake_id": sub.wake_id,
                "generation": sub.generation,
                "token": sub.token,
                "streams": [i.as_dict() for i in self._infos(sub)],
                "lease_ttl_ms": sub.lease_ttl_ms,
            }

    async def ack(self, sub_id: str, token: str, request: dict[str, Any]) -> dict[str, Any]:
        """200 body `{ok: true, next_wake}`; acks all-or-nothing, lease extended."""
        return await self._ack(sub_id, token, request, webhook=False)

    async def callback(self, sub_id: str, token: str, request: dict[str, Any]) -> dict[str, Any]:
        """The webhook callback (any subscription type), as upstream."""
        return await self._ack(sub_id, token, request, webhook=True)

    @_whole
    async def _ack(
        self, sub_id: str, token: str, request: dict[str, Any], *, webhook: bool
    ) -> dict[str, Any]:
        await self._ready()
        async with self._lock(sub_id):
            sub = self._get(sub_id)
            if not webhook and sub.type != PULL_WAKE:
                raise _err(400, "INVALID_REQUEST", "Subscription is not pull-wake")
            self._fence(sub, token, request)
            sub = sub.copy()
            self._apply_acks(sub, request)
            sub.lease_expires_at = self.clock() + sub.lease_ttl_ms
            next_wake = False
            if request.get("done") is True:
                self._clear_claim(sub)
                next_wake = await self._next_if_pending(sub)
            await self._commit(sub, wake=next_wake)
            return {"ok": True, "next_wake": next_wake}

    @_whole
    async def release(self, sub_id: str, token: str, request: dict[str, Any]) -> None:
        """Give the wake back; pending work is announced again at once (new generation)."""
        await self._ready()
        async with self._lock(sub_id):
            sub = self._get(sub_id)
            if sub.type != PULL_WAKE:
                raise _err(400, "INVALID_REQUEST", "Subscription is not pull-wake")
            self._fence(sub, token, request)
            sub = sub.copy()
            self._clear_claim(sub)
            wake = await self._next_if_pending(sub)
            await self._commit(sub, wake=wake)

    def _may_wake(self, path: str) -> bool:
        """Writer thread: could an append to `path` announce a wake?  Then the store runs
        `_on_append` before its commit, and the wake event shares that commit's flush
        (one fsync per send instead of two)."""
        if not self._started or self._shutting_down:
            return False
        if self._patterned:
            return True
        for sub_id in list(self._by_stream.get(normalize_path(path), ())):
            sub = self._subs.get(sub_id)  # committed records are never changed in place
            if sub is not None and sub.wake_id is None and sub.holder is None:
                return True  # idle: this append may announce a wake
        return False  # wakes out or claimed: the append coalesces, nothing to write early

    def _on_append(self, ev: Appended) -> Awaitable[None] | None:
        """Sync when nothing is to do (the append hot path: no task, no coroutine)."""
        if ev.internal:
            return None  # our own wake events never wake anyone (as upstream)
        if self._started and not self._patterned and normalize_path(ev.path) not in self._by_stream:
            return None  # no subscription can care
        return self.on_stream_append(ev.path)

    @_whole
    async def on_stream_append(self, path: str) -> None:
        """Link the path to matching patterns and announce a wake where one is due."""
        await self._ready()
        if self._shutting_down:
            return
        path = normalize_path(path)
        ids = set(self._by_stream.get(path, ()))
        for sub_id in self._patterned:
            pattern = self._subs[sub_id].pattern
            if pattern and glob_match(pattern, path):
                ids.add(sub_id)
        for sub_id in sorted(ids):
            async with self._lock(sub_id):
                sub = self._subs.get(sub_id)
                if sub is None:
                    continue
                new = sub
                if sub.pattern and glob_match(sub.pattern, path):
                    link = sub.streams.get(path)
                    if link is None or "glob" not in link.link_types:
                        new = sub.copy()
                        self._link(new, path, "glob", link.acked_offset if link else OFFSET_START)
                if path not in new.streams:
                    continue
                if new.wake_id or new.holder or not self._has_pending(new):
                    if new is not sub:
                        await self._commit(new)
                    continue
                if new is sub:
                    new = sub.copy()
                await self._create_wake(new, path)
                await self._commit(new, wake=True)

    @_whole
    async def on_stream_deleted(self, path: str) -> None:
        await self._ready()
        path = normalize_path(path)
        for sub_id in sorted(self._by_stream.get(path, set()).copy()):
            async with self._lock(sub_id):
                sub = self._subs.get(sub_id)
                if sub is not None and path in sub.streams:
                    new = sub.copy()
                    del new.streams[path]
                    await self._commit(new)

    async def expire_due(self) -> int:
        """Expire every lease that has run out by the clock; returns how many."""
        now = self.clock()
        due = [
            s.id
            for s in self._subs.values()
            if s.lease_expires_at is not None and s.lease_expires_at <= now
        ]
        n = 0
        for sub_id in due:
            n += await self._expire(sub_id)
        return n

    @_whole
    async def _expire(self, sub_id: str) -> int:
        async with self._lock(sub_id):
            sub = self._subs.get(sub_id)
            if sub is None or sub.lease_expires_at is None:
                return 0
            if sub.lease_expires_at > self.clock():
                self._arm(sub)  # extended meanwhile (or the timer fired early)
                return 0
            new = sub.copy()
            self._clear_claim(new)
            wake = await self._next_if_pending(new)
            await self._commit(new, wake=wake)
            for cb in list(self._expiry_listeners):
                try:
                    cb(sub_id, sub.generation, sub.wake_id)
                except Exception:
                    log.exception("expiry listener %r failed for %s", cb, sub_id)
            return 1

    # --- webhooks ------------------------------------------------------------------------
    def _retry(self, sub_id: str, wake_id: str) -> None:
        if not self._shutting_down:
            self._spawn(self._deliver(sub_id, wake_id))

    def action_url(self, sub: Subscription, action: str) -> str:
        return (
            f"{self.base_url.rstrip('/')}/v1/stream/__ds/subscriptions/"
            f"{quote(sub.id, safe='')}/{action}"
        )

    @_whole
    async def _deliver(self, sub_id: str, wake_id: str) -> None:
        sub = self._subs.get(sub_id)
        if sub is None or sub.wake_id != wake_id or sub.token is None or self._sender is None:
            return
        body = json.dumps(
            {
                "subscription_id": sub.id,
                "wake_id": sub.wake_id,
                "generation": sub.generation,
                "streams": [i.as_dict() for i in self._infos(sub)],
                "callback_url": self.action_url(sub, "callback"),
                "callback_token": sub.token,
            },
            separators=(",", ":"),
        )
        try:
            ok, answer = await self._sender(sub, body)
        except Exception as exc:  # any delivery failure means retry
            log.warning("webhook delivery for %s failed: %s", sub_id, exc)
            ok, answer = False, None
        async with self._lock(sub_id):
            cur = self._subs.get(sub_id)
            if cur is None or cur.wake_id != wake_id:
                return
            new = cur.copy()
            if not ok:
                new.retry_count += 1
                new.status = "failed"
                base = min(1000 * 2 ** max(0, new.retry_count - 1), MAX_RETRY_DELAY_MS)
                delay = max(0.0, base + base * 0.2 * (random.random() * 2 - 1)) / 1000
                await self._commit(new)
                if not self._shutting_down:
                    loop = asyncio.get_running_loop()
                    loop.call_later(delay, self._retry, sub_id, wake_id)
                return
            new.status, new.retry_count = "active", 0
            next_wake = False
            if isinstance(answer, dict) and answer.get("done") is True:
                for path, tail in new.wake_snapshot.items():
                    if path in new.streams:
                        new.streams[path].acked_offset = tail
                self._clear_claim(new)
                next_wake = await self._next_if_pending(new)
            await self._commit(new, wake=next_wake)

    # --- views ---------------------------------------------------------------------------
    def serialize(self, sub: Subscription) -> dict[str, Any]:
        out: dict[str, Any] = {"id": sub.id, "subscription_id": sub.id, "type": sub.type}
        if sub.pattern is not None:
            out["pattern"] = sub.pattern
        out["streams"] = [
            {"path": i.path, "link_type": i.link_type, "acked_offset": i.acked_offset}
            for i in self._infos(sub)
        ]
        if sub.webhook_url is not None:
            out["webhook"] = {"url": sub.webhook_url, "signing": self.signing_metadata()}
        if sub.wake_stream is not None:
            out["wake_stream"] = sub.wake_stream
        out["lease_ttl_ms"] = sub.lease_ttl_ms
        out["created_at"] = sub.created_at
        out["status"] = sub.status
        if sub.description is not None:
            out["description"] = sub.description
        return out

    def signing_metadata(self) -> dict[str, str]:
        from pullwake.server.ds.signing import WEBHOOK_KEYS

        return {
            "alg": "ed25519",
            "kid": WEBHOOK_KEYS.kid,
            "jwks_url": f"{self.base_url.rstrip('/')}/v1/stream/__ds/jwks.json",
        }

    def state(self, sub_id: str) -> SubscriptionState | None:
        """Safe from any thread: committed records are never changed in place."""
        sub = self._subs.get(sub_id)
        if sub is None:
            return None
        infos = tuple(self._infos(sub))
        return SubscriptionState(
            id=sub.id,
            type=sub.type,
            wake_stream=sub.wake_stream,
            generation=sub.generation,
            wake_id=sub.wake_id,
            holder=sub.holder,
            wake_outstanding=sub.wake_id is not None and sub.holder is None,
            lease_expires_at=sub.lease_expires_at,
            has_pending=any(i.has_pending for i in infos),
            streams=infos,
        )

    def states(self, prefix: str = "") -> list[SubscriptionState]:
        """Every subscription whose id starts with `prefix` (e.g. `runner:r1:`)."""
        out = []
        for sub_id in sorted(list(self._subs)):  # one C-level copy: safe from any thread
            if sub_id.startswith(prefix):
                st = self.state(sub_id)
                if st is not None:
                    out.append(st)
        return out
