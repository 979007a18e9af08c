"""Runner state in one place: /status, the gauges' snapshot and the heartbeat's
diagnostics all say what the machine says, in every phase a real in-process runner
goes through (streaming, reconnecting, streaming again, stopped)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from aiohttp import web

from pullwake.core.protocol import EndReason, RunnerState
from pullwake.runner import Runner
from tests.support.fakeserver import FakeServer, keepalives, unavailable
from tests.support.waits import until

S = RunnerState


def unix(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def views_agree(r: Runner) -> dict[str, Any]:
    """Every view of the runner against the machine; returns /status."""
    m = r.machine
    status, snap, wire = r.status(), r.snapshot(), r.wire_diagnostics()
    diag = status["diagnostics"]
    connected = m.phase is S.STREAMING
    assert status["state"] == diag["state"] == snap.state.value == m.phase.value
    assert diag["stream_connected"] is snap.stream_connected is wire["stream_connected"]
    assert diag["stream_connected"] is connected
    assert status["session"] == snap.session_number == m.session
    assert diag["reconnect_count"] == snap.reconnect_count == wire["reconnect_count"]
    assert diag["reconnect_count"] == m.reconnects
    reason = m.last_end.value if m.last_end else None
    assert diag["last_reconnect_reason"] == reason
    assert (snap.last_reconnect_reason.value if snap.last_reconnect_reason else None) == reason
    since = diag["stream_connected_since"]
    assert since == wire["stream_connected_since"]
    if connected:
        info = r.session_info
        assert info is not None and info.number == m.session
        assert since is not None and abs(unix(since) - (info.connected_at or 0)) < 0.002
        assert snap.stream_connected_since == info.connected_at
    else:
        assert since is None and snap.stream_connected_since is None
        assert status["stream_age_seconds"] == 0.0 and snap.stream_age_s == 0.0
    return status


async def test_every_view_follows_the_machine_through_a_life() -> None:
    down = False

    async def stream(request: web.Request) -> web.StreamResponse:
        return await (unavailable(request) if down else keepalives(request))

    fake = FakeServer(stream)
    app_runner, url = await fake.start()
    r = Runner(server=url, runner_id="r1", heartbeat_interval=5.0, backoff_max=0.3)
    views_agree(r)  # stopped, never started
    task = asyncio.create_task(r.run())
    try:
        await until(lambda: r.phase is S.STREAMING, 10)
        views_agree(r)
        down = True
        assert r.reconnect_now()
        await until(lambda: r.machine.attempt >= 2, 10)  # the forced one, then 503s
        s = views_agree(r)
        assert s["reconnects"][0]["reason"] == EndReason.FORCED.value
        down = False
        await until(lambda: r.phase is S.STREAMING, 10)
        s = views_agree(r)
        assert s["diagnostics"]["reconnect_count"] >= 2
        assert s["diagnostics"]["last_reconnect_reason"] == EndReason.HTTP_ERROR.value
    finally:
        r.stop()
        async with asyncio.timeout(10):
            await task
        await app_runner.cleanup()
    s = views_agree(r)
    assert s["state"] == "stopped" and s["diagnostics"]["last_reconnect_reason"] == "stopped"
