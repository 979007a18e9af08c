"""The control plane in SQLite: runners, liveness, entity types, entities, claims.

What upstream keeps in Postgres (`runners`, `runner_runtime_diagnostics`,
`entity_types`, `entities`, `consumer_callbacks`, `consumer_claims`,
`entity_dispatch_state`), here in one SQLite file (WAL, synchronous=FULL:
a 2xx is on disk).  Streams, wake events and subscriptions are the Durable
Streams layer's (`pullwake.server.ds`), not kept here.

One connection used from one thread: `AsyncRegistry.call` runs every method
on a single-worker executor, so an fsync never blocks the event loop.
Times are unix milliseconds; `iso()` renders them as upstream does.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runners (
    id TEXT PRIMARY KEY, owner_principal TEXT NOT NULL, label TEXT NOT NULL,
    kind TEXT NOT NULL, admin_status TEXT NOT NULL, wake_stream TEXT NOT NULL UNIQUE,
    sandbox_profiles TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runner_runtime (
    runner_id TEXT PRIMARY KEY, last_seen_at INTEGER, lease_expires_at INTEGER,
    wake_stream_offset TEXT, diagnostics TEXT
);
CREATE TABLE IF NOT EXISTS entity_types (
    name TEXT PRIMARY KEY, description TEXT, default_dispatch_policy TEXT,
    revision INTEGER NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entities (
    url TEXT PRIMARY KEY, type TEXT NOT NULL, status TEXT NOT NULL,
    main_stream TEXT NOT NULL UNIQUE, dispatch_policy TEXT, tags TEXT NOT NULL,
    spawn_args TEXT NOT NULL, created_by TEXT, created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL, active_runner_id TEXT, active_consumer_id TEXT
);
CREATE TABLE IF NOT EXISTS consumer_callbacks (
    consumer_id TEXT PRIMARY KEY, subscription_id TEXT NOT NULL, primary_stream TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS consumer_claims (
    consumer_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL, entity_url TEXT NOT NULL,
    stream_path TEXT NOT NULL, runner_id TEXT NOT NULL, status TEXT NOT NULL,
    claimed_at INTEGER NOT NULL, last_heartbeat_at INTEGER, lease_expires_at INTEGER
);
CREATE TABLE IF NOT EXISTS txids (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS claims_by_runner ON consumer_claims (runner_id, status, claimed_at);
"""

