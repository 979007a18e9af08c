"""The telemetry seam: observer calls and the gauge snapshot, in-process on real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from pullwake.core.protocol import ClaimOutcome, LiveMode
from pullwake.server.app import create_app, snapshot_source
from pullwake.server.config import ServerConfig
from pullwake.server.observe import RecordingServerObserver, RunnerGauges
from tests.support.waits import until

P = "/_electric/runners"
H = {"electric-principal": "system:dev-local"}


@dataclass
class Harness:
    server: TestServer
    http: aiohttp.ClientSession
    observer: RecordingServerObserver

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def post(self, path: str, body: object = None) -> tuple[int, object]:
        async with self.http.post(self.url(path), json=body, headers=H) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else None)

    def gauges(self, rid: str) -> RunnerGauges:
        snap = snapshot_source(self.server.app).snapshot()  # type: ignore[arg-type]
        return next(g for g in snap.runners if g.runner_id == rid)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    observer = RecordingServerObserver()
    config = ServerConfig(
        db=str(tmp_path / "t.db"), keepalive_interval=0.2, stream_grace_seconds=0.3, dev=True
    )
    server = TestServer(create_app(config, observer=observer), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield Harness(server, http, observer)
    await server.close()


async def test_observer_sees_publish_heartbeat_claims_and_live_reads(harness: Harness) -> None:
    h = harness
    assert (await h.post(P, {"id": "r1"}))[0] == 201
    status, _ = await h.post(f"{P}/r1/heartbeat", {"lease_ms": 10_000})
    assert status == 200
    status, wake = await h.post(f"{P}/r1/wakes", {})
    assert status == 201 and isinstance(wake, dict)
    status, _ = await h.post(f"{P}/r1/claim", {"wake_id": wake["wake_id"]})
    assert status == 200
    assert (await h.post(f"{P}/r1/claim", {"wake_id": wake["wake_id"]}))[0] == 409
    assert (await h.post(f"{P}/r1/claim", {}))[0] == 204
    async with h.http.get(h.url("/runners/r1/wake?offset=now&live=sse"), headers=H) as resp:
        await resp.content.readline()
        assert h.gauges("r1").open_streams == {LiveMode.SSE: 1, LiveMode.LONG_POLL: 0}
    calls = h.observer.calls
    assert ("wake_published", ("r1",)) in calls
    assert ("heartbeat_accepted", ("r1",)) in calls
    claims = [a[1] for m, a in calls if m == "claim_answered"]
    assert claims == [ClaimOutcome.CLAIMED, ClaimOutcome.CONFLICT, ClaimOutcome.EMPTY]
    # the handler notices the closed connection asynchronously
    closed = ("live_read_closed", ("r1", LiveMode.SSE))
    await until(lambda: closed in h.observer.calls, 5, "live_read_closed")
    assert ("live_read_opened", ("r1", LiveMode.SSE)) in h.observer.calls


async def test_snapshot_pending_lease_and_mismatch(harness: Harness) -> None:
    h = harness
    await h.post(P, {"id": "r2"})
    g = h.gauges("r2")
    assert (g.pending_wakes, g.lease_remaining_s, g.stream_mismatch) == (0, None, False)
    await h.post(f"{P}/r2/heartbeat", {"lease_ms": 5000, "diagnostics": {"stream_connected": True}})
    for _ in range(2):
        await h.post(f"{P}/r2/wakes", {})
    g = h.gauges("r2")
    assert g.pending_wakes == 2
    assert g.lease_remaining_s is not None and 3.0 < g.lease_remaining_s <= 5.0
    # once the 0.3 s grace after server start has run out
    await until(lambda: h.gauges("r2").stream_mismatch, 5, "stream_mismatch")
    async with h.http.get(h.url("/runners/r2/wake?offset=now&live=sse"), headers=H) as resp:
        await resp.content.readline()
        assert not h.gauges("r2").stream_mismatch
    status, claim = await h.post(f"{P}/r2/claim", {})
    assert status == 200 and isinstance(claim, dict)
    await h.post(f"{P}/r2/claims/{claim['wakeId']}/complete", {"claimToken": claim["claimToken"]})
    assert h.gauges("r2").pending_wakes == 1
    assert ("claim_answered", ("r2", ClaimOutcome.COMPLETED)) in h.observer.calls


async def test_a_failing_observer_never_hurts_the_server(tmp_path: Path) -> None:
    class Broken(RecordingServerObserver):
        def wake_published(self, runner_id: str) -> None:
            raise RuntimeError("telemetry down")

    config = ServerConfig(db=str(tmp_path / "t.db"), dev=True)
    server = TestServer(create_app(config, observer=Broken()), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            url = str(server.make_url(P))
            async with http.post(url, json={"id": "r"}, headers=H) as r:
                assert r.status == 201
            async with http.post(url + "/r/wakes", json={}, headers=H) as r:
                assert r.status == 201
    finally:
        await server.close()
