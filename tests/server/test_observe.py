"""The telemetry seam: observer calls and the gauge snapshot, in-process on real sockets.

Every counter of the new vocabulary is driven by the real protocol: a
message sent to an entity, the wake DS announces, claim answers (claimed,
already_claimed, no_pending_work, unknown, done for a paused entity,
not_running), wake-callback acks (extended, done, fenced, rejected) and a
claim lease that runs out (1 s lease, the shortest DS accepts).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from pullwake.core.protocol import ClaimOutcome, CompletionOutcome, LiveMode
from pullwake.server.app import create_app, snapshot_source
from pullwake.server.config import ServerConfig
from pullwake.server.observe import RecordingServerObserver, RunnerGauges
from tests.support.waits import until

P = "/_electric/runners"


@dataclass
class Harness:
    server: TestServer
    http: aiohttp.ClientSession
    observer: RecordingServerObserver

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def call(
        self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        url = path if path.startswith("http") else self.url(path)
        async with self.http.request(method, url, json=body, headers=headers) as r:
            return r.status, (await r.json() if "json" in r.content_type else None)

    def gauges(self, rid: str) -> RunnerGauges:
        snap = snapshot_source(self.server.app).snapshot()  # type: ignore[arg-type]
        return next(g for g in snap.runners if g.runner_id == rid)

    def outcomes(self, method: str) -> list[Any]:
        return [a[1] for m, a in self.observer.calls if m == method]

    async def entity(self, rid: str, name: str) -> str:
        await self.call("POST", "/_electric/entity-types", {"name": "t", "description": "t"})
        policy = {"targets": [{"type": "runner", "runnerId": rid}]}
        status, _ = await self.call(
            "PUT", f"/_electric/entities/t/{name}", {"dispatch_policy": policy}
        )
        assert status == 201
        return f"/_electric/entities/t/{name}"


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    observer = RecordingServerObserver()
    config = ServerConfig(
        db=str(tmp_path / "t.db"),
        keepalive_interval=0.2,
        stream_grace_seconds=0.3,
        claim_lease_ms=1000,
    )
    server = TestServer(create_app(config, observer=observer), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield Harness(server, http, observer)
    await server.close()


async def test_observer_sees_the_whole_claim_vocabulary(harness: Harness) -> None:
    h = harness
    assert (await h.call("POST", P, {"id": "r1", "label": "r1"}))[0] == 201
    assert (await h.call("POST", f"{P}/r1/heartbeat", {"lease_ms": 10_000}))[0] == 200
    ent = await h.entity("r1", "e1")
    assert (await h.call("POST", ent + "/send", {"payload": 1}))[0] == 200
    await until(lambda: ("wake_announced", ("r1",)) in h.observer.calls, 5, "wake announced")
    _, events = await h.call("GET", "/runners/r1/wake?offset=-1")
    event = events[0]
    status, claim = await h.call("POST", f"{P}/r1/claim", event)
    assert status == 200
    assert (await h.call("POST", f"{P}/r1/claim", event))[0] == 409  # already claimed
    assert (await h.call("POST", f"{P}/r1/claim", {}))[0] == 204  # unknown subscription
    bearer = {"Authorization": f"Bearer {claim['claimToken']}"}
    cb, epoch = claim["callback"], claim["epoch"]
    assert (await h.call("POST", cb, {"epoch": epoch}, bearer))[0] == 200  # extended
    done = {
        "epoch": epoch,
        "acks": [{"path": claim["streamPath"], "offset": claim["streams"][0]["offset"]}],
        "done": True,
    }
    assert (await h.call("POST", cb, done, bearer))[1] == {"ok": True, "next_wake": False}
    assert (await h.call("POST", cb, done, bearer))[0] == 502  # fenced
    assert (await h.call("POST", cb, {"epoch": epoch}, {"Authorization": "Bearer x"}))[0] == 502
    assert (await h.call("POST", f"{P}/r1/claim", event))[0] == 409  # no pending work
    # a lease that runs out: claim, never ack, DS announces generation 3
    await h.call("POST", ent + "/send", {"payload": 2})
    assert (await h.call("POST", f"{P}/r1/claim", event))[0] == 200
    await until(lambda: ("lease_expired", ("r1",)) in h.observer.calls, 5, "lease expiry")
    # a paused entity: {"done": true}
    await h.call("POST", ent + "/signal", {"signal": "SIGSTOP"})
    assert (await h.call("POST", f"{P}/r1/claim", event))[1] == {"done": True}
    await h.call("POST", f"{P}/r1/disable")
    assert (await h.call("POST", f"{P}/r1/claim", event))[0] == 409  # not running
    assert h.outcomes("claim_answered") == [
        ClaimOutcome.CLAIMED,
        ClaimOutcome.ALREADY_CLAIMED,
        ClaimOutcome.UNKNOWN,
        ClaimOutcome.NO_PENDING_WORK,
        ClaimOutcome.CLAIMED,
        ClaimOutcome.DONE,
        ClaimOutcome.NOT_RUNNING,
    ]
    assert h.outcomes("completion") == [
        CompletionOutcome.EXTENDED,
        CompletionOutcome.DONE,
        CompletionOutcome.FENCED,
        CompletionOutcome.REJECTED,
    ]
    calls = h.observer.calls
    assert calls.count(("message_sent", ("r1",))) == 2
    assert ("heartbeat_accepted", ("r1",)) in calls
    # gen 1 (send), gen 2 (claim after the lease-less idle send), gen 3 (expiry), gen 4.. (release)
    assert calls.count(("wake_announced", ("r1",))) >= 3


async def test_live_reads_and_gauges(harness: Harness) -> None:
    h = harness
    await h.call("POST", P, {"id": "r2", "label": "r2"})
    g = h.gauges("r2")
    assert (g.pending_subscriptions, g.active_claims, g.lease_remaining_s, g.stream_mismatch) == (
        0,
        0,
        None,
        False,
    )
    await h.call(
        "POST", f"{P}/r2/heartbeat", {"lease_ms": 5000, "diagnostics": {"stream_connected": True}}
    )
    ent = await h.entity("r2", "e2")
    await h.call("POST", ent + "/send", {"payload": 1})
    g = h.gauges("r2")
    assert g.pending_subscriptions == 1
    assert g.lease_remaining_s is not None and 3.0 < g.lease_remaining_s <= 5.0
    # once the 0.3 s grace after server start has run out
    await until(lambda: h.gauges("r2").stream_mismatch, 5, "stream_mismatch")
    async with h.http.get(h.url("/runners/r2/wake?offset=now&live=sse")) as resp:
        await resp.content.readline()
        assert h.gauges("r2").open_streams == {LiveMode.SSE: 1, LiveMode.LONG_POLL: 0}
        assert not h.gauges("r2").stream_mismatch
        _, view = await h.call("GET", "/_pullwake/runners/r2/stream")
        assert view["stream_open"] is True and view["open_reads"] == {"sse": 1, "long-poll": 0}
    closed = ("live_read_closed", ("r2", LiveMode.SSE))
    await until(lambda: closed in h.observer.calls, 5, "live_read_closed")
    _, events = await h.call("GET", "/runners/r2/wake?offset=-1")
    status, _ = await h.call("POST", f"{P}/r2/claim", events[0])
    assert status == 200
    assert h.gauges("r2").active_claims == 1


async def test_a_failing_observer_never_hurts_the_server(tmp_path: Path) -> None:
    class Broken(RecordingServerObserver):
        def message_sent(self, runner_id: str) -> None:
            raise RuntimeError("telemetry down")

        def heartbeat_accepted(self, runner_id: str) -> None:
            raise RuntimeError("telemetry down")

    config = ServerConfig(db=str(tmp_path / "t.db"))
    server = TestServer(create_app(config, observer=Broken()), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            url = str(server.make_url(""))
            async with http.post(url + P, json={"id": "r", "label": "r"}) as r:
                assert r.status == 201
            async with http.post(url + P + "/r/heartbeat", json={}) as r:
                assert r.status == 200
    finally:
        await server.close()
