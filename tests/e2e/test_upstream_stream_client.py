"""The upstream stream client reads OUR wake streams, in long-poll and in SSE mode.

npm `@durable-streams/client` 0.2.6 is what the upstream pull-wake runner reads its wake
stream with (pinned in interop/package-lock.json). interop/read-stream.mjs drives it against
a real `pullwake server` subprocess and prints every request and every item it read. Wakes are
published before the client starts (catch-up), then while it waits in live mode, then again
after an idle live period (a long-poll that ended in 204, or an idle SSE connection). The
client must see exactly the wake events of the stream, in order, in the mode it asked for.
No electric checkout is needed; Node and `interop/node_modules` (`npm ci` in interop/) are.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import ServerProcess, running, wait_until
from tests.support.waits import holds_for

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "interop" / "read-stream.mjs"
CLIENT = REPO / "interop" / "node_modules" / "@durable-streams" / "client" / "package.json"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(NODE is None, reason="node is not installed (Node 20 runs the client)"),
    pytest.mark.skipif(
        not CLIENT.is_file(),
        reason="interop/node_modules missing: run `(cd interop && npm ci --no-audit --no-fund)`",
    ),
]

LONG_POLL_TIMEOUT = 1.0  # seconds: short, so an idle live period happens within the test


class Reader:
    """read-stream.mjs as a child process; its JSON lines collected by a thread."""

    def __init__(self, url: str, live: str, count: int) -> None:
        assert NODE is not None
        self.proc = subprocess.Popen(
            [NODE, str(SCRIPT), "--url", url, "--live", live, "--count", str(count),
             "--timeout-ms", "30000"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in list(self.lines) if e.get("event") == kind]

    def items(self) -> list[Any]:
        return [e["item"] for e in self.events("item")]

    def finish(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._thread.join(5)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read() if self.proc.poll() is not None else ""


@pytest.mark.parametrize("compat", ["upstream", "pullwake"])
@pytest.mark.parametrize("live", ["long-poll", "sse"])
def test_upstream_client_reads_every_wake_in_order(tmp_path: Path, live: str, compat: str) -> None:
    extra = ["--compat", "upstream"] if compat == "upstream" else []
    server = ServerProcess(tmp_path, long_poll_timeout=LONG_POLL_TIMEOUT, extra=extra)
    runner_id = f"sc-{live}-{compat}"
    with running(server):
        server.start()
        registered = server.register(runner_id)
        wake_stream = registered.get("wake_stream") or f"/runners/{runner_id}/wake"
        url = server.url + wake_stream

        # Every publish goes to a fresh entity: its own subscription, its own wake event.
        before = [server.publish(runner_id, {"n": i}) for i in range(3)]
        reader = Reader(url, live, count=8)
        try:
            def live_requests() -> list[dict[str, Any]]:
                return [r for r in reader.events("request") if r.get("live") == live]

            wait_until(lambda: len(reader.items()) == 3 and live_requests(), 15,
                       what=f"catch-up of 3 wakes, then a {live} request")
            during = [server.publish(runner_id, {"n": i}) for i in range(3, 5)]
            wait_until(lambda: len(reader.items()) == 5, 15, what="2 wakes read live")
            if live == "long-poll":
                # An idle poll must end (204 after the timeout) and the client poll again.
                polls = len(live_requests())
                wait_until(lambda: len(live_requests()) >= polls + 2, 15,
                           what="an idle long-poll answered and the next one sent")
            else:
                # An idle SSE connection (our keepalive comments, or upstream's control
                # events every long-poll timeout) stays open: no new request meanwhile.
                opened = len(reader.events("request"))
                holds_for(lambda: len(reader.events("request")) == opened,
                          2.5 * LONG_POLL_TIMEOUT, what="the idle SSE read stays open")
            after = [server.publish(runner_id, {"n": i}) for i in range(5, 8)]
            code = reader.finish()
        finally:
            reader.stop()
        assert code == 0, (reader.lines, reader.stderr())

        # What the client read == the wake stream, read back as a plain catch-up.
        status, _, body = server.api("GET", f"{wake_stream}?offset=-1")
        assert status == 200, body
        assert reader.items() == body
        assert [e.get("type") for e in body] == ["wake"] * 8
        published = before + during + after
        assert [e["stream"] for e in body] == [p["stream"].lstrip("/") for p in published]
        assert all(e["generation"] == 1 for e in body)
        assert len({e["subscription_id"] for e in body}) == 8

        # ...and it really read in the mode it asked for, never falling back.
        modes = {r.get("live") for r in reader.events("request")}
        assert modes == {None, live}, reader.events("request")
        assert not [r for r in reader.events("request") if r.get("error")]
