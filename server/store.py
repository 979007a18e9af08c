"""SQLite storage: runners, wake streams (append-only logs) and wakes.

One connection, used from one thread (`AsyncStore` runs every call on a
single-worker executor so an fsync never blocks the event loop).  WAL with
`synchronous=FULL`: when a write method returns, its transaction is on disk,
so a 201 for a published wake survives `kill -9`.

Offsets are `format_offset(epoch, seq)`: `epoch` is the stream's creation
time in ms (a stream recreated in a fresh database gets a later epoch, so
old offsets answer 410, not silently wrong data) and `seq` counts events
from 1.  `--retain N` keeps the last N events of each stream.  Claims on
wakes live in `pullwake.server.claimstore`: functions over this store, on the
same connection and thread.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Concatenate, ParamSpec, TypeVar

from pullwake.core.protocol import (
    OFFSET_NOW,
    OFFSET_START,
    WAKE_EVENT_TYPE,
    format_offset,
    parse_offset,
)
from pullwake.server.records import (
    CLAIMED,
    PENDING,
    BadOffset,
    NotOwner,
    OffsetGone,
    Published,
    ReadResult,
    Runner,
    RunnerFacts,
    StreamTaken,
    UnknownRunner,
    UnknownStream,
    iso,
    now_ms,
    runner_from_row,
)

P = ParamSpec("P")
T = TypeVar("T")

READ_BATCH = 1000  # events per catch-up response / SSE data event at most
# ...and about this many bytes: wakes carry up to 1 MiB of payload each, and
# 1000 of those in one response would be a gigabyte in memory.
READ_BYTES = 4 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runners (
    id TEXT PRIMARY KEY, label TEXT NOT NULL, kind TEXT NOT NULL, owner TEXT NOT NULL,
    admin_status TEXT NOT NULL, wake_stream TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    last_seen_at INTEGER, lease_expires_at INTEGER, wake_stream_offset TEXT, diagnostics TEXT
);
CREATE TABLE IF NOT EXISTS streams (
    path TEXT PRIMARY KEY, runner_id TEXT NOT NULL, epoch INTEGER NOT NULL,
    head_seq INTEGER NOT NULL, first_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    path TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (path, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wakes (
    wake_id TEXT PRIMARY KEY, runner_id TEXT NOT NULL, payload TEXT,
    created_at INTEGER NOT NULL, status TEXT NOT NULL, claim_token TEXT,
    lease_expires_at INTEGER, claimed_at INTEGER, completed_at INTEGER,
    announcements INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS wakes_by_runner ON wakes (runner_id, status, created_at);
CREATE INDEX IF NOT EXISTS wakes_by_lease ON wakes (status, lease_expires_at);
"""


