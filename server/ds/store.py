"""Durable Streams storage: any stream path, any content type, on SQLite.

Writes: one connection, one writer thread (`groupcommit.Writer`: every write
call in submission order), WAL with `synchronous=FULL`.  Concurrent calls share
one transaction and one flush (group commit); when an awaited write returns, its
transaction is on disk, so an acknowledged append survives `kill -9`.

Reads never wait for the writer: metadata comes from memory (committed state
only), a live reader at the tail gets new messages handed over by the writer
(`livecache`), and catch-up reads use read-only connections of their own (WAL:
they see the last commit, never a write in progress).

Paths are DS-relative (`runners/r1/wake`; a leading slash is dropped).  Offsets follow
the reference server: `<16 digits>_<16 digits>`, the first part always 0, the
second the logical byte position after the message (each message counts 5
bytes of framing plus its stored bytes), so a 121-byte wake event after
offset 0 ends at `..._0000000000000127` as upstream.  Only the byte part is
compared, as the reference's file store does.

JSON streams (`application/json`) store each append as one message holding
the comma-terminated elements (`a,b,`): appending an array appends its
elements, a read answers one flat array.  Stream metadata lives in memory
(loaded at start, changed only by the writer thread after a commit) so
`tail()` and `exists()` are synchronous and cheap.  Everything the protocol
needs is here: TTL/expiry (lazy, as upstream), closure, idempotent producers,
`Stream-Seq`, forks with reference counts and soft deletion.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import dataclasses
import email.utils
import functools
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from pullwake.server.ds.groupcommit import (
    PHASE,
    Job,
    Phase,
    Settle,
    Writer,
    resolve,
    resolve_after,
)
from pullwake.server.ds.livecache import Recent

log = logging.getLogger("pullwake.server.ds.store")

P = ParamSpec("P")
T = TypeVar("T")

FRAME_OVERHEAD = 5  # the reference's 4-byte length prefix + newline, per message
ZERO_OFFSET = "0000000000000000_0000000000000000"
OFFSET_START = "-1"
OFFSET_NOW = "now"
OFFSET_RE = re.compile(r"^(-1|now|\d+_\d+)$")
JSON_TYPE = "application/json"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
PRODUCER_STATE_TTL_MS = 7 * 24 * 3600 * 1000
READ_BYTES = 8 * 1024 * 1024  # one read answers about this much at most (see StoreCore.read)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ds_streams (
    path TEXT PRIMARY KEY, meta TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ds_messages (
    path TEXT NOT NULL, incarnation INTEGER NOT NULL, end_pos INTEGER NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (path, incarnation, end_pos)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ds_producers (
    path TEXT NOT NULL, producer_id TEXT NOT NULL, epoch INTEGER NOT NULL,
    last_seq INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    PRIMARY KEY (path, producer_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ds_kv (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""


def key(path: str) -> str:
    """The stream key: DS-relative, so a leading slash is dropped (`/runners/r1/wake`
    and `runners/r1/wake` name one stream)."""
    return path.lstrip("/")


def format_offset(pos: int) -> str:
    return f"{0:016d}_{pos:016d}"


def offset_pos(offset: str) -> int:
    """Byte part of a concrete offset (`-1` -> -1); callers validated OFFSET_RE."""
    if offset == OFFSET_START:
        return -1
    return int(offset.split("_", 1)[1])


def normalize_content_type(ct: str | None) -> str:
    return "" if not ct else ct.split(";", 1)[0].strip().lower()


def is_json_type(ct: str | None) -> bool:
    return normalize_content_type(ct) == JSON_TYPE


def now_ms() -> int:
    return int(time.time() * 1000)


# --- errors --------------------------------------------------------------------
class StoreError(Exception):
    """A refused operation: HTTP status + the reference's text/plain body."""

    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or {}


def not_found(text: str = "Stream not found") -> StoreError:
    return StoreError(404, text)


def gone() -> StoreError:
    return StoreError(410, "Stream is gone")


# --- records ---------------------------------------------------------------------
@dataclass
class StreamMeta:
    """A stream's metadata (persisted as JSON in ds_streams.meta)."""

    path: str
    content_type: str | None
    tail: int = 0
    incarnation: int = 0  # distinguishes the messages of a re-created path
    created_at: int = 0
    last_access: int = 0
    ttl_seconds: int | None = None
    expires_at: str | None = None
    closed: bool = False
    closed_by: list[Any] | None = None  # [producer_id, epoch, seq]
    last_seq: str | None = None
    forked_from: str | None = None
    fork_offset: int | None = None
    fork_sub_offset: int = 0
    ref_count: int = 0
    soft_deleted: bool = False

    @property
    def offset(self) -> str:
        return format_offset(self.tail)

    @property
    def is_json(self) -> bool:
        return is_json_type(self.content_type)

    def expired(self, now: int) -> bool:
        if self.expires_at is not None:
            ts = parse_expires_at(self.expires_at)
            if ts is None or now >= ts:
                return True
        return self.ttl_seconds is not None and now >= self.last_access + self.ttl_seconds * 1000


def parse_expires_at(text: str) -> int | None:
    """ISO 8601 (or an HTTP date, as JS `Date` also takes) -> unix ms; None if unparseable.
    No zone means UTC."""
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        try:
            dt = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


