"""Runners API against a real server: registry, leases, diagnostics, health."""

from __future__ import annotations

from typing import Any

from tests.support.procs import ServerProcess, wait_until
from tests.support.sse import SSEReader

P = "/_electric/runners"


def health(server: ServerProcess, rid: str) -> dict[str, Any]:
    status, _, body = server.api("GET", f"{P}/{rid}/health")
    assert status == 200, body
    return dict(body)


def beat(server: ServerProcess, rid: str, **body: Any) -> dict[str, Any]:
    status, _, out = server.api("POST", f"{P}/{rid}/heartbeat", body)
    assert status == 200, out
    return dict(out)


def test_register_is_an_upsert_and_runners_are_listed(server: ServerProcess, rid: str) -> None:
    status, _, body = server.api("POST", P, {"id": rid, "label": "one"})
    assert status == 201
    assert body["wake_stream"] == f"/runners/{rid}/wake"
    assert body["liveness_status"] == "offline"
    assert body["admin_status"] == "enabled"
    status, _, body = server.api("POST", P, {"id": rid, "label": "two"})
    assert (status, body["label"]) == (200, "two")
    status, _, listing = server.api("GET", P)
    assert status == 200
    assert rid in [r["id"] for r in listing["runners"]]
    status, _, body = server.api("GET", f"{P}/{rid}")
    assert (status, body["id"], body["label"]) == (200, rid, "two")


def test_never_heartbeated_runner_is_degraded(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    h = health(server, rid)
    assert h["runner"]["liveness_status"] == "offline"
    assert h["health"] == {"status": "degraded", "issues": ["Runner has never sent a heartbeat"]}


def test_lease_goes_online_then_expired(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    out = beat(server, rid, lease_ms=1500, diagnostics={"stream_connected": False})
    assert out["liveness_status"] == "online"
    h = health(server, rid)
    assert h["runner"]["liveness_status"] == "online"
    assert 0 < h["runner"]["lease_remaining_ms"] <= 1500
    wait_until(
        lambda: health(server, rid)["runner"]["liveness_status"] == "expired", 8, what="expiry"
    )
    h = health(server, rid)
    assert h["health"]["status"] == "unhealthy"
    assert any(i.startswith("Heartbeat lease expired") for i in h["health"]["issues"])
    assert h["runner"]["lease_remaining_ms"] == 0  # clamped, as in the original
    assert h["runner"]["lease_expires_at"] == out["liveness_lease_expires_at"]
    # a heartbeat after expiry brings it back: online, and the expiry issue is gone
    beat(server, rid, lease_ms=30_000, diagnostics={"stream_connected": False})
    h = health(server, rid)
    assert h["runner"]["liveness_status"] == "online"
    assert h["health"] == {"status": "degraded", "issues": ["Client reports stream disconnected"]}


def test_client_diagnostics_issues(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    beat(server, rid)
    assert health(server, rid)["health"]["issues"] == ["No client diagnostics available"]
    beat(
        server,
        rid,
        diagnostics={"stream_connected": False, "last_heartbeat_ok": False, "reconnect_count": 6},
    )
    h = health(server, rid)
    assert h["health"] == {
        "status": "degraded",
        "issues": [
            "Client reports stream disconnected",
            "Client reports last heartbeat failed",
            "Client has reconnected 6 times",
        ],
    }
    assert h["client"]["reconnect_count"] == 6


def test_diagnostics_are_whitelisted_and_type_checked(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    out = beat(
        server,
        rid,
        diagnostics={
            "stream_connected": True,
            "reconnect_count": "7",  # wrong type
            "state": "running.streaming",
            "last_reconnect_reason": "gremlins",  # not an EndReason
            "evil": "<script>",  # not whitelisted
            "stream_idle_seconds": 1.5,
            "events_received": True,  # bool is not an int here
        },
    )
    assert out["diagnostics"] == {
        "stream_connected": True,
        "state": "running.streaming",
        "stream_idle_seconds": 1.5,
    }
    assert out["diagnostics_dropped"] == [
        "events_received",
        "evil",
        "last_reconnect_reason",
        "reconnect_count",
    ]


def test_disable_and_enable(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    beat(server, rid, diagnostics={"stream_connected": False})
    status, _, body = server.api("POST", f"{P}/{rid}/disable")
    assert (status, body["admin_status"], body["liveness_status"]) == (200, "disabled", "offline")
    h = health(server, rid)
    assert h["health"]["status"] == "unhealthy"
    assert h["health"]["issues"][0] == "Runner is disabled"
    status, _, body = server.api("POST", f"{P}/{rid}/enable")
    assert (status, body["admin_status"], body["liveness_status"]) == (200, "enabled", "online")


def test_server_detects_client_claiming_a_stream_it_does_not_have(
    server: ServerProcess, rid: str
) -> None:
    """The seed bug, seen from the server: connected per the client, no read here."""
    server.register(rid)
    beat(server, rid, diagnostics={"stream_connected": True})
    mismatch = "Client reports stream connected but server has no open stream"
    # The fixture's grace is 2 s: the issue appears once no read was open for that long.
    h = wait_until(
        lambda: (h := health(server, rid))["server_view"]["stream_mismatch"] and h, 8, what="flag"
    )
    assert h["server_view"]["stream_open"] is False
    assert h["health"] == {"status": "degraded", "issues": [mismatch]}

    with SSEReader(f"{server.url}/runners/{rid}/wake?offset=now&live=sse") as sse:
        assert sse.status == 200
        sse.next_event()
        h = health(server, rid)
        view = h["server_view"]
        assert view["stream_open"] is True and view["open_reads"]["sse"] == 1
        assert view["stream_open_since"] is not None and view["last_stream_read_at"] is not None
        assert h["health"]["status"] == "healthy"
    # Closed: flagged again once the grace has passed.
    wait_until(lambda: health(server, rid)["server_view"]["stream_mismatch"], 8, what="re-flag")


def test_long_poll_client_counts_as_connected_between_polls(
    server: ServerProcess, rid: str
) -> None:
    server.register(rid)
    beat(server, rid, diagnostics={"stream_connected": True})
    url = f"/runners/{rid}/wake?offset=now&live=long-poll"
    status, headers, _ = server.api("GET", url)
    assert status == 204
    h = health(server, rid)  # between two polls, well inside the 2 s grace
    assert h["server_view"]["stream_open"] is True
    assert h["server_view"]["open_reads"]["long-poll"] == 0
    assert h["health"]["status"] == "healthy"
    since = h["server_view"]["stream_open_since"]
    status, _, _ = server.api("GET", url.replace("now", headers["Stream-Next-Offset"]))
    assert status == 204
    assert health(server, rid)["server_view"]["stream_open_since"] == since


def test_heartbeat_stores_the_reported_offset(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    first, second = server.publish(rid)["offset"], server.publish(rid)["offset"]
    assert beat(server, rid, wake_stream_offset=first)["wake_stream_offset"] == first
    assert beat(server, rid)["wake_stream_offset"] == first  # no offset: the last one stays
    assert beat(server, rid, wakeStreamOffset=second)["wake_stream_offset"] == second
    assert health(server, rid)["runner"]["wake_stream_offset"] == second