class Store:
    """Synchronous storage; every write method commits before returning."""

    def __init__(self, path: str, retain: int = 0) -> None:
        self.retain = retain
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._facts: dict[str, RunnerFacts] = {}
        for row in self.db.execute("SELECT * FROM runners"):
            self._remember(runner_from_row(row))

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- facts for telemetry ---------------------------------------------------
    def _remember(self, r: Runner) -> None:
        # IN, not `status != completed`: the index then skips the completed wakes,
        # which pile up forever (21 ms per heartbeat at 300k of them, now 0.01 ms)
        pending = self.db.execute(
            "SELECT COUNT(*) FROM wakes WHERE runner_id=? AND status IN (?, ?)",
            (r.id, PENDING, CLAIMED),
        ).fetchone()[0]
        connected = (r.diagnostics or {}).get("stream_connected")
        with self._lock:
            self._facts[r.id] = RunnerFacts(
                r.id, r.admin_status, r.lease_expires_at, connected, int(pending)
            )

    def bump_pending(self, runner_id: str, delta: int) -> None:
        with self._lock:
            f = self._facts.get(runner_id)
            if f is not None:
                self._facts[runner_id] = replace(f, pending=max(0, f.pending + delta))

    def facts(self) -> dict[str, RunnerFacts]:
        """A copy, safe to call from any thread (metric collection)."""
        with self._lock:
            return dict(self._facts)

    # --- runners ---------------------------------------------------------------
    def get_runner(self, runner_id: str) -> Runner | None:
        row = self.db.execute("SELECT * FROM runners WHERE id=?", (runner_id,)).fetchone()
        return None if row is None else runner_from_row(row)

    def require_runner(self, runner_id: str) -> Runner:
        r = self.get_runner(runner_id)
        if r is None:
            raise UnknownRunner(runner_id)
        return r

    def list_runners(self, owner: str) -> list[Runner]:
        rows = self.db.execute("SELECT * FROM runners WHERE owner=? ORDER BY id", (owner,))
        return [runner_from_row(r) for r in rows]

    def register(
        self,
        runner_id: str,
        *,
        owner: str,
        label: str,
        kind: str,
        admin_status: str | None,
        wake_stream: str,
        now: int,
    ) -> tuple[Runner, bool]:
        """Upsert; returns (runner, created).  Raises NotOwner / StreamTaken."""
        with self.tx() as db:
            old = self.get_runner(runner_id)
            if old is not None and old.owner != owner:
                raise NotOwner(old.owner)
            taken = db.execute(
                "SELECT runner_id FROM streams WHERE path=?", (wake_stream,)
            ).fetchone()
            if taken is not None and taken[0] != runner_id:
                raise StreamTaken(wake_stream)
            if old is None:
                db.execute(
                    "INSERT INTO runners (id, label, kind, owner, admin_status, wake_stream,"
                    " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                    (
                        runner_id,
                        label,
                        kind,
                        owner,
                        admin_status or "enabled",
                        wake_stream,
                        now,
                        now,
                    ),
                )
            else:
                db.execute(
                    "UPDATE runners SET label=?, kind=?, admin_status=?, wake_stream=?,"
                    " updated_at=? WHERE id=?",
                    (label, kind, admin_status or old.admin_status, wake_stream, now, runner_id),
                )
                if old.wake_stream != wake_stream:
                    db.execute(
                        "UPDATE streams SET path=? WHERE path=?", (wake_stream, old.wake_stream)
                    )
                    db.execute(
                        "UPDATE events SET path=? WHERE path=?", (wake_stream, old.wake_stream)
                    )
            if old is None:
                db.execute(
                    "INSERT OR IGNORE INTO streams (path, runner_id, epoch, head_seq, first_seq)"
                    " VALUES (?,?,?,0,1)",
                    (wake_stream, runner_id, now),
                )
        r = self.require_runner(runner_id)
        self._remember(r)
        return r, old is None

    def heartbeat(
        self,
        runner_id: str,
        *,
        lease_ms: int,
        offset: str | None,
        diagnostics: dict[str, Any] | None,
        now: int,
    ) -> Runner:
        with self.tx() as db:
            cur = db.execute(
                "UPDATE runners SET last_seen_at=?, lease_expires_at=?,"
                " wake_stream_offset=COALESCE(?, wake_stream_offset),"
                " diagnostics=COALESCE(?, diagnostics), updated_at=? WHERE id=?",
                (
                    now,
                    now + lease_ms,
                    offset,
                    None if diagnostics is None else json.dumps(diagnostics),
                    now,
                    runner_id,
                ),
            )
            if cur.rowcount == 0:
                raise UnknownRunner(runner_id)
        r = self.require_runner(runner_id)
        self._remember(r)
        return r

    def set_admin_status(self, runner_id: str, status: str, now: int) -> Runner:
        with self.tx() as db:
            cur = db.execute(
                "UPDATE runners SET admin_status=?, updated_at=? WHERE id=?",
                (status, now, runner_id),
            )
            if cur.rowcount == 0:
                raise UnknownRunner(runner_id)
        r = self.require_runner(runner_id)
        self._remember(r)
        return r

    # --- streams ----------------------------------------------------------------
    def stream_runner(self, path: str) -> str | None:
        row = self.db.execute("SELECT runner_id FROM streams WHERE path=?", (path,)).fetchone()
        return None if row is None else str(row[0])

    def append(self, db: sqlite3.Connection, path: str, make: Callable[[int], str]) -> str:
        row = db.execute(
            "SELECT epoch, head_seq, first_seq FROM streams WHERE path=?", (path,)
        ).fetchone()
        if row is None:
            raise UnknownStream(path)
        epoch, seq, first = int(row[0]), int(row[1]) + 1, int(row[2])
        db.execute("INSERT INTO events (path, seq, body) VALUES (?,?,?)", (path, seq, make(epoch)))
        if self.retain > 0 and seq - first + 1 > self.retain:
            first = seq - self.retain + 1
            db.execute("DELETE FROM events WHERE path=? AND seq<?", (path, first))
        db.execute("UPDATE streams SET head_seq=?, first_seq=? WHERE path=?", (seq, first, path))
        return format_offset(epoch, seq)

    @staticmethod
    def wake_event(runner_id: str, wake_id: str, path: str, payload: str | None, epoch: int) -> str:
        event: dict[str, Any] = {
            "type": WAKE_EVENT_TYPE,
            "wake_id": wake_id,
            "subscription_id": f"runner:{runner_id}",
            "stream": path,
            "generation": epoch,
            "ts": iso(now_ms()),
        }
        text = json.dumps(event, separators=(",", ":"))
        if payload is not None:
            text = text[:-1] + ',"payload":' + payload + "}"
        return text

    def publish(self, runner_id: str, payload: Any, now: int) -> Published:
        """Append a wake to the runner's stream; durable when this returns."""
        wake_id = "wk_" + uuid.uuid4().hex
        raw = None if payload is None else json.dumps(payload, separators=(",", ":"))
        with self.tx() as db:
            r = self.require_runner(runner_id)
            offset = self.append(
                db,
                r.wake_stream,
                functools.partial(self.wake_event, runner_id, wake_id, r.wake_stream, raw),
            )
            db.execute(
                "INSERT INTO wakes (wake_id, runner_id, payload, created_at, status)"
                " VALUES (?,?,?,?,?)",
                (wake_id, runner_id, raw, now, PENDING),
            )
        self.bump_pending(runner_id, 1)
        return Published(wake_id, offset, r.wake_stream)

    def read(self, path: str, offset: str) -> ReadResult:
        """Events after `offset` (`-1` start, `now` tail): at most READ_BATCH of
        them, and no more once READ_BYTES are gathered (always at least one)."""
        row = self.db.execute(
            "SELECT epoch, head_seq, first_seq FROM streams WHERE path=?", (path,)
        ).fetchone()
        if row is None:
            raise UnknownStream(path)
        epoch, head, first = int(row[0]), int(row[1]), int(row[2])
        if offset == OFFSET_START:
            after = first - 1
        elif offset == OFFSET_NOW:
            after = head
        else:
            try:
                e, after = parse_offset(offset)
            except ValueError:
                raise BadOffset(f"bad offset {offset!r}") from None
            if e < epoch:
                raise OffsetGone(f"offset {offset} is from an earlier incarnation of the stream")
            if e > epoch or after > head:
                raise BadOffset(f"offset {offset} is beyond the end of the stream")
            if after < first - 1:
                raise OffsetGone(f"offset {offset} is older than the retained data")
        cursor = self.db.execute(
            "SELECT seq, body FROM events WHERE path=? AND seq>? ORDER BY seq LIMIT ?",
            (path, after, READ_BATCH),
        )
        events: list[str] = []
        last, size = after, 0
        for seq, body in cursor:
            if events and size + len(body) > READ_BYTES:
                break
            events.append(str(body))
            last, size = int(seq), size + len(body)
        cursor.close()
        return ReadResult(events, format_offset(epoch, last), last >= head, epoch)


class AsyncStore:
    """Runs every Store call on one dedicated thread, in submission order."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pullwake-server-db")

    async def call(
        self, fn: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, functools.partial(fn, self.store, *args, **kwargs)
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.store.close()
