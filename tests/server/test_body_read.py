"""A request body that never completes is answered 408, not held forever.

In-process server on a real socket, with the body deadline shortened
(30 s in production) so the test is quick.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from pullwake.server import bodies
from pullwake.server.app import create_app
from pullwake.server.config import ServerConfig

DEADLINE = 0.5
HEAD = (
    b"POST /_electric/runners HTTP/1.1\r\nHost: x\r\n"
    b"electric-principal: system:dev-local\r\nContent-Type: application/json\r\n"
)


@pytest.fixture
async def port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    monkeypatch.setattr(bodies, "BODY_READ_SECONDS", DEADLINE)
    server = TestServer(create_app(ServerConfig(db=str(tmp_path / "t.db"))), host="127.0.0.1")
    await server.start_server()
    assert server.port is not None
    yield server.port
    await server.close()


async def answer(port: int, parts: list[bytes]) -> tuple[int, dict[str, object], float]:
    """Send `parts` 50 ms apart, then wait for the status line and the JSON body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)
        async with asyncio.timeout(10):  # the old behaviour: no answer at all
            head = await reader.readuntil(b"\r\n\r\n")
            took = time.monotonic() - t0
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = json.loads(await reader.readexactly(length))
        return int(head.split(b" ")[1]), body, took
    finally:
        writer.close()


async def test_a_body_that_stops_arriving_is_408(port: int) -> None:
    status, body, took = await answer(port, [HEAD + b"Content-Length: 100\r\n\r\n", b'{"id"'])
    assert status == 408
    assert body == {
        "error": {
            "code": "INVALID_REQUEST",
            "message": f"request body not complete within {DEADLINE:g} s",
        }
    }
    assert DEADLINE <= took < DEADLINE + 5  # margin: two shared cores


async def test_broken_chunk_framing_after_the_headers_is_not_a_hang(port: int) -> None:
    # aiohttp rejects the chunk size only after the handler began reading; its read
    # then never ends, so without the deadline this request is never answered.
    parts = [HEAD + b"Transfer-Encoding: chunked\r\n\r\n", b'2\r\n{"\r\nzz\r\n']
    status, body, _ = await answer(port, parts)
    assert status in (400, 408), body
