"""The fault proxy, mode by mode, with real sockets on both sides."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pullwake.core.addresses import parse_hostport
from pullwake.tools.faultproxy import FaultProxy, Mode, ThreadedFaultProxy, parse_mode
from tests.support.procs import free_port, wait_until

SILENCE_S = 0.3  # how long "nothing arrives" is watched for


class _Echo(socketserver.BaseRequestHandler):
    server: EchoServer

    def handle(self) -> None:
        self.server.opened += 1
        try:
            while data := self.request.recv(65536):
                if data == b"RST":
                    self.request.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0"
                    )
                    self.request.close()  # before socketserver's shutdown() sends a FIN
                    break
                self.request.sendall(data)
        except OSError:
            pass
        finally:
            self.server.closed += 1


class EchoServer(socketserver.ThreadingTCPServer):
    """Upstream: echoes bytes, counts connections opened and seen closed."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.opened = 0
        self.closed = 0

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", int(self.server_address[1]))


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    srv = EchoServer()
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[ThreadedFaultProxy]:
    with ThreadedFaultProxy(upstream=echo.addr) as p:
        yield p


def connect(proxy: ThreadedFaultProxy) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    s.settimeout(5)
    return s


def roundtrip(s: socket.socket, data: bytes = b"ping") -> bytes:
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def silent(s: socket.socket) -> bool:
    """True when nothing (no byte, no FIN, no RST) arrives for SILENCE_S."""
    s.settimeout(SILENCE_S)
    try:
        s.recv(1)
    except TimeoutError:
        return True
    finally:
        s.settimeout(5)
    return False


def test_pass_forwards_both_ways_and_propagates_fin(
    proxy: ThreadedFaultProxy, echo: EchoServer
) -> None:
    with connect(proxy) as s:
        assert roundtrip(s, b"hello") == b"hello"
        assert proxy.connection_count() == 1
        s.shutdown(socket.SHUT_WR)  # client FIN -> upstream EOF -> upstream closes
        assert s.recv(1) == b""  # ... and its FIN comes back through the proxy
    wait_until(lambda: echo.closed == 1, 5, what="upstream saw the close")
    wait_until(lambda: proxy.connection_count() == 0, 5, what="proxy forgot the connection")


def test_upstream_reset_reaches_the_client(proxy: ThreadedFaultProxy) -> None:
    with connect(proxy) as s:
        assert roundtrip(s) == b"ping"
        s.sendall(b"RST")
        with pytest.raises(ConnectionResetError):
            s.recv(1)


def test_upstream_down_closes_the_client(echo: EchoServer) -> None:
    with ThreadedFaultProxy(upstream=("127.0.0.1", free_port())) as p, connect(p) as s:
        assert s.recv(1) == b""


def test_blackhole_holds_everything_then_heals_in_order(
    proxy: ThreadedFaultProxy, echo: EchoServer
) -> None:
    with connect(proxy) as s:
        assert roundtrip(s) == b"ping"
        proxy.set_mode("blackhole")
        s.sendall(b"held")
        assert silent(s)
        with connect(proxy) as late:  # accepted, but silent and not forwarded
            wait_until(lambda: proxy.connection_count() == 2, 5, what="late accepted")
            late.sendall(b"late")
            assert silent(late)
            assert echo.opened == 1
            proxy.set_mode(Mode.PASS)
            assert s.recv(4) == b"held"  # the partition healed: bytes flow in order
            assert late.recv(4) == b"late"
            assert roundtrip(s) == b"ping"


def test_half_open_closes_upstream_and_keeps_client_silent(
    proxy: ThreadedFaultProxy, echo: EchoServer
) -> None:
    with connect(proxy) as s:
        assert roundtrip(s) == b"ping"
        proxy.set_mode("half_open")
        wait_until(lambda: echo.closed == 1, 5, what="upstream connection closed")
        s.sendall(b"into the void")  # still accepted by the proxy, no error
        assert silent(s)
        with connect(proxy) as late:
            late.sendall(b"x")
            assert silent(late)
            assert echo.opened == 1  # nothing forwarded upstream
            wait_until(lambda: proxy.connection_count() == 2, 5, what="late one held")
        proxy.set_mode("pass")
        assert silent(s)  # a half-open connection stays dead after healing
        with connect(proxy) as fresh:
            assert roundtrip(fresh) == b"ping"


