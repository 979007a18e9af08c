"""`pullwake proxy`: the fault proxy as a process, switched by HTTP or signals.

Kept apart from `pullwake.tools.faultproxy` (the proxy itself, which tests and
benchmarks embed) so that module stays about one thing and imports nothing back.
The control endpoint is deliberately tiny HTTP/1.0 on asyncio streams:
``POST /mode/NAME`` switches, ``GET /`` reports as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

from pullwake.core.addresses import parse_hostport
from pullwake.tools.faultproxy import FaultProxy, Mode, parse_mode


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "proxy",
        help="fault-injecting TCP proxy (pass, blackhole, half_open, refuse, reset, close)",
        description=(
            "A TCP proxy whose fault mode can be switched while it runs. "
            "Modes: pass (forward), blackhole (hold everything, forward nothing), "
            "half_open (close upstream, keep the client side open and silent), "
            "refuse (stop listening), reset (RST all connections, and new ones), "
            "close (FIN all connections, and new ones). "
            "Switch modes with the control endpoint: `curl -X POST "
            "http://CONTROL/mode/blackhole`; `GET http://CONTROL/` shows mode and "
            "connection count as JSON. Or with signals: SIGUSR1 switches to --usr1-mode, "
            "SIGUSR2 back to pass. SIGINT/SIGTERM stop the proxy (exit 0)."
        ),
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:0",
        help="HOST:PORT to accept clients on; port 0 picks a free one (default: %(default)s)",
    )
    p.add_argument("--upstream", required=True, help="HOST:PORT to forward to (required)")
    p.add_argument("--mode", default="pass", help="initial mode (default: %(default)s)")
    p.add_argument(
        "--control",
        default=None,
        help="HOST:PORT of the HTTP control endpoint (off unless given)",
    )
    p.add_argument(
        "--usr1-mode",
        default="blackhole",
        help="mode that SIGUSR1 switches to (default: %(default)s)",
    )
    p.set_defaults(func=run_proxy_command)


def run_proxy_command(args: argparse.Namespace) -> int:
    """`pullwake proxy`: parse addresses, run until SIGINT/SIGTERM."""
    from pullwake.core.errors import CLIError

    try:
        listen = parse_hostport(args.listen)
        upstream = parse_hostport(args.upstream)
        control = parse_hostport(args.control) if args.control else None
        mode = parse_mode(args.mode)
        usr1 = parse_mode(args.usr1_mode)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    try:
        asyncio.run(_serve_cli(listen, upstream, control, mode, usr1))
    except OSError as exc:
        raise CLIError(f"cannot listen: {exc}") from None
    return 0


async def _serve_cli(
    listen: tuple[str, int],
    upstream: tuple[str, int],
    control: tuple[str, int] | None,
    mode: Mode,
    usr1: Mode,
) -> None:
    proxy = await FaultProxy(upstream, host=listen[0], port=listen[1], mode=mode).start()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    def switch(m: Mode) -> None:
        t = asyncio.create_task(proxy.set_mode(m))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        print(f"proxy: mode {m}", flush=True)

    loop.add_signal_handler(signal.SIGINT, done.set)
    loop.add_signal_handler(signal.SIGTERM, done.set)
    loop.add_signal_handler(signal.SIGUSR1, switch, usr1)
    loop.add_signal_handler(signal.SIGUSR2, switch, Mode.PASS)
    ctl: asyncio.Server | None = None
    if control is not None:
        ctl = await asyncio.start_server(
            lambda r, w: _control(proxy, r, w), control[0], control[1], reuse_address=True
        )
        cport = ctl.sockets[0].getsockname()[1]
        print(f"proxy: control http://{control[0]}:{cport}/", flush=True)
    print(
        f"proxy: {listen[0]}:{proxy.port} -> {upstream[0]}:{upstream[1]} mode {proxy.mode}",
        flush=True,
    )
    try:
        await done.wait()
    finally:
        if ctl is not None:
            ctl.close()
        await proxy.stop()


async def _control(
    proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A tiny HTTP/1.0 endpoint: ``POST /mode/NAME`` switches, ``GET /`` reports."""
    try:
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
        method, path, *_ = head.decode("latin-1").split("\r\n", 1)[0].split(" ")
        status, body = 200, dict[str, Any]()
        if method in ("POST", "PUT") and path.startswith("/mode/"):
            try:
                await proxy.set_mode(path.removeprefix("/mode/"))
            except ValueError as exc:
                status, body = 400, {"error": str(exc)}
        elif method != "GET" or path != "/":
            status, body = 404, {"error": "use GET / or POST /mode/NAME"}
        if status == 200:
            body = {
                "mode": str(proxy.mode),
                "connections": proxy.connection_count(),
                "accepted": proxy.accepted,
                "port": proxy.port,
            }
        data = json.dumps(body).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
        writer.write(
            f"HTTP/1.0 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()
    except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
