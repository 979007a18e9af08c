"""The minimum the runner needs: register, heartbeat, publish, read, claim."""

from __future__ import annotations

from tests.support.procs import ServerProcess


def test_publish_then_catch_up_read_returns_the_wake(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    first = server.publish(rid)
    second = server.publish(rid, {"job": 7})
    assert first["offset"] < second["offset"]
    status, headers, body = server.api("GET", f"/runners/{rid}/wake?offset=-1")
    assert status == 200
    assert [e["wake_id"] for e in body] == [first["wake_id"], second["wake_id"]]
    assert body[1]["payload"] == {"job": 7}
    assert body[0]["subscription_id"] == f"runner:{rid}"
    assert headers["Stream-Next-Offset"] == second["offset"]
    assert headers["Stream-Up-To-Date"] == "true"


def test_heartbeat_makes_runner_online(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    status, _, body = server.api(
        "POST", f"/_electric/runners/{rid}/heartbeat", {"diagnostics": {"stream_connected": True}}
    )
    assert status == 200, body
    assert body["liveness_status"] == "online"
    status, _, health = server.api("GET", f"/_electric/runners/{rid}/health")
    assert status == 200
    assert health["runner"]["liveness_status"] == "online"