def test_refuse_closes_the_listener_keeps_established(proxy: ThreadedFaultProxy) -> None:
    with connect(proxy) as s:
        assert roundtrip(s) == b"ping"
        proxy.set_mode("refuse")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        assert roundtrip(s) == b"ping"
        port = proxy.port
        proxy.set_mode("pass")
        assert proxy.port == port
        with connect(proxy) as again:
            assert roundtrip(again) == b"ping"


def test_reset_resets_existing_and_new(proxy: ThreadedFaultProxy, echo: EchoServer) -> None:
    with connect(proxy) as s:
        assert roundtrip(s) == b"ping"
        proxy.set_mode("reset")
        with pytest.raises(ConnectionResetError):
            s.recv(1)
    wait_until(lambda: echo.closed == 1, 5, what="upstream reset too")
    # the RST may even beat connect() back
    with pytest.raises(ConnectionResetError), connect(proxy) as late:
        late.recv(1)
    assert proxy.connection_count() == 0


def test_close_sends_fin_to_existing_and_new(proxy: ThreadedFaultProxy, echo: EchoServer) -> None:
    with connect(proxy) as s:
        assert roundtrip(s) == b"ping"
        proxy.set_mode("close")
        assert s.recv(1) == b""  # a clean FIN, not a reset
    wait_until(lambda: echo.closed == 1, 5, what="upstream closed too")
    with connect(proxy) as late:
        assert late.recv(1) == b""
    wait_until(lambda: proxy.connection_count() == 0, 5, what="closed connections forgotten")


def test_starts_in_a_fault_mode(echo: EchoServer) -> None:
    with ThreadedFaultProxy(upstream=echo.addr, mode="refuse") as p:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", p.port), timeout=5)
        p.set_mode("pass")
        with connect(p) as s:
            assert roundtrip(s) == b"ping"


def test_parsers_reject_bad_input() -> None:
    assert parse_mode("half-open") is Mode.HALF_OPEN
    with pytest.raises(ValueError, match="unknown proxy mode"):
        parse_mode("flaky")
    assert parse_hostport("127.0.0.1:80") == ("127.0.0.1", 80)
    for bad in ("127.0.0.1", ":80", "h:x", "h:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_hostport(bad)


async def test_async_api(echo: EchoServer) -> None:
    async with FaultProxy(echo.addr) as p:
        r, w = await asyncio.open_connection("127.0.0.1", p.port)
        w.write(b"abc")
        assert await asyncio.wait_for(r.readexactly(3), 5) == b"abc"
        await p.set_mode(Mode.CLOSE)
        assert await asyncio.wait_for(r.read(1), 5) == b""
        assert p.mode is Mode.CLOSE
        w.close()


def _control(port: int, method: str, path: str) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_cli_control_endpoint_and_signals(echo: EchoServer, tmp_path: Path) -> None:
    listen, ctl = free_port(), free_port()
    argv = [sys.executable, "-m", "pullwake", "proxy", "--listen", f"127.0.0.1:{listen}"]
    argv += ["--upstream", f"{echo.addr[0]}:{echo.addr[1]}", "--control", f"127.0.0.1:{ctl}"]
    with open(tmp_path / "proxy.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _control(ctl, "GET", "/")[0] == 200, 10, what="control up")
        with socket.create_connection(("127.0.0.1", listen), timeout=5) as s:
            assert roundtrip(s) == b"ping"
            assert _control(ctl, "POST", "/mode/blackhole")[1]["mode"] == "blackhole"
            s.sendall(b"x")
            assert silent(s)
            proc.send_signal(signal.SIGUSR2)  # back to pass
            assert s.recv(1) == b"x"
            proc.send_signal(signal.SIGUSR1)  # --usr1-mode, default blackhole
            wait_until(lambda: _control(ctl, "GET", "/")[1]["mode"] == "blackhole", 5)
        code, body = _control(ctl, "POST", "/mode/flaky")
        assert code == 400 and "unknown proxy mode" in str(body["error"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "mode blackhole" in (tmp_path / "proxy.log").read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=5)


def test_cli_bad_upstream_is_one_line() -> None:
    argv = [sys.executable, "-m", "pullwake", "proxy", "--upstream", "nowhere"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "pullwake: error: expected HOST:PORT, got 'nowhere'"
    ]
