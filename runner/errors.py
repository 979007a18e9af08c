"""How a stream session ends: one exception, one reason, mapped in one place.

A session coroutine never returns: every end - even a clean EOF or a planned
rotation - raises `SessionEnded`, so the `backoff` decorator sees every end
(a function that returns counts as success to it and is never retried).

Which ends count as failures for the backoff (documented policy):

* ``rotated`` (the server's planned rotation) and any end of a *healthy*
  session (connected and alive for `healthy_after` seconds) are not
  failures: they leave the decorated coroutine (``giveup``) and the outer
  loop calls it afresh, so the next attempt is immediate and the backoff
  sequence restarts at 1 s.
* Everything else - refused, timeouts, 5xx/4xx, protocol errors, idle timeout,
  heartbeat bridge, an early EOF, ``closed`` - backs off: 1, 2, 4 ... 30 s with
  full jitter, no give-up.
"""

from __future__ import annotations

import asyncio

import aiohttp

from pullwake.core.protocol import EndReason


class SessionEnded(Exception):
    """A stream session is over.  Raised on every end, clean or not."""

    def __init__(
        self,
        reason: EndReason,
        detail: str = "",
        *,
        session: int = 0,
        healthy: bool = False,
        status: int | None = None,
    ) -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
        self.session = session
        self.healthy = healthy
        self.status = status

    @property
    def resets_backoff(self) -> bool:
        """True: reconnect at once with a fresh backoff (see the module docstring)."""
        return self.reason is EndReason.ROTATED or self.healthy

    def __repr__(self) -> str:
        return (
            f"SessionEnded({self.reason.value!r}, session={self.session}, "
            f"healthy={self.healthy}, detail={self.detail!r})"
        )


def classify(exc: BaseException, *, connected: bool) -> EndReason:
    """Map a low-level exception to the reason the session ended.

    `connected` says whether the response headers had arrived: before that,
    a timeout is a connect/header timeout; after, a read error is `error`.
    """
    if isinstance(exc, SessionEnded):
        return exc.reason
    if isinstance(exc, aiohttp.ClientResponseError):
        return EndReason.HTTP_ERROR
    if isinstance(exc, aiohttp.ClientConnectorError):
        # refused / unreachable; a connect that timed out at the OS level too
        if isinstance(exc.os_error, TimeoutError):
            return EndReason.CONNECT_TIMEOUT
        return EndReason.CONNECT_ERROR
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return EndReason.IDLE_TIMEOUT if connected else EndReason.CONNECT_TIMEOUT
    if isinstance(exc, (ValueError, aiohttp.ContentTypeError)):
        return EndReason.PROTOCOL_ERROR
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        if not connected and not isinstance(exc, aiohttp.ClientPayloadError):
            return EndReason.CONNECT_ERROR
        return EndReason.ERROR
    return EndReason.ERROR


def describe(exc: BaseException) -> str:
    """A short one-line text for `last_error` (class and message)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
