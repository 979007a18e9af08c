"""No stream-count limit (issue 14 item 4): thousands of streams appended concurrently
over real HTTP against a real server process, each with a live SSE reader.

The reference server (`@durable-streams/server` 0.3.7, file store) keeps at most 100
files open and loses appends past 100 streams (docs/ds-reference.md); pullwake keeps
its streams in one SQLite database, so every append is acknowledged and every
acknowledged append reaches its live reader exactly once, in order.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp

from tests.support.procs import Proc, free_port, http_json, wait_until

STREAMS = 2000
APPENDS_PER_STREAM = 2
WRITERS = 128  # appends in flight at once, spread over all the streams
JSON_H = {"content-type": "application/json"}


async def _read_live(
    http: aiohttp.ClientSession, url: str, got: list[int], connected: asyncio.Event
) -> None:
    """An SSE reader from the start of the stream; records each item it is given."""
    async with http.get(f"{url}?offset=-1&live=sse") as resp:
        assert resp.status == 200
        connected.set()
        event = None
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "data":
                got.extend(item["i"] for item in json.loads(line[5:]))
                if len(got) >= APPENDS_PER_STREAM:
                    return


async def test_thousands_of_streams_every_append_acknowledged_and_delivered_once(
    tmp_path: Path,
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1/stream/many"
    argv = [sys.executable, "-m", "pullwake.server.ds", "--port", str(port)]
    proc = Proc([*argv, "--db", str(tmp_path / "ds.db")], tmp_path / "server.log")
    proc.start()
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    try:
        jwks = f"http://127.0.0.1:{port}/v1/stream/__ds/jwks.json"
        await asyncio.to_thread(
            wait_until, lambda: http_json("GET", jwks)[0] == 200, 20, what="server up"
        )
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=WRITERS), timeout=timeout
            ) as writes,
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), timeout=timeout
            ) as reads,
        ):

            async def create(i: int) -> None:
                async with writes.put(f"{base}/s{i}", headers=JSON_H) as r:
                    assert r.status == 201, (i, r.status)

            await asyncio.gather(*(create(i) for i in range(STREAMS)))
            got: list[list[int]] = [[] for _ in range(STREAMS)]
            connected = [asyncio.Event() for _ in range(STREAMS)]
            readers = [
                asyncio.create_task(_read_live(reads, f"{base}/s{i}", got[i], connected[i]))
                for i in range(STREAMS)
            ]
            await asyncio.wait_for(asyncio.gather(*(c.wait() for c in connected)), 60)

            acked: list[list[str]] = [[] for _ in range(STREAMS)]

            async def writer(w: int) -> None:
                # this writer's streams, each appended in order; all writers at once
                for n in range(APPENDS_PER_STREAM):
                    for i in range(w, STREAMS, WRITERS):
                        body = json.dumps({"i": n})
                        async with writes.post(f"{base}/s{i}", data=body, headers=JSON_H) as r:
                            assert r.status == 204, (i, n, r.status, await r.text())
                            acked[i].append(r.headers["Stream-Next-Offset"])

            await asyncio.gather(*(writer(w) for w in range(WRITERS)))
            assert all(len(a) == APPENDS_PER_STREAM for a in acked)  # every append: 204
            assert all(len(set(a)) == APPENDS_PER_STREAM for a in acked)
            done, pending = await asyncio.wait(readers, timeout=60)
            for t in pending:
                t.cancel()
            for t in done:
                t.result()  # a reader that failed fails the test
            missing = [i for i in range(STREAMS) if got[i] != list(range(APPENDS_PER_STREAM))]
            assert not missing, f"{len(missing)} streams got {[got[i] for i in missing[:5]]}"
    finally:
        proc.stop()
    assert time.monotonic() - started < 120, "far slower than it should be"
