"""Claims: 200 / 409 / 204, completion, and lease expiry re-announcing the wake."""

from __future__ import annotations

from tests.support.procs import ServerProcess
from tests.support.sse import SSEReader

P = "/_electric/runners"


def claim(server: ServerProcess, rid: str, body: dict[str, object]) -> tuple[int, object]:
    status, _, out = server.api("POST", f"{P}/{rid}/claim", body)
    return status, out


def test_first_claim_wins_second_conflicts_nothing_left_is_204(
    server: ServerProcess, rid: str
) -> None:
    server.register(rid)
    wake = server.publish(rid, {"n": 1})
    event = {"type": "wake", "wake_id": wake["wake_id"], "subscription_id": f"runner:{rid}"}
    status, out = claim(server, rid, event)
    assert status == 200, out
    assert isinstance(out, dict)
    assert out["wakeId"] == wake["wake_id"] and out["claimToken"]
    assert out["payload"] == {"n": 1} and out["streams"] == [f"/runners/{rid}/wake"]
    status, err = claim(server, rid, event)
    assert status == 409
    assert isinstance(err, dict) and err["error"]["code"] == "ALREADY_CLAIMED"
    assert claim(server, rid, {}) == (204, None)  # nothing else pending
    status, _, active = server.api("GET", f"{P}/{rid}/health")
    assert active["claims"]["active_count"] == 1
    status, _, done = server.api(
        "POST",
        f"{P}/{rid}/claims/{wake['wake_id']}/complete",
        {"claimToken": out["claimToken"]},
    )
    assert (status, done["status"]) == (200, "completed")
    assert claim(server, rid, event) == (204, None)  # a duplicate after completion


def test_complete_needs_the_live_token(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    wake = server.publish(rid)
    status, _ = claim(server, rid, {"wake_id": wake["wake_id"]})
    assert status == 200
    url = f"{P}/{rid}/claims/{wake['wake_id']}/complete"
    status, _, err = server.api("POST", url, {"claimToken": "wrong"})
    assert (status, err["error"]["code"]) == (409, "INVALID_CLAIM_TOKEN")
    status, _, err = server.api("POST", f"{P}/{rid}/claims/wk_nope/complete", {"claimToken": "x"})
    assert (status, err["error"]["code"]) == (404, "NOT_FOUND")
    status, _, err = server.api("POST", url, {})
    assert (status, err["error"]["code"]) == (400, "INVALID_REQUEST")


def test_disabled_runner_cannot_claim(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    wake = server.publish(rid)
    server.api("POST", f"{P}/{rid}/disable")
    status, err = claim(server, rid, {"wake_id": wake["wake_id"]})
    assert status == 409
    assert isinstance(err, dict) and err["error"]["code"] == "NOT_RUNNING"


def test_expired_claim_is_announced_again_on_the_stream(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    wake = server.publish(rid)
    with SSEReader(f"{server.url}/runners/{rid}/wake?offset=-1&live=sse") as sse:
        seen = sse.events_until(lambda e: e.kind == "control")
        assert [w["wake_id"] for e in seen if e.kind == "data" for w in e.data] == [wake["wake_id"]]
        status, first = claim(server, rid, {"wake_id": wake["wake_id"], "lease_ms": 300})
        assert status == 200 and isinstance(first, dict)
        # Not completed: once the lease runs out, the same wake id comes again.
        seen = sse.events_until(lambda e: e.kind == "data", timeout=5)
        again = seen[-1].data
        assert [w["wake_id"] for w in again] == [wake["wake_id"]]
    status, second = claim(server, rid, {"wake_id": wake["wake_id"]})
    assert status == 200 and isinstance(second, dict)
    assert second["claimToken"] != first["claimToken"]
    status, _, err = server.api(
        "POST",
        f"{P}/{rid}/claims/{wake['wake_id']}/complete",
        {"claimToken": first["claimToken"]},
    )
    assert (status, err["error"]["code"]) == (409, "INVALID_CLAIM_TOKEN")
    status, _, events = server.api("GET", f"/runners/{rid}/wake?offset=-1")
    assert [e["wake_id"] for e in events] == [wake["wake_id"]] * 2
