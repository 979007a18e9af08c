"""A fault-injecting TCP proxy: the userland faults a runner must survive.

Tests put it between a runner and the server and switch its mode at any time:

- ``pass``: forward both ways (half-closes and resets are propagated).
- ``blackhole``: keep every connection, forward nothing either way; new
  connections are accepted and stay silent.  Back in ``pass`` the held bytes
  flow again in order, like a healed partition.
- ``half_open``: close every upstream connection but keep the client side
  open and silent (reading and discarding) - the proxy that outlives its
  server.  Such connections stay dead even after the mode changes back;
  new connections in this mode are accepted and held the same way.
- ``refuse``: close the listening socket (new connects get ECONNREFUSED);
  established connections keep flowing.  Any other mode listens again on
  the same port.
- ``reset``: RST every connection now (``SO_LINGER`` 0, then close) and
  RST every new one.
- ``close``: FIN every connection now and close every new one at once.

Its kernel still ACKs everything, so it cannot exercise TCP keepalive; the
iptables tests do that.  `FaultProxy` is the asyncio API, `ThreadedFaultProxy`
runs one on its own loop in a thread for synchronous tests, and
`pullwake proxy` is the command line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

_CHUNK = 65536
_CLOSE_DRAIN_S = 5.0  # how long a FIN'd connection is drained before the final close


class Mode(enum.StrEnum):
    PASS = "pass"
    BLACKHOLE = "blackhole"
    HALF_OPEN = "half_open"
    REFUSE = "refuse"
    RESET = "reset"
    CLOSE = "close"


def parse_mode(value: str | Mode) -> Mode:
    """A mode from its name (``half-open`` accepted too); ValueError otherwise."""
    try:
        return Mode(str(value).replace("-", "_"))
    except ValueError:
        names = ", ".join(m.value for m in Mode)
        raise ValueError(f"unknown proxy mode {value!r} (one of: {names})") from None


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Close with RST: linger 0 makes the kernel reset instead of FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    """One accepted client connection and (maybe) its upstream connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.client_r = reader
        self.client_w = writer
        self.up_w: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.held = False  # half-open: upstream gone, client side kept silent

    def __repr__(self) -> str:
        peer = self.client_w.get_extra_info("peername")
        return f"<_Conn peer={peer} upstream={self.up_w is not None} held={self.held}>"