@dataclass(frozen=True)
class Message:
    data: bytes
    end: int  # byte position after this message

    @property
    def offset(self) -> str:
        return format_offset(self.end)


@dataclass(frozen=True)
class ReadResult:
    messages: list[Message]
    next_offset: str  # last message's offset, else the tail
    tail: str
    closed: bool  # the stream is closed (the reader is at its tail iff next_offset == tail)
    content_type: str | None

    @property
    def at_tail(self) -> bool:
        return self.next_offset == self.tail

    @property
    def up_to_date(self) -> bool:
        return self.at_tail


@dataclass(frozen=True)
class Producer:
    id: str
    epoch: int
    seq: int


@dataclass(frozen=True)
class AppendResult:
    """`status`: accepted | duplicate | stale_epoch | invalid_epoch_seq | sequence_gap | closed."""

    status: str
    offset: str  # the new message's offset (accepted), else the tail
    closed: bool = False  # the stream is closed now
    last_seq: int | None = None
    current_epoch: int | None = None
    expected_seq: int | None = None
    received_seq: int | None = None


@dataclass(frozen=True)
class CreateResult:
    created: bool
    info: StreamMeta  # a copy


@dataclass(frozen=True)
class Appended:
    """What append listeners get: `internal` marks wake events written by subscriptions."""

    path: str
    tail: str
    internal: bool = False


AppendListener = Callable[[Appended], Awaitable[None] | None]
DeleteListener = Callable[[str], Awaitable[None] | None]


@dataclass
class _Effects:
    appended: list[Appended] = field(default_factory=list)
    closed: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    # (path, incarnation, message) of every message written: the writer hands them to
    # the live readers' caches (`Recent`) after the commit
    written: list[tuple[str, int, Message]] = field(default_factory=list)

    def merge(self, other: _Effects) -> None:
        self.appended.extend(other.appended)
        self.closed |= other.closed
        self.deleted |= other.deleted
        self.written.extend(other.written)

    def paths(self) -> set[str]:
        return {a.path for a in self.appended} | self.closed | self.deleted


# --- JSON processing -----------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def _dump(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # lone surrogates: escape them as JSON.stringify does
        return json.dumps(value, separators=(",", ":")).encode()


def process_json(body: bytes, initial: bool = False) -> bytes:
    """A JSON append body -> stored bytes `e1,e2,` (empty for `[]` on create)."""
    text = body.decode("utf-8", errors="replace").lstrip("\ufeff")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        raise StoreError(400, "Invalid JSON") from None
    if isinstance(value, list):
        if not value:
            if initial:
                return b""
            raise StoreError(400, "Empty arrays are not allowed")
        return b"".join(_dump(v) + b"," for v in value)
    return _dump(value) + b","


def json_items(data: bytes) -> bytes:
    """Stored JSON message bytes without the trailing comma."""
    data = data.rstrip()
    return data[:-1] if data.endswith(b",") else data


def _with_offset(value: Any, offset: str) -> Any:
    """`value` with `headers.offset` if it is a state event (operation or control), else None."""
    if not isinstance(value, dict):
        return None
    headers = value.get("headers")
    if not isinstance(headers, dict):
        return None
    if not isinstance(headers.get("operation"), str) and not isinstance(
        headers.get("control"), str
    ):
        return None
    enriched = dict(value)
    enriched["headers"] = {**headers, "offset": offset}
    return enriched


def message_items(msg: Message) -> bytes:
    """A JSON message's items as read: `e1,e2` with `headers.offset` on state events.

    Upstream 0.3.7 adds the message's end offset to every item whose `headers` carry a
    string `operation` or `control` (state-protocol events) when it is READ; the stored
    bytes, and so every offset, stay as appended.  Items without such headers keep their
    stored bytes (re-dumping a stored item gives the same bytes).
    """
    items = json_items(msg.data)
    if b'"headers"' not in items:
        return items
    try:
        values = json.loads(b"[" + items + b"]")
    except ValueError:
        return items
    enriched = [_with_offset(v, msg.offset) for v in values]
    if all(e is None for e in enriched):
        return items
    return b",".join(_dump(v if e is None else e) for v, e in zip(values, enriched, strict=True))


def format_body(messages: list[Message], json_mode: bool) -> bytes:
    if json_mode:
        return b"[" + b",".join(message_items(m) for m in messages if m.data) + b"]"
    return b"".join(m.data for m in messages)