ACTIVE, RELEASED = "active", "released"


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: int | None) -> str | None:
    """`Date.prototype.toISOString()` of unix milliseconds."""
    if ms is None:
        return None
    t = time.gmtime(ms // 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ms % 1000:03d}Z"


@dataclass(frozen=True)
class Runner:
    id: str
    owner_principal: str
    label: str
    kind: str
    admin_status: str
    wake_stream: str
    sandbox_profiles: list[Any]
    created_at: int
    updated_at: int

    def as_json(self) -> dict[str, Any]:
        """Upstream `rowToRunner`: exactly these fields, in this order."""
        return {
            "id": self.id,
            "owner_principal": self.owner_principal,
            "label": self.label,
            "kind": self.kind,
            "admin_status": self.admin_status,
            "wake_stream": self.wake_stream,
            "sandbox_profiles": self.sandbox_profiles,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


@dataclass(frozen=True)
class Runtime:
    """The last heartbeat's facts (upstream `runner_runtime_diagnostics`)."""

    last_seen_at: int | None
    lease_expires_at: int | None
    wake_stream_offset: str | None
    diagnostics: dict[str, Any] | None


@dataclass(frozen=True)
class EntityType:
    name: str
    description: str | None
    default_dispatch_policy: dict[str, Any] | None
    revision: int
    created_at: int
    updated_at: int

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "creation_schema": None,
            "inbox_schemas": None,
            "state_schemas": None,
        }
        if self.default_dispatch_policy is not None:
            out["default_dispatch_policy"] = self.default_dispatch_policy
        out.update(
            revision=self.revision,
            created_at=iso(self.created_at),
            updated_at=iso(self.updated_at),
        )
        return out


@dataclass(frozen=True)
class Entity:
    url: str
    type: str
    status: str
    main_stream: str
    dispatch_policy: dict[str, Any] | None
    tags: dict[str, Any]
    spawn_args: dict[str, Any]
    created_by: str | None
    created_at: int
    updated_at: int

    def as_json(self, *, spawn: bool = False) -> dict[str, Any]:
        """Upstream `toPublicEntity` (spawn answers omit `spawn_args`)."""
        out: dict[str, Any] = {
            "url": self.url,
            "type": self.type,
            "status": self.status,
            "streams": {"main": self.main_stream},
        }
        if self.dispatch_policy is not None:
            out["dispatch_policy"] = self.dispatch_policy
        out["tags"] = self.tags
        if not spawn:
            out["spawn_args"] = self.spawn_args
        out.update(
            created_by=self.created_by, created_at=self.created_at, updated_at=self.updated_at
        )
        return out


@dataclass(frozen=True)
class Claim:
    consumer_id: str
    epoch: int
    entity_url: str
    stream_path: str
    runner_id: str
    status: str
    claimed_at: int
    last_heartbeat_at: int | None
    lease_expires_at: int | None

    def as_json(self) -> dict[str, Any]:
        return {
            "consumer_id": self.consumer_id,
            "epoch": self.epoch,
            "entity_url": self.entity_url,
            "stream_path": self.stream_path,
            "claimed_at": iso(self.claimed_at),
            "last_heartbeat_at": iso(self.last_heartbeat_at),
            "lease_expires_at": iso(self.lease_expires_at),
        }


@dataclass(frozen=True)
class Callback:
    consumer_id: str
    subscription_id: str
    primary_stream: str


@dataclass(frozen=True)
class RunnerFacts:
    """What the telemetry snapshot needs, kept in memory (thread-safe copies)."""

    runner_id: str
    admin_status: str
    lease_expires_at: int | None
    stream_connected: bool | None
    active_claims: int


class WakeStreamTaken(Exception):
    """Another runner has this wake stream (upstream: DB unique violation, a 500)."""


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _runner(row: sqlite3.Row) -> Runner:
    return Runner(
        id=row["id"],
        owner_principal=row["owner_principal"],
        label=row["label"],
        kind=row["kind"],
        admin_status=row["admin_status"],
        wake_stream=row["wake_stream"],
        sandbox_profiles=json.loads(row["sandbox_profiles"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _entity(row: sqlite3.Row) -> Entity:
    return Entity(
        url=row["url"],
        type=row["type"],
        status=row["status"],
        main_stream=row["main_stream"],
        dispatch_policy=_loads(row["dispatch_policy"]),
        tags=json.loads(row["tags"]),
        spawn_args=json.loads(row["spawn_args"]),
        created_by=row["created_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _claim(row: sqlite3.Row) -> Claim:
    return Claim(
        consumer_id=row["consumer_id"],
        epoch=row["epoch"],
        entity_url=row["entity_url"],
        stream_path=row["stream_path"],
        runner_id=row["runner_id"],
        status=row["status"],
        claimed_at=row["claimed_at"],
        last_heartbeat_at=row["last_heartbeat_at"],
        lease_expires_at=row["lease_expires_at"],
    )


class Registry:
    """Synchronous; every write method commits (durably) before returning."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._facts: dict[str, RunnerFacts] = {}
        for row in self.db.execute("SELECT id FROM runners"):
            self._remember(str(row[0]))

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

    # --- facts for telemetry --------------------------------------------------------
    def _remember(self, runner_id: str) -> None:
        r = self.get_runner(runner_id)
        if r is None:
            return
        rt = self.get_runtime(runner_id)
        active = self.db.execute(
            "SELECT COUNT(*) FROM consumer_claims WHERE runner_id=? AND status=?",
            (runner_id, ACTIVE),
        ).fetchone()[0]
        diag = (rt.diagnostics if rt else None) or {}
        connected = diag.get("stream_connected")
        with self._lock:
            self._facts[runner_id] = RunnerFacts(
                runner_id,
                r.admin_status,
                rt.lease_expires_at if rt else None,
                connected if isinstance(connected, bool) else None,
                int(active),
            )

    def facts(self) -> dict[str, RunnerFacts]:
        """A copy, safe to call from any thread (metric collection)."""
        with self._lock:
            return dict(self._facts)

    # --- runners --------------------------------------------------------------------
    def get_runner(self, runner_id: str) -> Runner | None:
        row = self.db.execute("SELECT * FROM runners WHERE id=?", (runner_id,)).fetchone()
        return None if row is None else _runner(row)

    def all_runners(self) -> list[Runner]:
        return [_runner(r) for r in self.db.execute("SELECT * FROM runners")]

    def list_runners(self, owner: str) -> list[Runner]:
        rows = self.db.execute(
            "SELECT * FROM runners WHERE owner_principal=? ORDER BY created_at DESC, rowid DESC",
            (owner,),
        )
        return [_runner(r) for r in rows]

    def register(
        self,
        runner_id: str,
        *,
        owner: str,
        label: str,
        kind: str,
        admin_status: str,
        wake_stream: str,
        sandbox_profiles: list[Any] | None,
        now: int,
    ) -> Runner:
        """Upsert as upstream `createRunner`: overwrite all, keep created_at."""
        with self.tx() as db:
            taken = db.execute(
                "SELECT id FROM runners WHERE wake_stream=? AND id<>?", (wake_stream, runner_id)
            ).fetchone()
            if taken is not None:
                raise WakeStreamTaken(wake_stream)
            old = self.get_runner(runner_id)
            profiles = sandbox_profiles
            if profiles is None:
                profiles = old.sandbox_profiles if old is not None else []
            if old is None:
                db.execute(
                    "INSERT INTO runners (id, owner_principal, label, kind, admin_status,"
                    " wake_stream, sandbox_profiles, created_at, updated_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        runner_id,
                        owner,
                        label,
                        kind,
                        admin_status,
                        wake_stream,
                        _dumps(profiles),
                        now,
                        now,
                    ),
                )
            else:
                db.execute(
                    "UPDATE runners SET owner_principal=?, label=?, kind=?, admin_status=?,"
                    " wake_stream=?, sandbox_profiles=?, updated_at=? WHERE id=?",
                    (
                        owner,
                        label,
                        kind,
                        admin_status,
                        wake_stream,
                        _dumps(profiles),
                        now,
                        runner_id,
                    ),
                )
        self._remember(runner_id)
        r = self.get_runner(runner_id)
        assert r is not None
        return r

    def set_admin_status(self, runner_id: str, status: str, now: int) -> Runner | None:
        with self.tx() as db:
            db.execute(
                "UPDATE runners SET admin_status=?, updated_at=? WHERE id=?",
                (status, now, runner_id),
            )
        self._remember(runner_id)
        return self.get_runner(runner_id)

    def get_runtime(self, runner_id: str) -> Runtime | None:
        row = self.db.execute(
            "SELECT * FROM runner_runtime WHERE runner_id=?", (runner_id,)
        ).fetchone()
        if row is None:
            return None
        return Runtime(
            last_seen_at=row["last_seen_at"],
            lease_expires_at=row["lease_expires_at"],
            wake_stream_offset=row["wake_stream_offset"],
            diagnostics=_loads(row["diagnostics"]),
        )

    def heartbeat(
        self,
        runner_id: str,
        *,
        lease_expires_at: int,
        offset: str | None,
        diagnostics: dict[str, Any] | None,
        now: int,
    ) -> Runtime:
        """Upsert the runtime row; offset/diagnostics only replace when given."""
        with self.tx() as db:
            db.execute(
                "INSERT INTO runner_runtime (runner_id, last_seen_at, lease_expires_at,"
                " wake_stream_offset, diagnostics) VALUES (?,?,?,?,?)"
                " ON CONFLICT(runner_id) DO UPDATE SET last_seen_at=excluded.last_seen_at,"
                " lease_expires_at=excluded.lease_expires_at,"
                " wake_stream_offset=COALESCE(excluded.wake_stream_offset, wake_stream_offset),"
                " diagnostics=COALESCE(excluded.diagnostics, diagnostics)",
                (
                    runner_id,
                    now,
                    lease_expires_at,
                    offset,
                    None if diagnostics is None else _dumps(diagnostics),
                ),
            )
        self._remember(runner_id)
        rt = self.get_runtime(runner_id)
        assert rt is not None
        return rt

    def next_txid(self) -> int:
        """A small increasing integer, where upstream answers a Postgres txid."""
        with self.tx() as db:
            cur = db.execute("INSERT INTO txids (at) VALUES (?)", (now_ms(),))
            db.execute("DELETE FROM txids WHERE id < ?", (cur.lastrowid,))
        return int(cur.lastrowid or 0)

    # --- entity types and entities -------------------------------------------------------
    def get_entity_type(self, name: str) -> EntityType | None:
        row = self.db.execute("SELECT * FROM entity_types WHERE name=?", (name,)).fetchone()
        if row is None:
            return None
        return EntityType(
            name=row["name"],
            description=row["description"],
            default_dispatch_policy=_loads(row["default_dispatch_policy"]),
            revision=row["revision"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def put_entity_type(
        self, name: str, description: str | None, policy: dict[str, Any] | None, now: int
    ) -> EntityType:
        """Create, or replace an existing type's fields as its next revision (as upstream)."""
        with self.tx() as db:
            db.execute(
                "INSERT INTO entity_types (name, description, default_dispatch_policy, revision,"
                " created_at, updated_at) VALUES (?,?,?,1,?,?)"
                " ON CONFLICT(name) DO UPDATE SET description=excluded.description,"
                " default_dispatch_policy=excluded.default_dispatch_policy,"
                " revision=revision+1, updated_at=excluded.updated_at",
                (name, description, None if policy is None else _dumps(policy), now, now),
            )
        t = self.get_entity_type(name)
        assert t is not None
        return t

    def get_entity(self, url: str) -> Entity | None:
        row = self.db.execute("SELECT * FROM entities WHERE url=?", (url,)).fetchone()
        return None if row is None else _entity(row)

    def entity_by_stream(self, main_stream: str) -> Entity | None:
        row = self.db.execute(
            "SELECT * FROM entities WHERE main_stream=?", (main_stream,)
        ).fetchone()
        return None if row is None else _entity(row)

    def create_entity(self, e: Entity) -> bool:
        """Insert; False if the URL exists already."""
        with self.tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO entities (url, type, status, main_stream, dispatch_policy,"
                " tags, spawn_args, created_by, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    e.url,
                    e.type,
                    e.status,
                    e.main_stream,
                    None if e.dispatch_policy is None else _dumps(e.dispatch_policy),
                    _dumps(e.tags),
                    _dumps(e.spawn_args),
                    e.created_by,
                    e.created_at,
                    e.updated_at,
                ),
            )
        return cur.rowcount == 1

    def set_entity_status(self, url: str, status: str, now: int) -> None:
        with self.tx() as db:
            db.execute("UPDATE entities SET status=?, updated_at=? WHERE url=?", (status, now, url))

    # --- claims (upstream consumer_callbacks / consumer_claims / dispatch state) ----------
    def materialize_claim(self, claim: Claim, subscription_id: str, *, now: int) -> None:
        """Record a successful claim: callback, active claim, entity `running`."""
        with self.tx() as db:
            db.execute(
                "INSERT INTO consumer_callbacks (consumer_id, subscription_id, primary_stream)"
                " VALUES (?,?,?) ON CONFLICT(consumer_id) DO UPDATE SET"
                " subscription_id=excluded.subscription_id,"
                " primary_stream=excluded.primary_stream",
                (claim.consumer_id, subscription_id, claim.stream_path),
            )
            db.execute(
                "INSERT OR REPLACE INTO consumer_claims (consumer_id, epoch, entity_url,"
                " stream_path, runner_id, status, claimed_at, last_heartbeat_at,"
                " lease_expires_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    claim.consumer_id,
                    claim.epoch,
                    claim.entity_url,
                    claim.stream_path,
                    claim.runner_id,
                    ACTIVE,
                    claim.claimed_at,
                    None,
                    claim.lease_expires_at,
                ),
            )
            db.execute(
                "UPDATE entities SET status='running', updated_at=?, active_runner_id=?,"
                " active_consumer_id=? WHERE url=?",
                (now, claim.runner_id, claim.consumer_id, claim.entity_url),
            )
        self._remember(claim.runner_id)

    def get_callback(self, consumer_id: str) -> Callback | None:
        row = self.db.execute(
            "SELECT * FROM consumer_callbacks WHERE consumer_id=?", (consumer_id,)
        ).fetchone()
        if row is None:
            return None
        return Callback(row["consumer_id"], row["subscription_id"], row["primary_stream"])

    def claim_heartbeat(self, consumer_id: str, epoch: int, now: int) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE consumer_claims SET last_heartbeat_at=? WHERE consumer_id=? AND epoch=?"
                " AND status=?",
                (now, consumer_id, epoch, ACTIVE),
            )

    def release_claim(self, consumer_id: str, epoch: int, now: int) -> Claim | None:
        """A successful `done`: the row is released, the entity idle again."""
        with self.tx() as db:
            row = db.execute(
                "SELECT * FROM consumer_claims WHERE consumer_id=? AND epoch=?",
                (consumer_id, epoch),
            ).fetchone()
            if row is None:
                return None
            claim = _claim(row)
            db.execute(
                "UPDATE consumer_claims SET status=? WHERE consumer_id=?",
                (RELEASED, consumer_id),
            )
            db.execute(
                "UPDATE entities SET status=CASE status WHEN 'stopping' THEN 'stopped'"
                " WHEN 'running' THEN 'idle' ELSE status END, updated_at=?,"
                " active_runner_id=NULL, active_consumer_id=NULL"
                " WHERE url=? AND active_consumer_id=?",
                (now, claim.entity_url, consumer_id),
            )
        self._remember(claim.runner_id)
        return claim

    def claim_runner(self, consumer_id: str) -> str | None:
        row = self.db.execute(
            "SELECT runner_id FROM consumer_claims WHERE consumer_id=?", (consumer_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def active_claims(self, runner_id: str) -> list[Claim]:
        rows = self.db.execute(
            "SELECT * FROM consumer_claims WHERE runner_id=? AND status=? ORDER BY claimed_at",
            (runner_id, ACTIVE),
        )
        return [_claim(r) for r in rows]

    def dispatch_stats(self, runner_id: str) -> dict[str, int]:
        active = self.db.execute(
            "SELECT COUNT(*) FROM entities WHERE active_runner_id=? AND active_consumer_id"
            " IS NOT NULL",
            (runner_id,),
        ).fetchone()[0]
        return {
            "entities_with_active_claim": int(active),
            # the DS pull-wake path never sets these upstream: always 0 there too
            "entities_with_outstanding_wake": 0,
            "entities_with_pending_work": 0,
        }


class AsyncRegistry:
    """Runs every Registry call on one dedicated thread, in submission order."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pullwake-registry")

    async def call(
        self, fn: Callable[Concatenate[Registry, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, functools.partial(fn, self.registry, *args, **kwargs)
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.registry.close()
