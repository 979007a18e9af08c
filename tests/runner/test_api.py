"""The embedding API: `runner.Runner` in-process with an async handler, real server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pullwake.core.protocol import EndReason, RunnerState
from pullwake.runner import RecordingObserver, Runner
from tests.support.procs import ServerProcess
from tests.support.waits import until


async def test_in_process_runner_with_an_async_handler(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, keepalive=0.5).start()
    try:
        got: list[str] = []

        async def handle(claim: dict[str, Any]) -> None:
            got.append(claim["entity"]["url"])  # the claim notification, as upstream

        obs = RecordingObserver()
        r = Runner(
            server=server.url, runner_id="embedded", handler=handle, observer=obs,
            heartbeat_interval=0.5, offset_file=str(tmp_path / "offset"),
        )  # fmt: skip
        task = asyncio.create_task(r.run())
        await until(lambda: r.phase is RunnerState.STREAMING, 15)
        # each publish: a message to a fresh entity targeting the runner (its own wake)
        wakes = [(await asyncio.to_thread(server.publish, "embedded"))["entity"] for _ in range(3)]
        await until(lambda: sorted(got) == sorted(wakes) and r.committed_offset != "-1", 10)
        snap = r.snapshot()
        assert snap.state is RunnerState.STREAMING and snap.stream_connected
        assert snap.stream_age_s >= 0 and snap.idle_timeout_s == 1.5
        assert snap.session_number == 1 and snap.reconnect_count == 0
        assert (tmp_path / "offset").read_text().strip() == r.committed_offset
        assert r.diagnostics()["claims_succeeded"] == 3
        r.stop()
        async with asyncio.timeout(10):
            await task
        assert r.phase is RunnerState.STOPPED
        states = [t[0].new for t in obs.of("transition")]
        assert states == [
            RunnerState.CONNECTING, RunnerState.STREAMING, RunnerState.STOPPING,
            RunnerState.STOPPED,
        ]  # fmt: skip
        assert len(obs.of("session_started")) == 1 and len(obs.of("session_connected")) == 1
        [(ended,)] = obs.of("session_ended")  # every session ends exactly once, stop included
        assert ended.reason is EndReason.STOPPED and ended.wakes_received == 3
        assert [w[0].value for w in obs.of("wake")].count("handled") == 3
        assert obs.of("heartbeat") and obs.of("heartbeat")[0][0].value == "ok"
    finally:
        server.stop()
