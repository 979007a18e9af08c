"""Pure logic, no sockets: health derivation, diagnostics, principals, live reads."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pullwake.core.protocol import DEV_PRINCIPAL, LiveMode, current_cursor
from pullwake.server.auth import parse_principal
from pullwake.server.errors import ApiError
from pullwake.server.health import (
    MISMATCH_ISSUE,
    derive_health,
    liveness_status,
    stream_mismatch,
)
from pullwake.server.live import LiveReads
from pullwake.server.streams import next_cursor
from pullwake.server.validate import clean_diagnostics, parse_json

NOW = 1_000_000


def test_liveness() -> None:
    assert liveness_status("disabled", NOW + 5, NOW) == "offline"
    assert liveness_status("enabled", None, NOW) == "offline"
    assert liveness_status("enabled", NOW + 1, NOW) == "online"
    assert liveness_status("enabled", NOW, NOW) == "expired"


def health(**kw: Any) -> tuple[str, list[str]]:
    args: dict[str, Any] = {
        "admin_status": "enabled",
        "liveness": "online",
        "lease_expires_at_ms": NOW + 1000,
        "last_seen_at_ms": NOW - 10,
        "diagnostics": {"stream_connected": True},
        "mismatch": False,
        "now_ms": NOW,
    }
    args.update(kw)
    h = derive_health(**args)
    return h.status, list(h.issues)


def test_health_only_escalates() -> None:
    assert health() == ("healthy", [])
    assert health(liveness="expired", lease_expires_at_ms=NOW - 4_600) == (
        "unhealthy",
        ["Heartbeat lease expired 5s ago"],
    )
    # 2.5 s: the original's Math.round says 3 (Python's round() would say 2)
    assert health(liveness="expired", lease_expires_at_ms=NOW - 2_500)[1] == [
        "Heartbeat lease expired 3s ago"
    ]
    # unhealthy stays unhealthy when a degraded issue follows
    status, issues = health(
        admin_status="disabled", liveness="offline", diagnostics={"stream_connected": False}
    )
    assert status == "unhealthy"
    assert issues == ["Runner is disabled", "Client reports stream disconnected"]
    assert health(
        liveness="offline", lease_expires_at_ms=None, last_seen_at_ms=None, diagnostics=None
    ) == ("degraded", ["Runner has never sent a heartbeat"])
    assert health(diagnostics=None) == ("degraded", ["No client diagnostics available"])
    assert health(diagnostics={"reconnect_count": 5}) == ("healthy", [])
    assert health(diagnostics={"reconnect_count": 6})[1] == ["Client has reconnected 6 times"]
    assert health(mismatch=True) == ("degraded", [MISMATCH_ISSUE])


def test_mismatch_needs_a_connected_claim_an_online_lease_and_no_read() -> None:
    live = LiveReads(grace=2.0, started_at=time.time() - 10)
    view = live.view("r")
    assert stream_mismatch({"stream_connected": True}, "online", view, 2.0)
    assert not stream_mismatch({"stream_connected": False}, "online", view, 2.0)
    assert not stream_mismatch({"stream_connected": True}, "expired", view, 2.0)
    assert not stream_mismatch(None, "online", view, 2.0)
    fresh = LiveReads(grace=2.0)  # just started: the runner gets the grace to reconnect
    assert not stream_mismatch({"stream_connected": True}, "online", fresh.view("r"), 2.0)
    live.opened("r", LiveMode.SSE)
    assert not stream_mismatch({"stream_connected": True}, "online", live.view("r"), 2.0)


def test_live_reads_grace_between_long_polls() -> None:
    live = LiveReads(grace=2.0)
    live.opened("r", LiveMode.LONG_POLL)
    v = live.view("r")
    assert v.stream_open and v.open_reads[LiveMode.LONG_POLL] == 1
    since = v.stream_open_since
    live.closed("r", LiveMode.LONG_POLL)
    assert live.view("r").stream_open  # between polls
    live.opened("r", LiveMode.LONG_POLL)
    assert live.view("r").stream_open_since == since  # one continuous spell
    live.closed("r", LiveMode.LONG_POLL)
    later = live.view("r", now=time.time() + 3)
    assert not later.stream_open and later.stream_open_since is None
    assert later.closed_for is not None and later.closed_for > 2.0


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        (None, DEV_PRINCIPAL),
        ("", DEV_PRINCIPAL),
        ("user:alice", "user:alice"),
        ("service:a:b", "service:a:b"),
    ],
)
def test_principal_in_dev_mode(value: str | None, expect: str) -> None:
    assert parse_principal(value, dev=True) == expect


@pytest.mark.parametrize(
    "value", [None, "", "alice", "robot:x", "user:", ":x", "user:\udcff", "user:a\x00b"]
)
def test_bad_principal_is_401(value: str | None) -> None:
    with pytest.raises(ApiError) as exc:
        parse_principal(value, dev=False)
    assert exc.value.status == 401


def test_clean_diagnostics() -> None:
    kept, dropped = clean_diagnostics(
        {
            "stream_connected": None,
            "live_mode": "sse",
            "stream_idle_seconds": float("nan"),
            "claims_failed": 2,
            "status": "x" * 5000,
            "reconnect_count": -3,
            "events_received": 0,
        }
    )
    assert kept == {
        "stream_connected": None,
        "live_mode": "sse",
        "claims_failed": 2,
        "events_received": 0,
    }
    assert dropped == ["reconnect_count", "status", "stream_idle_seconds"]


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"NaN",
        b"[Infinity]",
        b"\xc3",
        b"[" * 50_000,
        b'{"x": 1e400}',  # overflows to inf, would be stored as `Infinity`
        b'{"x": -1E+999}',
        b'{"x": "\\ud800"}',  # unpaired surrogate: not encodable as UTF-8
        b'{"\\udfff": 1}',
    ],
)
def test_parse_json_rejects(raw: bytes) -> None:
    with pytest.raises(ApiError) as exc:
        parse_json(raw)
    assert exc.value.status == 400


def test_parse_json_keeps_big_ints_and_paired_surrogates() -> None:
    assert parse_json(b'{"n": 1e300, "big": 123456789012345678901234567890}') == {
        "n": 1e300,
        "big": 123456789012345678901234567890,
    }
    assert parse_json(b'"\\ud83d\\ude00"') == "\U0001f600"


def test_cursor_moves_past_the_clients() -> None:
    cur = int(current_cursor())
    assert int(next_cursor(None)) == cur
    assert int(next_cursor(str(cur))) == cur + 1
    assert int(next_cursor(str(cur + 3))) == cur + 4
    assert int(next_cursor("junk")) == cur
    assert int(next_cursor("9" * 30)) == cur  # absurd cursors are ignored
