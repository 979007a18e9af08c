"""Pure logic, no sockets: principals, schemas (Ajv messages), diagnostics, health, dates."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pullwake.core.protocol import LiveMode
from pullwake.server import diagnostics, jsdate, schema
from pullwake.server import principal as pr
from pullwake.server.health import derive_health, js_round, liveness_status
from pullwake.server.livereads import LiveReads, stream_mismatch

NOW = 1_000_000


@pytest.mark.parametrize(
    ("header", "url"),
    [
        ("system:dev-local", "/principal/system%3Adev-local"),
        ("/principal/system%3Adev-local", "/principal/system%3Adev-local"),
        ("/principal/system:dev-local", "/principal/system%3Adev-local"),  # legacy, canonicalised
        ("user:alice@laptop", "/principal/user%3Aalice%40laptop"),
        ("service:a:b", "/principal/service%3Aa%3Ab"),
        ("agent:x(1)!", "/principal/agent%3Ax(1)!"),  # encodeURIComponent keeps !'()*-._~
    ],
)
def test_principal_forms(header: str, url: str) -> None:
    p = pr.parse_input(header)
    assert p is not None and p.url == url
    assert pr.parse_url(p.url) == p


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "user",
        "robot:x",
        "user:",
        ":x",
        "user:a/b",
        "agent:x/y",
        "/principal/",
        "/principal/a/b",
        "/principal/user%3",
        "/principal/%ZZ",
        "/principal/user%3Aa%2Fb",
        "/principal/%C3",
    ],
)
def test_invalid_principal_is_absent(header: str | None) -> None:
    assert pr.parse_input(header) is None


def test_principal_from_created_by() -> None:
    assert pr.from_created_by("/principal/user%3Aa") == {
        "url": "/principal/user%3Aa",
        "key": "user:a",
        "kind": "user",
        "id": "a",
    }
    assert pr.from_created_by("/somewhere") == {"url": "/somewhere", "key": None}
    assert pr.from_created_by(None) is None


def _details(sch: schema.Schema, value: Any) -> list[tuple[str, str]]:
    return [(d["path"], d["message"]) for d in schema.validate(sch, value)]


def test_ajv_messages_and_order() -> None:
    assert _details(schema.REGISTER, {}) == [
        ("/", "must have required property 'id'"),
        ("/", "must have required property 'label'"),
    ]
    assert _details(schema.REGISTER, [1]) == [("/", "must be object")]
    assert _details(schema.REGISTER, {"id": "a", "label": "b", "admin_status": "x"}) == [
        ("/admin_status", "must be equal to constant"),
        ("/admin_status", "must be equal to constant"),
        ("/admin_status", "must match a schema in anyOf"),
    ]
    assert _details(schema.REGISTER, {"id": "a", "label": "b", "kind": 3}) == [
        ("/kind", "must be string"),
        ("/kind", "must be equal to constant"),
    ] * 5 + [("/kind", "must match a schema in anyOf")]
    assert _details(schema.HEARTBEAT, {"lease_ms": True, "diagnostics": []}) == [
        ("/lease_ms", "must be number"),
        ("/diagnostics", "must be object"),
    ]
    assert _details(schema.CLAIM, {"ts": None, "extra": 1}) == [
        ("/ts", "must be string"),
        ("/ts", "must be number"),
        ("/ts", "must match a schema in anyOf"),
    ]
    assert _details(
        schema.REGISTER, {"id": "a", "label": "b", "sandbox_profiles": [{"name": 1}]}
    ) == [
        ("/sandbox_profiles/0", "must have required property 'label'"),
        ("/sandbox_profiles/0/name", "must be string"),
    ]
    assert _details(schema.CALLBACK, {"acks": [{"a/b": 1}], "done": True}) == []


@pytest.mark.parametrize(
    "raw", [b"{", b"[NaN]", b"[Infinity]", b"\xc3", b"[" * 50_000, b'{"x": 1e400}', b'"\\ud800"']
)
def test_parse_json_rejects(raw: bytes) -> None:
    with pytest.raises(schema.InvalidJson):
        schema.parse_json(raw)


def test_parse_json_numbers_as_javascript_has_them() -> None:
    assert schema.parse_json(b"[7.0, 1e3, -0.0, 1.5, 1e300]") == [7, 1000, 0, 1.5, 1e300]
    assert [type(x) for x in schema.parse_json(b"[7.0, 1.5]")] == [int, float]


def test_parse_json_accepts_bom_and_big_ints() -> None:
    assert schema.parse_json(b"\xef\xbb\xbf{}") == {}
    assert schema.parse_json(b'{"big": 123456789012345678901234567890}') == {
        "big": 123456789012345678901234567890
    }


def test_diagnostics_whitelist_in_upstream_order() -> None:
    got = diagnostics.sanitize(
        {
            "claims_failed": 1.5,
            "last_error": "boom",
            "reconnect_count": 7,
            "last_claim_result": "no_work",
            "last_heartbeat_ok": False,
            "status": "reconnecting",
            "running": True,
            "claims_skipped": -1,
            "events_received": float("inf"),
            "stream_connected": "yes",
            "started_at": None,
        }
    )
    assert list((got or {}).items()) == [
        ("status", "reconnecting"),
        ("last_heartbeat_ok", False),
        ("last_claim_result", "no_work"),
        ("started_at", None),
        ("last_error", "boom"),
        ("reconnect_count", 7),
        ("claims_failed", 1.5),
    ]
    assert diagnostics.sanitize({"status": "bogus", "last_claim_result": "skipped"}) is None
    assert diagnostics.sanitize({}) is None
    assert diagnostics.sanitize({"last_claim_result": None}) == {"last_claim_result": None}


def test_liveness() -> None:
    assert liveness_status("enabled", None, NOW) == "offline"
    assert liveness_status("disabled", NOW + 5, NOW) == "offline"
    assert liveness_status("enabled", NOW + 1, NOW) == "online"
    assert liveness_status("enabled", NOW, NOW) == "expired"


def test_health_issues_in_upstream_order() -> None:
    h = derive_health(
        admin_status="disabled",
        liveness="offline",
        lease_expires_at_ms=None,
        last_seen_at_ms=None,
        client=None,
        now_ms=NOW,
    )
    assert (h.status, h.issues) == ("unhealthy", ("Runner is disabled",))
    h = derive_health(
        admin_status="enabled",
        liveness="expired",
        lease_expires_at_ms=NOW - 60_500,
        last_seen_at_ms=NOW - 61_000,
        client={"stream_connected": False, "last_heartbeat_ok": False, "reconnect_count": 6.0},
        now_ms=NOW,
    )
    assert h.status == "unhealthy"
    assert h.issues == (
        "Heartbeat lease expired 61s ago",  # Math.round: 60.5 -> 61
        "Client reports stream disconnected",
        "Client reports last heartbeat failed",
        "Client has reconnected 6 times",
    )
    h = derive_health(
        admin_status="enabled",
        liveness="online",
        lease_expires_at_ms=NOW + 1,
        last_seen_at_ms=NOW,
        client=None,
        now_ms=NOW,
    )
    assert (h.status, h.issues) == ("degraded", ("No client diagnostics available",))
    assert js_round(-0.5) == 0 and js_round(2.5) == 3


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1970-01-01T00:00:01.5Z", 1500),
        ("1970-01-01", 0),
        ("1970-01-02T00:00:00+01:00", 82_800_000),
        ("Thu, 01 Jan 1970 00:00:02 GMT", 2000),
        ("garbage", None),
        ("2026-13-01", None),
        ("+275761-01-01T00:00:00Z", None),  # beyond the Date range
    ],
)
def test_js_date(text: str, ms: int | None) -> None:
    assert jsdate.parse_ms(text) == ms


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
    assert stream_mismatch(True, "online", later, 2.0)
    assert not stream_mismatch(None, "online", later, 2.0)
    assert not stream_mismatch(True, "expired", later, 2.0)
    assert not stream_mismatch(True, "online", live.view("x", now=live.started_at + 1), 2.0)