# --- the synchronous core (writer thread only) ---------------------------------------
class StoreCore:
    """All SQLite writes; every method runs on the DSStore's writer thread.

    Group commit: the writer opens one transaction per batch of queued calls
    (`begin_batch`), each `tx()` inside it is a savepoint (a refused call rolls back
    alone), and `commit_batch` makes them all durable with one COMMIT (one flush).
    Metadata changes are layered (open tx -> batch -> committed `metas`) and reach
    `metas` only after the COMMIT, so other threads never see uncommitted state.
    """

    def __init__(self, path: str, clock: Callable[[], int] = now_ms) -> None:
        self.clock = clock
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(_SCHEMA)
        self.lock = threading.Lock()  # guards `metas` and `recent` for other threads
        self.metas: dict[str, StreamMeta] = {}
        for path, raw in self.db.execute("SELECT path, meta FROM ds_streams"):
            self.metas[str(path)] = StreamMeta(**json.loads(raw))
        self.recent: dict[str, Recent] = {}  # paths live readers follow
        self._dirty: dict[str, StreamMeta | None] | None = None  # the open tx
        self._batch: dict[str, StreamMeta | None] | None = None  # released txs of the batch
        self._effects = _Effects()
        self._depth = 0

    def close(self) -> None:
        self.db.close()

    # --- transactions -----------------------------------------------------------
    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit; metadata changes apply only once committed.  Outside a
        batch it is its own durable transaction; inside one, a savepoint."""
        if self._depth:
            self._depth += 1
            try:
                yield self.db
            finally:
                self._depth -= 1
            return
        batched = self._batch is not None
        self._depth = 1
        self._dirty = {}
        outer, self._effects = self._effects, _Effects()
        self.db.execute("SAVEPOINT tx" if batched else "BEGIN IMMEDIATE")
        ok = False
        try:
            yield self.db
            if batched:
                self.db.execute("RELEASE tx")
            else:
                self._write_metas(self._dirty)
                self.db.execute("COMMIT")
            ok = True
        finally:
            dirty, self._dirty, self._depth = self._dirty, None, 0
            inner, self._effects = self._effects, outer
            if not ok and self.db.in_transaction:
                if batched:
                    self.db.execute("ROLLBACK TO tx")
                    self.db.execute("RELEASE tx")
                else:
                    self.db.execute("ROLLBACK")
        assert dirty is not None
        if self._batch is not None:
            self._batch.update(dirty)
        else:
            self._apply(dirty, inner.written)
        outer.merge(inner)

    def _write_metas(self, dirty: dict[str, StreamMeta | None]) -> None:
        for path, meta in dirty.items():
            if meta is None:
                self.db.execute("DELETE FROM ds_streams WHERE path=?", (path,))
            else:
                self.db.execute(
                    "INSERT OR REPLACE INTO ds_streams (path, meta) VALUES (?,?)",
                    (path, json.dumps(meta.__dict__, separators=(",", ":"))),
                )

    def _apply(
        self, dirty: dict[str, StreamMeta | None], written: list[tuple[str, int, Message]]
    ) -> None:
        """After a COMMIT: publish the metadata and hand new messages to live caches."""
        with self.lock:
            for path, meta in dirty.items():
                if meta is None:
                    self.metas.pop(path, None)
                else:
                    self.metas[path] = meta
                rec = self.recent.get(path)
                if rec is not None and (meta is None or meta.incarnation != rec.incarnation):
                    rec.reset(meta)
            for path, incarnation, msg in written:
                rec = self.recent.get(path)
                if rec is not None and rec.incarnation == incarnation:
                    rec.add(msg)

    def begin_batch(self) -> None:
        """Open the transaction a batch of calls shares (see the class doc)."""
        self.db.execute("BEGIN IMMEDIATE")
        self._batch = {}

    def commit_batch(self, written: list[tuple[str, int, Message]]) -> None:
        """One COMMIT (one flush) for the whole batch; on failure nothing of it applies."""
        batch, self._batch = self._batch, None
        assert batch is not None
        try:
            self._write_metas(batch)
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self._apply(batch, written)

    def take_effects(self) -> _Effects:
        eff, self._effects = self._effects, _Effects()
        return eff

    def meta(self, path: str) -> StreamMeta | None:
        """Current metadata (the transaction's and the batch's view inside them)."""
        if self._dirty is not None and path in self._dirty:
            return self._dirty[path]
        if self._batch is not None and path in self._batch:
            return self._batch[path]
        return self.metas.get(path)

    def _mut(self, path: str) -> StreamMeta:
        """A mutable copy of a stream's metadata inside the current transaction."""
        assert self._dirty is not None, "metadata changes need a transaction"
        cur = self.meta(path)
        if cur is None:
            raise not_found()
        if self._dirty.get(path) is not cur:
            cur = copy.copy(cur)  # fields are replaced, never mutated in place
            self._dirty[path] = cur
        return cur

    def _put(self, meta: StreamMeta) -> None:
        assert self._dirty is not None
        self._dirty[meta.path] = meta

    # --- lookups -------------------------------------------------------------------
    def live_meta(self, path: str) -> StreamMeta | None:
        """The stream if it exists and has not expired (an expired one is removed)."""
        m = self.meta(path)
        if m is None:
            return None
        if not m.soft_deleted and m.expired(self.clock()):
            with self.tx():
                self._remove(path)
            return self.meta(path)  # soft-deleted copy when forks hold it
        return m

    def get(self, path: str) -> StreamMeta:
        m = self.live_meta(path)
        if m is None:
            raise not_found()
        if m.soft_deleted:
            raise gone()
        return m

    def touch(self, path: str) -> None:
        """Sliding TTL: reads and appends count as access (in memory only)."""
        with self.lock:
            m = self.metas.get(path)
            if m is not None:
                m.last_access = self.clock()

    # --- create / delete ---------------------------------------------------------
    def create(
        self,
        path: str,
        *,
        content_type: str | None = None,
        ttl_seconds: int | None = None,
        expires_at: str | None = None,
        initial: bytes = b"",
        closed: bool = False,
        forked_from: str | None = None,
        fork_offset: str | None = None,
        fork_sub_offset: int | None = None,
    ) -> CreateResult:
        with self.tx():
            existing = self.meta(path)
            if (
                existing is not None
                and not existing.soft_deleted
                and existing.expired(self.clock())
            ):
                self._remove(path)
                existing = self.meta(path)
            if existing is not None and existing.soft_deleted:
                raise StoreError(
                    409,
                    "stream was deleted but still has active forks — path cannot be reused "
                    "until all forks are removed",
                )
            if existing is not None:
                same = (
                    (normalize_content_type(content_type) or DEFAULT_CONTENT_TYPE)
                    == (normalize_content_type(existing.content_type) or DEFAULT_CONTENT_TYPE)
                    and ttl_seconds == existing.ttl_seconds
                    and expires_at == existing.expires_at
                    and closed == existing.closed
                    and forked_from == existing.forked_from
                    and (fork_offset is None or offset_pos(fork_offset) == existing.fork_offset)
                    and (fork_sub_offset or 0) == existing.fork_sub_offset
                )
                if not same:
                    raise StoreError(409, "Stream already exists with different configuration")
                return CreateResult(False, dataclasses.replace(existing))
            now = self.clock()
            incarnation = (
                int(
                    self.db.execute(
                        "SELECT COALESCE(MAX(incarnation), 0) FROM ds_messages WHERE path=?",
                        (path,),
                    ).fetchone()[0]
                )
                + 1
            )
            meta = StreamMeta(
                path=path,
                content_type=content_type,
                incarnation=incarnation,
                created_at=now,
                last_access=now,
                ttl_seconds=ttl_seconds,
                expires_at=expires_at,
                closed=closed,
            )
            if forked_from is not None:
                self._init_fork(meta, forked_from, fork_offset, fork_sub_offset)
            self._put(meta)
            if initial:
                data = process_json(initial, initial=True) if meta.is_json else initial
                if data:
                    self._write(meta, data)
            return CreateResult(True, dataclasses.replace(meta))

    def _init_fork(
        self, meta: StreamMeta, source: str, fork_offset: str | None, sub: int | None
    ) -> None:
        src = self.meta(source)
        if src is None or (not src.soft_deleted and src.expired(self.clock())):
            raise StoreError(404, "Source stream not found")
        if src.soft_deleted:
            raise StoreError(409, "source stream was deleted but still has active forks")
        if meta.content_type is not None and normalize_content_type(
            meta.content_type
        ) != normalize_content_type(src.content_type):
            raise StoreError(409, "Content type mismatch with source stream")
        pos = src.tail if fork_offset is None else offset_pos(fork_offset)
        if pos < 0 or pos > src.tail:
            raise StoreError(400, "Fork offset beyond source stream length")
        if meta.content_type is None:
            meta.content_type = src.content_type
        if meta.ttl_seconds is None and meta.expires_at is None:
            meta.ttl_seconds, meta.expires_at = src.ttl_seconds, src.expires_at
        meta.forked_from, meta.fork_offset, meta.tail = source, pos, pos
        if sub:
            first = self._read_messages(src, pos, limit=1)
            if not first:
                raise StoreError(400, "Invalid fork sub-offset")
            data = first[0].data
            if src.is_json:
                try:
                    values = json.loads(b"[" + json_items(data) + b"]")
                except ValueError:
                    raise StoreError(400, "Invalid fork sub-offset") from None
                if sub > len(values):
                    raise StoreError(400, "Invalid fork sub-offset")
                prefix = b"".join(_dump(v) + b"," for v in values[:sub])
            else:
                if sub > len(data):
                    raise StoreError(400, "Invalid fork sub-offset")
                prefix = data[:sub]
            meta.fork_sub_offset = sub
            self._put(meta)
            self._write(meta, prefix)
        self._mut(source).ref_count += 1

    def delete(self, path: str) -> bool:
        """False if there is no such stream; 410 if it is soft-deleted."""
        with self.tx():
            m = self.live_meta(path)
            if m is None:
                return False
            if m.soft_deleted:
                raise gone()
            self._remove(path)
            return True

    def _remove(self, path: str) -> None:
        """Delete, or soft-delete while forks still read through it (in a tx)."""
        m = self._mut(path)
        if m.ref_count > 0:
            m.soft_deleted = True
            self._effects.closed.add(path)
            return
        assert self._dirty is not None
        self._dirty[path] = None
        self.db.execute("DELETE FROM ds_messages WHERE path=?", (path,))
        self.db.execute("DELETE FROM ds_producers WHERE path=?", (path,))
        self._effects.deleted.add(path)
        if m.forked_from is not None:
            parent = self.meta(m.forked_from)
            if parent is not None:
                pm = self._mut(m.forked_from)
                pm.ref_count = max(0, pm.ref_count - 1)
                if pm.ref_count == 0 and pm.soft_deleted:
                    pm.soft_deleted = False
                    self._remove(m.forked_from)

    # --- append ----------------------------------------------------------------------
    def _write(self, meta: StreamMeta, data: bytes, internal: bool = False) -> str:
        meta.tail += FRAME_OVERHEAD + len(data)
        self.db.execute(
            "INSERT INTO ds_messages (path, incarnation, end_pos, data) VALUES (?,?,?,?)",
            (meta.path, meta.incarnation, meta.tail, data),
        )
        self._effects.appended.append(Appended(meta.path, meta.offset, internal))
        self._effects.written.append((meta.path, meta.incarnation, Message(data, meta.tail)))
        return meta.offset

    def append(
        self,
        path: str,
        body: bytes,
        *,
        content_type: str | None = None,
        seq: str | None = None,
        producer: Producer | None = None,
        close: bool = False,
        internal: bool = False,
    ) -> AppendResult:
        """Append one message (JSON: the body's elements); durable on return."""
        with self.tx():
            m = self.get(path)
            if m.closed:
                if producer is not None and m.closed_by == [
                    producer.id,
                    producer.epoch,
                    producer.seq,
                ]:
                    return AppendResult("duplicate", m.offset, True, last_seq=producer.seq)
                return AppendResult("closed", m.offset, True)
            if (
                content_type is not None
                and m.content_type is not None
                and normalize_content_type(content_type) != normalize_content_type(m.content_type)
            ):
                raise StoreError(409, "Content-type mismatch")
            verdict = None
            if producer is not None:
                verdict = self._check_producer(m, producer)
                if verdict.status != "accepted":
                    return verdict
            if seq is not None and m.last_seq is not None and seq <= m.last_seq:
                raise StoreError(409, "Sequence conflict")
            data = process_json(body) if m.is_json else body
            m = self._mut(path)
            offset = self._write(m, data, internal)
            m.last_access = self.clock()
            if producer is not None:
                self._save_producer(path, producer)
            if seq is not None:
                m.last_seq = seq
            if close:
                m.closed = True
                if producer is not None:
                    m.closed_by = [producer.id, producer.epoch, producer.seq]
                self._effects.closed.add(path)
            return AppendResult("accepted", offset, close)

    def close_stream(self, path: str, producer: Producer | None = None) -> AppendResult:
        """Close (idempotent without a producer); the result carries the final offset."""
        with self.tx():
            m = self.get(path)
            if producer is None:
                if not m.closed:
                    self._mut(path).closed = True
                    self._effects.closed.add(path)
                return AppendResult("accepted", m.offset, True)
            if m.closed:
                if m.closed_by == [producer.id, producer.epoch, producer.seq]:
                    return AppendResult("duplicate", m.offset, True, last_seq=producer.seq)
                return AppendResult("closed", m.offset, True)
            verdict = self._check_producer(m, producer)
            if verdict.status != "accepted":
                return verdict
            self._save_producer(path, producer)
            m = self._mut(path)
            m.closed, m.closed_by = True, [producer.id, producer.epoch, producer.seq]
            self._effects.closed.add(path)
            return AppendResult("accepted", m.offset, True)

    def _check_producer(self, m: StreamMeta, p: Producer) -> AppendResult:
        now = self.clock()
        row = self.db.execute(
            "SELECT epoch, last_seq, updated_at FROM ds_producers WHERE path=? AND producer_id=?",
            (m.path, p.id),
        ).fetchone()
        if row is not None and now - int(row[2]) > PRODUCER_STATE_TTL_MS:
            row = None
        if row is None:
            if p.seq != 0:
                return AppendResult("sequence_gap", m.offset, expected_seq=0, received_seq=p.seq)
            return AppendResult("accepted", m.offset)
        epoch, last = int(row[0]), int(row[1])
        if p.epoch < epoch:
            return AppendResult("stale_epoch", m.offset, current_epoch=epoch)
        if p.epoch > epoch:
            if p.seq != 0:
                return AppendResult("invalid_epoch_seq", m.offset)
            return AppendResult("accepted", m.offset)
        if p.seq <= last:
            return AppendResult("duplicate", m.offset, m.closed, last_seq=last)
        if p.seq == last + 1:
            return AppendResult("accepted", m.offset)
        return AppendResult("sequence_gap", m.offset, expected_seq=last + 1, received_seq=p.seq)

    def _save_producer(self, path: str, p: Producer) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO ds_producers (path, producer_id, epoch, last_seq, updated_at)"
            " VALUES (?,?,?,?,?)",
            (path, p.id, p.epoch, p.seq, self.clock()),
        )

    # --- read ------------------------------------------------------------------------
    def read(
        self, path: str, offset: str = OFFSET_START, max_bytes: int = READ_BYTES
    ) -> ReadResult:
        """What follows `offset` (`-1` start, `now` tail; beyond the tail: nothing), at most
        about `max_bytes` (always at least one message): `up_to_date` says whether it
        reached the tail.  Upstream answers everything at once; the cap only keeps a
        huge backlog from being loaded into memory in one piece."""
        m = self.get(path)
        self.touch(path)
        after = m.tail if offset == OFFSET_NOW else offset_pos(offset)
        msgs = self._read_messages(m, after, max_bytes=max_bytes)
        nxt = msgs[-1].offset if msgs else m.offset
        return ReadResult(msgs, nxt, m.offset, m.closed, m.content_type)

    def _read_messages(
        self,
        m: StreamMeta,
        after: int,
        limit: int = -1,
        max_bytes: int | None = None,
        db: sqlite3.Connection | None = None,
    ) -> list[Message]:
        """Messages after `after` up to `m.tail`; `db`: a read connection (another
        thread) that sees committed data only, so fork sources come from `metas`."""
        out: list[Message] = []
        size = 0
        if m.forked_from is not None and m.fork_offset is not None and after < m.fork_offset:
            if db is None:
                src = self.meta(m.forked_from)
            else:
                with self.lock:
                    src = self.metas.get(m.forked_from)
            if src is not None:
                out = [x for x in self._read_messages(src, after, db=db) if x.end <= m.fork_offset]
                size = sum(len(x.data) for x in out)
        rows = (self.db if db is None else db).execute(
            "SELECT end_pos, data FROM ds_messages WHERE path=? AND incarnation=? AND end_pos>?"
            " AND end_pos<=? ORDER BY end_pos LIMIT ?",
            (m.path, m.incarnation, after, m.tail, limit),
        )
        for e, d in rows:
            if max_bytes is not None and out and size + len(d) > max_bytes:
                break
            out.append(Message(bytes(d), int(e)))
            size += len(d)
        rows.close()
        return out[:limit] if limit >= 0 else out

    def read_committed(
        self, db: sqlite3.Connection, m: StreamMeta, after: int, max_bytes: int = READ_BYTES
    ) -> list[Message]:
        """A catch-up read on a read connection (any thread but the writer's): `m` is a
        committed metadata snapshot, so the answer never runs past its tail."""
        return self._read_messages(m, after, max_bytes=max_bytes, db=db)

    def snapshot(self, path: str, offset: str) -> tuple[StreamMeta | None, list[Message] | None]:
        """The committed metadata and, if memory can answer it, what follows `offset`
        (from the live cache; `[]` at the tail); both taken under one lock hold."""
        with self.lock:
            m = self.metas.get(path)
            if m is None or m.soft_deleted:
                return m, None
            after = m.tail if offset == OFFSET_NOW else offset_pos(offset)
            if after >= m.tail:
                return m, []
            rec = self.recent.get(path)
            return m, None if rec is None else rec.after(m, after)

    def follow(self, path: str) -> None:
        """A live reader waits on `path`: keep its new messages in memory."""
        with self.lock:
            rec = self.recent.get(path)
            if rec is None:
                rec = self.recent[path] = Recent(self.metas.get(path))
            rec.followers += 1

    def unfollow(self, path: str) -> None:
        with self.lock:
            rec = self.recent.get(path)
            if rec is not None:
                rec.followers -= 1
                if rec.followers <= 0:
                    del self.recent[path]

    # --- key/value (subscriptions keep their HMAC key here) ----------------------------
    def kv_get(self, key: str) -> str | None:
        row = self.db.execute("SELECT v FROM ds_kv WHERE k=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def kv_set(self, key: str, value: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO ds_kv (k, v) VALUES (?,?)", (key, value))


