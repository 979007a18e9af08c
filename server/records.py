"""Plain records and domain errors of the store (no I/O).

The store returns these; the API maps the errors to HTTP answers.  Times are
unix milliseconds; `iso` renders them the way the original does.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from pullwake.core.protocol import ClaimOutcome

PENDING, CLAIMED, COMPLETED = "pending", "claimed", "completed"


class StoreError(Exception):
    """Base of the domain errors the API maps to HTTP answers."""


class UnknownRunner(StoreError):
    pass


class UnknownStream(StoreError):
    pass


class NotOwner(StoreError):
    def __init__(self, owner: str) -> None:
        super().__init__(owner)
        self.owner = owner


class StreamTaken(StoreError):
    pass


class BadOffset(StoreError):
    pass


class OffsetGone(StoreError):
    pass


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    t = time.gmtime(ms // 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ms % 1000:03d}Z"


@dataclass(frozen=True)
class Runner:
    id: str
    label: str
    kind: str
    owner: str
    admin_status: str
    wake_stream: str
    created_at: int
    updated_at: int
    last_seen_at: int | None
    lease_expires_at: int | None
    wake_stream_offset: str | None
    diagnostics: dict[str, Any] | None


@dataclass(frozen=True)
class RunnerFacts:
    """What the telemetry snapshot needs, kept in memory (thread-safe copies)."""

    runner_id: str
    admin_status: str
    lease_expires_at: int | None
    stream_connected: bool | None
    pending: int


@dataclass(frozen=True)
class ReadResult:
    events: list[str]  # raw JSON texts, in order
    next_offset: str
    up_to_date: bool
    epoch: int


@dataclass(frozen=True)
class Wake:
    wake_id: str
    runner_id: str
    payload: Any
    created_at: int
    status: str
    claim_token: str | None
    lease_expires_at: int | None
    claimed_at: int | None


@dataclass(frozen=True)
class ClaimResult:
    outcome: ClaimOutcome
    wake: Wake | None = None


@dataclass(frozen=True)
class Published:
    wake_id: str
    offset: str
    stream: str


def runner_from_row(row: sqlite3.Row) -> Runner:
    diag = row["diagnostics"]
    return Runner(
        id=row["id"],
        label=row["label"],
        kind=row["kind"],
        owner=row["owner"],
        admin_status=row["admin_status"],
        wake_stream=row["wake_stream"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_seen_at=row["last_seen_at"],
        lease_expires_at=row["lease_expires_at"],
        wake_stream_offset=row["wake_stream_offset"],
        diagnostics=None if diag is None else json.loads(diag),
    )


def wake_from_row(row: sqlite3.Row) -> Wake:
    payload = row["payload"]
    return Wake(
        wake_id=row["wake_id"],
        runner_id=row["runner_id"],
        payload=None if payload is None else json.loads(payload),
        created_at=row["created_at"],
        status=row["status"],
        claim_token=row["claim_token"],
        lease_expires_at=row["lease_expires_at"],
        claimed_at=row["claimed_at"],
    )
