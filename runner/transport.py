"""HTTP transport: aiohttp sessions with the right timeouts and socket options.

Two client sessions, never shared: the *stream* session holds the one
long-lived read (its sockets get TCP keepalive when the profile wants it, and
``total=None`` so a healthy stream is never killed by a total timeout); the
*api* session carries short requests (heartbeat, claim, complete), each with
its own overall timeout so none can hang.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from typing import Any

import aiohttp
import yarl
from aiohappyeyeballs import AddrInfoType

from pullwake.core.protocol import H_PRINCIPAL, H_RUNNER_ID
from pullwake.runner.config import RunnerConfig, TcpKeepalive

# Linux option numbers (present in `socket` on Linux; guarded for other systems).
_TCP_KEEPIDLE = getattr(socket, "TCP_KEEPIDLE", None)
_TCP_KEEPINTVL = getattr(socket, "TCP_KEEPINTVL", None)
_TCP_KEEPCNT = getattr(socket, "TCP_KEEPCNT", None)
_TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", None)


def keepalive_options(ka: TcpKeepalive) -> list[tuple[int, int, int]]:
    """(level, option, value) triples to set on a stream socket."""
    opts = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (
        (_TCP_KEEPIDLE, ka.idle_s),
        (_TCP_KEEPINTVL, ka.interval_s),
        (_TCP_KEEPCNT, ka.count),
        (_TCP_USER_TIMEOUT, ka.user_timeout_ms),
    ):
        if name is not None:
            opts.append((socket.IPPROTO_TCP, name, value))
    return opts


def keepalive_socket_factory(ka: TcpKeepalive) -> Any:
    """A `TCPConnector(socket_factory=...)` that sets keepalive before connect."""
    options = keepalive_options(ka)

    def factory(addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, _ = addr_info
        sock = socket.socket(family=family, type=type_, proto=proto)
        try:
            for level, opt, value in options:
                sock.setsockopt(level, opt, value)
        except OSError:
            sock.close()
            raise
        return sock

    return factory


def base_headers(config: RunnerConfig) -> dict[str, str]:
    return {H_PRINCIPAL: config.principal, H_RUNNER_ID: config.runner_id}


def stream_timeout(config: RunnerConfig) -> aiohttp.ClientTimeout:
    """No total; bounded connect; `sock_read` a backstop behind the idle watchdog.

    The watchdog (sized from the server's advertised keepalive) is the real
    idle bound; `sock_read` only catches a read that somehow escapes it.  With
    the tail probe on there is no `sock_read`: a healthy server may stay silent
    for as long as it likes, and the probe tells silence from death.  The
    legacy and upstream profiles read without any read timeout, as the
    original did.
    """
    if not config.profile.timeouts:
        return aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None, sock_read=None)
    sock_read = None
    if config.profile.idle_watchdog and not (
        config.profile.tail_probe and config.tail_probe_interval > 0
    ):
        sock_read = max(90.0, 2 * (config.idle_timeout or 45.0), config.long_poll_timeout)
    return aiohttp.ClientTimeout(
        total=None,
        connect=config.connect_timeout,
        sock_connect=config.connect_timeout,
        sock_read=sock_read,
    )


def open_stream_session(
    config: RunnerConfig,
    trace_configs: Sequence[aiohttp.TraceConfig] = (),
) -> aiohttp.ClientSession:
    factory = keepalive_socket_factory(config.keepalive) if config.profile.tcp_keepalive else None
    connector = aiohttp.TCPConnector(limit=4, force_close=True, socket_factory=factory)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=stream_timeout(config),
        headers=base_headers(config),
        auto_decompress=False,
        trace_configs=list(trace_configs) or None,  # telemetry: spans + traceparent (runner.otel)
    )


def open_api_session(
    config: RunnerConfig,
    trace_configs: Sequence[aiohttp.TraceConfig] = (),
) -> aiohttp.ClientSession:
    # Keep-alive pooling off: a pooled socket to a dead server would make the
    # next heartbeat wait for its own timeout instead of being refused at once.
    connector = aiohttp.TCPConnector(limit=32, force_close=True)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=30, connect=config.connect_timeout),
        headers=base_headers(config),
        trace_configs=list(trace_configs) or None,  # telemetry: spans + traceparent (runner.otel)
    )


_ENCODED = re.compile(r"^(?:[\x21-\x24\x26-\x7e]|%[0-9A-Fa-f]{2})*$")


def raw_url(text: str) -> yarl.URL:
    """`text` sent exactly as written (the wake stream path a server names is used raw:
    yarl would otherwise turn `%40` into `@`, another stream to a Durable Streams server,
    which keys streams by the raw path).  Text that is not a valid encoded URL (spaces,
    non-ASCII, a stray `%`) is encoded as usual."""
    if _ENCODED.match(text):
        return yarl.URL(text, encoded=True)
    return yarl.URL(text)