# --- the async facade ------------------------------------------------------------------
_RUNNING: set[asyncio.Task[Any]] = set()


async def drain(timeout: float) -> None:
    """Shutdown: let shielded work in flight finish (bounded) before the store closes."""
    pending = [t for t in _RUNNING if t is not asyncio.current_task()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)


async def shielded(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion even if the awaiting task is cancelled (the caller
    still sees its CancelledError; the work goes on and is kept referenced)."""
    task = asyncio.ensure_future(coro)
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
    return await asyncio.shield(task)


class Notifier:
    """One future per path, resolved and replaced at each notification (no lost wake-ups:
    take the waiter before reading, then wait on it).  Waiting costs no task: a wait is
    a callback on that shared future plus one timer."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Future[None]] = {}
        self.closing = False

    def waiter(self, path: str) -> asyncio.Future[None]:
        fut = self._events.get(path)
        if fut is None:
            fut = self._events[path] = asyncio.get_running_loop().create_future()
        if self.closing and not fut.done():
            fut.set_result(None)
        return fut

    def notify(self, path: str) -> None:
        fut = self._events.pop(path, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def close_all(self) -> None:
        self.closing = True
        events, self._events = self._events, {}
        for fut in events.values():
            if not fut.done():
                fut.set_result(None)


async def wait_future(fut: asyncio.Future[None], timeout: float) -> bool:
    """True once `fut` is done, False after `timeout` s (`fut` is shared: never cancelled)."""
    if fut.done():
        return True
    loop = asyncio.get_running_loop()
    mine: asyncio.Future[bool] = loop.create_future()

    def done(_: asyncio.Future[None]) -> None:
        if not mine.done():
            mine.set_result(True)

    def expire() -> None:
        if not mine.done():
            mine.set_result(False)

    fut.add_done_callback(done)
    timer = loop.call_later(timeout, expire)
    try:
        return await mine
    finally:
        timer.cancel()
        fut.remove_done_callback(done)


def _is_memory(db_path: str) -> bool:
    return db_path == ":memory:" or db_path.startswith("file::memory") or "mode=memory" in db_path


class DSStore:
    """The durable stream store used by the HTTP layer, subscriptions and AGENTS.

    Writes: every call that touches SQLite for writing is queued to one writer
    thread, which runs whatever is queued as one batch in one transaction (group
    commit: one COMMIT, one flush for all of them) and only then hands the results
    back, so no caller hears of a write before it is on disk.  After the commit,
    live readers of the changed paths are woken and append listeners are called (in
    order, on the event loop; a failing listener is logged, never raised).

    Reads never queue behind the writer: metadata comes from memory (committed
    state), a reader waiting at the tail gets new messages from the writer's
    hand-over cache (`follow`), and catch-up reads use their own read-only SQLite
    connections (WAL: readers see the last commit, never a write in progress).
    """

    def __init__(
        self, db_path: str, *, clock: Callable[[], int] = now_ms, read_threads: int = 2
    ) -> None:
        self.core = StoreCore(db_path, clock)
        self.db_path = db_path
        self.clock = clock
        self.notifier = Notifier()
        self._listeners: list[AppendListener] = []
        self._delete_listeners: list[DeleteListener] = []
        self._closed = False
        self._early: Callable[[str], bool] | None = None
        self._writer = Writer(
            self.core, deliver=self._deliver, early=self._wants_precommit, precommit=self._precommit
        )
        self._readers: ThreadPoolExecutor | None = None
        if not _is_memory(db_path):
            self._readers = ThreadPoolExecutor(
                max_workers=read_threads, thread_name_prefix="pullwake-ds-read"
            )
        self._local = threading.local()
        self._read_dbs: list[sqlite3.Connection] = []

    @property
    def commits(self) -> int:
        """Group commits done so far (tests and benchmarks look)."""
        return self._writer.commits

    @property
    def committed_calls(self) -> int:
        """Calls those commits carried."""
        return self._writer.committed_calls

    # --- the writer's hooks (groupcommit.Writer) ----------------------------------------

    def _wants_precommit(self, eff: _Effects) -> bool:
        """Appends some early listener cares about (writer thread: a quick look only)."""
        want = self._early
        if want is None or not eff.appended or eff.deleted:
            return False
        if any(a.internal for a in eff.appended):
            return False
        return any(want(a.path) for a in eff.appended)

    def _precommit(self, phase: Phase, jobs: list[Job]) -> None:
        """On the loop, transaction still open: start the listeners of `jobs`, each in a
        task whose context marks the phase (their first store call settles it, and
        `tail()` shows them the batch's tails)."""
        loop = asyncio.get_running_loop()
        for job in jobs:
            settle = Settle(phase)
            phase.open += 1
            ctx = contextvars.copy_context()
            ctx.run(PHASE.set, settle)
            pending = ctx.run(self._listen, job.effects)
            job.listening = loop.create_task(self._run_listeners(pending, settle), context=ctx)
            _RUNNING.add(job.listening)
            job.listening.add_done_callback(_RUNNING.discard)
        if phase.open <= 0:
            phase.done.set()

    async def _run_listeners(
        self, pending: list[tuple[Awaitable[None], str]], settle: Settle | None = None
    ) -> None:
        try:
            for aw, path in pending:
                try:
                    await aw
                except Exception:
                    log.exception("listener failed for %s", path)
        finally:
            if settle is not None:
                settle.settle()

    def _deliver(self, jobs: list[Job]) -> None:
        """On the loop, after a commit: wake the live readers, call the listeners, resume
        the callers.  The listeners run even if a caller was cancelled meanwhile (a
        client gone): a committed append always wakes its readers and announces its
        wake; synchronous listeners run here, awaitable ones in one task per call."""
        paths: set[str] = set()
        for job in jobs:
            paths |= job.effects.paths()
        for path in paths:
            self.notifier.notify(path)
        for job in jobs:
            task = job.listening
            if task is None:
                pending = self._listen(job.effects)
                if pending:
                    task = asyncio.ensure_future(self._run_listeners(pending))
                    _RUNNING.add(task)
                    task.add_done_callback(_RUNNING.discard)
            if task is None:
                resolve(job.future)
            else:
                task.add_done_callback(functools.partial(resolve_after, job.future))

    def _listen(self, eff: _Effects) -> list[tuple[Awaitable[None], str]]:
        """Call the listeners of `eff`; returns the awaitables they gave back (in order)."""
        pending: list[tuple[Awaitable[None], str]] = []
        if not eff.appended and not eff.deleted:
            return pending
        for a in eff.appended:
            for cb in self._listeners:
                try:
                    res = cb(a)
                except Exception:
                    log.exception("append listener %r failed for %s", cb, a.path)
                    continue
                if res is not None:
                    pending.append((res, a.path))
        for path in sorted(eff.deleted):
            for dcb in self._delete_listeners:
                try:
                    res = dcb(path)
                except Exception:
                    log.exception("delete listener %r failed for %s", dcb, path)
                    continue
                if res is not None:
                    pending.append((res, path))
        return pending

    # --- plumbing ---------------------------------------------------------------------
    async def call(
        self, fn: Callable[Concatenate[StoreCore, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(core, ...)` on the writer thread (in the next group commit); returns
        its result once it is committed, readers are woken and listeners have run.

        A caller cancelled meanwhile (a client that went away, aiohttp's handler
        cancellation) does not stop the work half-way: the write, the wake-ups and the
        listeners happen all the same (`_deliver`).
        """
        if self._closed:
            raise RuntimeError("the store is closed")
        job = Job(fn, args, kwargs, asyncio.get_running_loop(), _Effects())
        self._writer.submit(job)
        settle = PHASE.get()
        if settle is not None:  # a pre-commit listener: this write joins the open batch
            settle.settle()
        await job.future
        if job.exc is not None:
            raise job.exc
        return cast(T, job.result)

    def _read_db(self) -> sqlite3.Connection:
        """This read thread's own connection (read-only use)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA query_only=1")
            self._local.db = db
            self._read_dbs.append(db)
        return db

    def _read_rows(self, m: StreamMeta, after: int) -> list[Message]:
        return self.core.read_committed(self._read_db(), m, after)

    def on_append(self, callback: AppendListener) -> None:
        """`callback(Appended(path, tail, internal))` after each committed append."""
        self._listeners.append(callback)

    def on_delete(self, callback: DeleteListener) -> None:
        """`callback(path)` after a stream is gone for good (DELETE, expiry, last fork)."""
        self._delete_listeners.append(callback)

    # --- synchronous reads of in-memory metadata -----------------------------------------
    def tail(self, path: str) -> str | None:
        """The tail offset, or None if there is no such stream (expiry not checked).
        A pre-commit listener sees its batch's tail (committed together with its write)."""
        path = key(path)
        with self.core.lock:
            m = self.core.metas.get(path)
            tail = None if m is None or m.soft_deleted else m.offset
        settle = PHASE.get()
        if settle is not None and tail is not None:
            early = settle.phase.tails.get(path)
            if early is not None and early > tail:
                return early
        return tail

    def on_append_early(self, wants: Callable[[str], bool]) -> None:
        """Let the listeners see appends to paths `wants(path)` (called on the writer
        thread: a quick, thread-safe look) BEFORE the commit, their transaction held
        open up to PRECOMMIT_WAIT so the writes they make at once share its flush.
        Such a write may only ever be committed together with (or after) the append."""
        self._early = wants

    def exists(self, path: str) -> bool:
        return self.tail(path) is not None

    def paths(self) -> list[str]:
        with self.core.lock:
            return [p for p, m in self.core.metas.items() if not m.soft_deleted]

    def touch(self, path: str) -> None:
        self.core.touch(key(path))

    # --- operations -------------------------------------------------------------------
    async def create(self, path: str, **kwargs: Any) -> CreateResult:
        if kwargs.get("forked_from"):
            kwargs["forked_from"] = key(kwargs["forked_from"])
        return await self.call(StoreCore.create, key(path), **kwargs)

    async def append(self, path: str, body: bytes, **kwargs: Any) -> AppendResult:
        return await self.call(StoreCore.append, key(path), body, **kwargs)

    async def append_json(self, path: str, items: list[Any]) -> str:
        """Append JSON values (one message holding them all); returns the new tail."""
        res = await self.append(path, _dump(items), content_type=JSON_TYPE)
        if res.status != "accepted":
            raise StoreError(409, "Stream is closed")
        return res.offset

    async def close_stream(self, path: str, producer: Producer | None = None) -> AppendResult:
        return await self.call(StoreCore.close_stream, key(path), producer)

    def _usable(self, m: StreamMeta | None) -> bool:
        """Committed metadata answers without the writer unless the stream is missing
        or expired (the writer removes an expired stream, as upstream: lazily)."""
        return m is not None and (m.soft_deleted or not m.expired(self.clock()))

    async def read(self, path: str, offset: str = OFFSET_START) -> ReadResult:
        """What follows `offset` (see `StoreCore.read`), from committed state: the live
        cache if it covers `offset`, else a read connection; never the writer unless
        the stream is missing or expired."""
        path = key(path)
        m, msgs = self.core.snapshot(path, offset)
        if m is None or not self._usable(m):
            return await self.call(StoreCore.read, path, offset)
        if m.soft_deleted:
            raise gone()
        self.core.touch(path)
        if msgs is None:
            after = m.tail if offset == OFFSET_NOW else offset_pos(offset)
            if self._readers is None:  # an in-memory database has no second connection
                return await self.call(StoreCore.read, path, offset)
            loop = asyncio.get_running_loop()
            msgs = await loop.run_in_executor(self._readers, self._read_rows, m, after)
        nxt = msgs[-1].offset if msgs else m.offset
        return ReadResult(msgs, nxt, m.offset, m.closed, m.content_type)

    async def head(self, path: str) -> StreamMeta:
        """A copy of the stream's metadata; StoreError 404/410."""
        path = key(path)
        with self.core.lock:
            m = self.core.metas.get(path)
        if m is not None and self._usable(m):
            if m.soft_deleted:
                raise gone()
            return copy.copy(m)
        m = await self.call(StoreCore.get, path)
        return dataclasses.replace(m)

    def follow(self, path: str) -> None:
        """A live reader waits on `path`: until `unfollow`, the writer hands its new
        messages over in memory (`StoreCore.follow`)."""
        self.core.follow(key(path))

    def unfollow(self, path: str) -> None:
        self.core.unfollow(key(path))

    async def delete(self, path: str) -> bool:
        return await self.call(StoreCore.delete, key(path))

    async def wait(self, path: str, offset: str, timeout: float) -> bool:
        """Wait until `path` changes past `offset` (append, close, delete) or timeout;
        True if something happened (or shutdown began)."""
        path = key(path)
        ev = self.notifier.waiter(path)
        tail = self.tail(path)
        if tail is None or offset_pos(tail) > offset_pos(offset) or self.notifier.closing:
            return True
        return await wait_future(ev, timeout)

    def close_all(self) -> None:
        """Shutdown: every waiting live read returns now."""
        self.notifier.close_all()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.stop()
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        for db in self._read_dbs:
            db.close()
        self.core.close()
