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
CALLBACKS = "/_electric/wake-callbacks/"
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
    hangs while `hang_heartbeats`, or runs `heartbeat`), claim -> the real agents-server's
    notification (or the next of `claim_answers`: (status, body)) whose `callback` is
    `POST /_electric/wake-callbacks/<id>` here -> `{"ok":true}` (or the next of
    `callback_answers`); every GET is the wake stream, answered by `stream`.  All calls
    are recorded: `claims` (subscription id or wake id of each claim body),
    `claim_bodies`, `callbacks` ((path, Authorization, body) each), `completed` (the
    paths of `done:true` callbacks)."""

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
        self.claim_bodies: list[Any] = []
        self.claim_answers: list[tuple[int, Any]] = []
        self.callbacks: list[tuple[str, str, Any]] = []
        self.callback_answers: list[tuple[int, Any]] = []
        self.completed: list[str] = []
        self.register_bodies: list[Any] = []
        self.principals: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.method == "POST" and path.endswith("/heartbeat"):
            self.heartbeats += 1
            if self.hang_heartbeats:
                await forever()
            if self.heartbeat is not None:
                return await self.heartbeat(request)
            return web.json_response({}, status=self.heartbeat_status())
        self.principals.append(request.headers.get("electric-principal", ""))
        if request.method == "POST" and path.endswith("/claim"):
            body: Any = await request.json()
            self.claim_bodies.append(body)
            key = body.get("subscription_id", body.get("wake_id")) if isinstance(body, dict) else ""
            self.claims.append(str(key))
            if self.claim_answers:
                status, answer = self.claim_answers.pop(0)
                if status == 204:
                    return web.Response(status=204)
                return web.json_response(answer, status=status)
            return web.json_response(self.notification(request, len(self.claims)))
        if request.method == "POST" and path.startswith(CALLBACKS):
            body = await request.json() if request.can_read_body else None
            self.callbacks.append((path, request.headers.get("Authorization", ""), body))
            if self.callback_answers:
                status, answer = self.callback_answers.pop(0)
                return web.json_response(answer, status=status)
            if isinstance(body, dict) and body.get("done") is True:
                self.completed.append(path)
            return web.json_response({"ok": True, "next_wake": False})
        if request.method == "POST":
            self.registers += 1
            self.register_bodies.append(await request.json())
            return web.json_response({"id": RUNNER_ID, "wake_stream": WAKE_STREAM}, status=201)
        self.stream_requests += 1
        return await self.stream(request)

    @staticmethod
    def notification(request: web.Request, n: int) -> dict[str, Any]:
        """A claim answer shaped like the real agents-server's (upstream-protocol.md 6)."""
        origin = f"{request.scheme}://{request.host}"
        out = FakeServer.notification_fields(n)
        out["callback"] = origin + out["callback"]
        return out

    @staticmethod
    def notification_fields(n: int) -> dict[str, Any]:
        """The notification of claim `n`; `callback` is a path (no origin)."""
        wake_id = f"w_{n:024x}"
        return {
            "consumerId": wake_id,
            "epoch": n,
            "wakeId": wake_id,
            "streamPath": "/fake/e1/main",
            "streams": [{"path": "/fake/e1/main", "offset": f"{0:016d}_{n:016d}"}],
            "callback": f"{CALLBACKS}{wake_id}",
            "claimToken": f"token-{n}",
            "triggerEvent": "message_received",
            "entity": {"type": "fake", "status": "idle", "url": "/fake/e1"},
        }

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
