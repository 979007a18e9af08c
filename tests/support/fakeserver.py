"""One fake agents-server for in-process runner tests: a scripted aiohttp app on a
real loopback socket.

Why a fake next to the real server (tests/support/procs.py): it plays the
misbehaving server on cue - silent after headers, 5xx, garbage, RST, a hung
heartbeat - which the real one never does on purpose.  `FakeServer` answers the
runners API the way the runner uses it (register, heartbeat, claim, complete,
all recorded) and hands every GET to the `stream` behaviour; `serve` puts any
single handler on a socket.  Stream behaviours used by more than one test live
here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

from pullwake.core.protocol import H_KEEPALIVE

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]

RUNNER_ID = "r1"
WAKE_STREAM = f"/runners/{RUNNER_ID}/wake"


def sse_headers(keepalive: str = "0.2") -> dict[str, str]:
    """An SSE response announcing its keepalive interval (the runner sizes its watchdog on it)."""
    return {"Content-Type": "text/event-stream", H_KEEPALIVE: keepalive}


async def serve(handler: Behaviour) -> tuple[web.AppRunner, str]:
    """`handler` answers every method and path on a fresh loopback port: (runner, base URL).

    The caller owns the returned AppRunner (`await runner.cleanup()`); prefer `serving`.
    """
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def serving(handler: Behaviour) -> AsyncIterator[str]:
    """`serve` as a context: yields the base URL, closes the socket after."""
    runner, url = await serve(handler)
    try:
        yield url
    finally:
        await runner.cleanup()


async def forever() -> None:
    """Hold a response open until the client goes (the handler is cancelled then)."""
    await asyncio.Event().wait()


class FakeServer:
    """The runners API, scripted: register -> 201, heartbeat -> `heartbeat_status()` (or
    hangs while `hang_heartbeats`, or runs `heartbeat`), claim -> a token, complete -> {};
    every GET is the wake stream, answered by `stream`.  All calls are recorded."""

    def __init__(
        self,
        stream: Behaviour,
        *,
        heartbeat: Behaviour | None = None,
        heartbeat_status: Callable[[], int] = lambda: 200,
    ) -> None:
        self.stream = stream
        self.heartbeat = heartbeat
        self.heartbeat_status = heartbeat_status
        self.hang_heartbeats = False
        self.heartbeats = 0
        self.registers = 0
        self.stream_requests = 0
        self.claims: list[str] = []
        self.completed: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.method == "POST" and path.endswith("/heartbeat"):
            self.heartbeats += 1
            if self.hang_heartbeats:
                await forever()
            if self.heartbeat is not None:
                return await self.heartbeat(request)
            return web.json_response({}, status=self.heartbeat_status())
        if request.method == "POST" and path.endswith("/claim"):
            body: Any = await request.json()
            self.claims.append(str(body.get("wake_id")) if isinstance(body, dict) else "")
            return web.json_response({"claimToken": "t"})
        if request.method == "POST" and path.endswith("/complete"):
            self.completed.append(path)
            return web.json_response({})
        if request.method == "POST":
            self.registers += 1
            return web.json_response({"id": RUNNER_ID, "wake_stream": WAKE_STREAM}, status=201)
        self.stream_requests += 1
        return await self.stream(request)

    async def start(self) -> tuple[web.AppRunner, str]:
        return await serve(self.handle)

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[str]:
        """Serve from a background event loop (for tests driving real runner processes
        from plain, blocking code); yields the base URL, stops the loop after."""
        loop = asyncio.new_event_loop()
        started: list[tuple[web.AppRunner, str]] = []
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            started.append(loop.run_until_complete(self.start()))
            ready.set()
            loop.run_forever()
            loop.run_until_complete(started[0][0].cleanup())
            loop.close()

        thread = threading.Thread(target=run, name="fakeserver", daemon=True)
        thread.start()
        assert ready.wait(10), "fake server did not start"
        try:
            yield started[0][1]
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)


# --- stream behaviours shared by several tests -------------------------------------------
async def keepalives(request: web.Request) -> web.StreamResponse:
    """A healthy idle stream: a comment every 0.1 s under a 0.2 s keepalive header."""
    resp = web.StreamResponse(headers=sse_headers("0.2"))
    await resp.prepare(request)
    while True:
        await resp.write(b": keepalive\n\n")
        await asyncio.sleep(0.1)


async def headers_never_come(request: web.Request) -> web.StreamResponse:
    """Accepts the connection, never answers."""
    await forever()
    raise AssertionError("unreachable")


async def unavailable(request: web.Request) -> web.StreamResponse:
    return web.json_response({"error": "down"}, status=503)


def answering(status: int) -> Behaviour:
    """A stream that answers every request with `status` (a gateway whose backend is gone)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"code": "INTERNAL"}}, status=status)

    return answer