class FaultProxy:
    """The proxy on the running asyncio loop.  Use ``async with`` or start()/stop()."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        mode: Mode | str = Mode.PASS,
    ) -> None:
        self.upstream = upstream
        self.host = host
        self._port = port
        self._mode = parse_mode(mode)
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._flowing = asyncio.Event()
        self.accepted = 0  # connections accepted since start, whatever the mode

    def __repr__(self) -> str:
        return (
            f"<FaultProxy {self.host}:{self._port} -> {self.upstream[0]}:{self.upstream[1]} "
            f"mode={self._mode} connections={len(self._conns)}>"
        )

    @property
    def port(self) -> int:
        return self._port

    @property
    def mode(self) -> Mode:
        return self._mode

    def connection_count(self) -> int:
        """Client connections open right now (forwarding, silent or held)."""
        return len(self._conns)

    async def start(self) -> FaultProxy:
        await self._listen()  # even in refuse mode: learn the port, then close it
        await self.set_mode(self._mode)
        return self

    async def stop(self) -> None:
        """Stop listening and reset every connection (nothing lingers after a test)."""
        self._unlisten()
        tasks = [c.task for c in self._conns if c.task is not None]
        for conn in list(self._conns):
            self._drop(conn, rst=True)
        self._conns.clear()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def set_mode(self, mode: Mode | str) -> None:
        """Switch mode; when this returns the effect on existing connections is done."""
        new = parse_mode(mode)
        self._mode = new
        if new is Mode.REFUSE:
            self._unlisten()
        elif self._server is None:
            await self._listen()
        if new in (Mode.PASS, Mode.REFUSE):
            self._flowing.set()
        else:
            self._flowing.clear()
        for conn in list(self._conns):
            if new is Mode.RESET:
                self._drop(conn, rst=True)
            elif new is Mode.CLOSE:
                self._drop(conn, rst=False)
            elif new is Mode.HALF_OPEN and not conn.held:
                self._hold(conn)
        await asyncio.sleep(0)

    # --- listening ------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self._port, reuse_address=True
        )
        self._port = int(self._server.sockets[0].getsockname()[1])

    def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()  # closes the listening socket only, not accepted ones
            self._server = None

    # --- per connection ---------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        conn = _Conn(reader, writer)
        self._conns.add(conn)
        if self._mode is Mode.RESET:
            self._drop(conn, rst=True)
        elif self._mode is Mode.CLOSE:
            self._drop(conn, rst=False)
        elif self._mode is Mode.HALF_OPEN:
            self._hold(conn)
        else:
            conn.task = asyncio.create_task(self._forward(conn))

    async def _forward(self, conn: _Conn) -> None:
        try:
            await self._flowing.wait()  # a connection accepted in blackhole waits here
            try:
                up_r, up_w = await asyncio.open_connection(*self.upstream)
            except OSError:
                self._drop(conn, rst=False)  # upstream down: the client sees a close
                return
            conn.up_w = up_w
            await asyncio.gather(
                self._pump(conn, conn.client_r, up_w, conn.client_w),
                self._pump(conn, up_r, conn.client_w, up_w),
            )
            up_w.close()  # both directions ended: both sides have sent FIN
            conn.client_w.close()
            self._forget(conn)
        except asyncio.CancelledError:
            raise
        except Exception:  # a pump failure: reset both sides, like a broken path
            self._drop(conn, rst=True)

    async def _pump(
        self,
        conn: _Conn,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        src_w: asyncio.StreamWriter,
    ) -> None:
        """Copy one direction; EOF becomes a half-close, a reset resets the other side."""
        while True:
            await self._flowing.wait()
            try:
                data = await src.read(_CHUNK)
            except OSError:  # ECONNRESET from src: pass the reset on
                _rst(dst)
                _rst(src_w)
                self._forget(conn)
                return
            if not data:
                with contextlib.suppress(OSError, RuntimeError):
                    if dst.can_write_eof() and not dst.is_closing():
                        dst.write_eof()
                return
            await self._flowing.wait()
            if dst.is_closing():
                return
            dst.write(data)
            try:
                await dst.drain()
            except OSError:
                _rst(src_w)
                return

    def _hold(self, conn: _Conn) -> None:
        """Half-open: drop the upstream, keep reading and discarding from the client."""
        if conn.task is not None:
            conn.task.cancel()
        if conn.up_w is not None:
            conn.up_w.close()
            conn.up_w = None
        conn.held = True
        conn.task = asyncio.create_task(self._discard(conn))

    async def _discard(self, conn: _Conn) -> None:
        with contextlib.suppress(OSError):
            while await conn.client_r.read(_CHUNK):
                pass
        conn.client_w.close()  # the client closed (or reset): so do we
        self._forget(conn)

    def _drop(self, conn: _Conn, *, rst: bool) -> None:
        """End a connection now: RST or FIN to the client, the upstream closed too."""
        if conn.task is not None and conn.task is not asyncio.current_task():
            conn.task.cancel()
        conn.task = None
        if rst:
            _rst(conn.client_w)
            _rst(conn.up_w)
            self._forget(conn)
            return
        if conn.up_w is not None:
            conn.up_w.close()
            conn.up_w = None
        with contextlib.suppress(OSError, RuntimeError):
            conn.client_w.write_eof()  # FIN now, even with unread bytes pending
        conn.task = asyncio.create_task(self._drain_then_close(conn))

    async def _drain_then_close(self, conn: _Conn) -> None:
        # Read what the client still sends so the final close() is a FIN, not an RST.
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(_CLOSE_DRAIN_S):
                while await conn.client_r.read(_CHUNK):
                    pass
        conn.client_w.close()
        self._forget(conn)

    def _forget(self, conn: _Conn) -> None:
        self._conns.discard(conn)


class ThreadedFaultProxy:
    """A `FaultProxy` on its own event loop in a daemon thread, for sync tests.

    ``with ThreadedFaultProxy(upstream=("127.0.0.1", port)) as proxy:`` - every
    method blocks until the proxy loop has done the work.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        mode: Mode | str = Mode.PASS,
    ) -> None:
        self._args = (upstream, host, port, parse_mode(mode))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._proxy: FaultProxy | None = None

    def __repr__(self) -> str:
        return f"<ThreadedFaultProxy {self._proxy!r}>"

    def start(self) -> ThreadedFaultProxy:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="faultproxy", daemon=True)
        self._thread.start()
        upstream, host, port, mode = self._args

        async def make() -> FaultProxy:
            return await FaultProxy(upstream, host=host, port=port, mode=mode).start()

        self._proxy = self._call(make())
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._proxy is not None:
            with contextlib.suppress(Exception):
                self._call(self._proxy.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> ThreadedFaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def proxy(self) -> FaultProxy:
        assert self._proxy is not None, "proxy not started"
        return self._proxy

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` - handy as a runner's ``--server``."""
        return f"http://{self.proxy.host}:{self.port}"

    @property
    def mode(self) -> Mode:
        return self.proxy.mode

    @property
    def accepted(self) -> int:
        return self._call(self._read(lambda: self.proxy.accepted))

    def set_mode(self, mode: Mode | str) -> None:
        self._call(self.proxy.set_mode(mode))

    def set_upstream(self, upstream: tuple[str, int]) -> None:
        """Where new connections go (existing ones keep theirs)."""

        def assign() -> None:
            self.proxy.upstream = upstream

        self._call(self._read(assign))

    def connection_count(self) -> int:
        return self._call(self._read(self.proxy.connection_count))

    @staticmethod
    async def _read(fn: Callable[[], T]) -> T:
        return fn()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        assert self._loop is not None, "proxy not started"
        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)
