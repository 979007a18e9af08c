"""One stream session: open the wake stream, read it, and end with a reason.

`run_session` never returns: it raises `SessionEnded` on every end, clean or
not.  Two readers share the same detectors:

* SSE: one long response parsed incrementally; every byte (event or keepalive
  comment) feeds the read-idle watchdog.  The watchdog bound is
  `idle_timeout` if configured, else 3 x the server's `Stream-Keepalive-Interval`
  header, else 15 s.
* long-poll: a catch-up read then `live=long-poll` requests in a loop; each
  request must answer within `long_poll_timeout` (the idle bound for this mode).
  With `hidden_retry` (the legacy profile) a failed request is retried here,
  inside the stream layer, with 100 ms x1.3 capped at 60 s, and never reported:
  the seed's bug, reproduced on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, Protocol

import aiohttp

from pullwake.core.protocol import (
    H_CLOSED,
    H_CURSOR,
    H_KEEPALIVE,
    H_NEXT_OFFSET,
    EndReason,
    LiveMode,
    current_cursor,
)
from pullwake.runner.config import RunnerConfig
from pullwake.runner.errors import SessionEnded, classify, describe
from pullwake.runner.sse import Comment, Control, DataBatch, SSEParser, SSEProtocolError, decode

log = logging.getLogger("pullwake.runner.session")

DEFAULT_IDLE_S = 15.0
IDLE_FACTOR = 3.0
ROTATE_COMMENT = "rotate"  # a server may say so before a planned SSE rotation


class SessionHooks(Protocol):
    """What a session reports back to the runner while it reads."""

    def connected(self, idle_timeout: float | None) -> None:
        """Response headers arrived with 200: the session is streaming."""

    def got_bytes(self) -> None:
        """Any byte arrived (event, keepalive, long-poll answer)."""

    async def wakes(self, events: Sequence[dict[str, Any]]) -> None:
        """Wake events read, in order; may block while the dispatch queue is full."""

    def offset(self, next_offset: str) -> None:
        """The stream is now at `next_offset` (after every wake passed so far)."""


def idle_bound(config: RunnerConfig, headers: Mapping[str, str]) -> float | None:
    """The read-idle watchdog bound for this session, None when it is off."""
    if not config.profile.idle_watchdog:
        return None
    if config.idle_timeout is not None:
        return config.idle_timeout
    try:
        advertised = float(headers.get(H_KEEPALIVE, ""))
    except ValueError:
        advertised = 0.0
    return IDLE_FACTOR * advertised if advertised > 0 else DEFAULT_IDLE_S


class Session:
    """One connect-and-read; `number` is the machine's session number."""

    def __init__(
        self,
        number: int,
        http: aiohttp.ClientSession,
        config: RunnerConfig,
        url: str,
        start_offset: str,
        hooks: SessionHooks,
    ) -> None:
        self.number = number
        self._http = http
        self._config = config
        self._url = url
        self.offset = start_offset
        self._hooks = hooks
        self._connected_at: float | None = None
        self.cursor: str | None = None

    def __repr__(self) -> str:
        return f"<Session {self.number} offset={self.offset} connected={self.connected}>"

    @property
    def connected(self) -> bool:
        return self._connected_at is not None

    @property
    def healthy(self) -> bool:
        """Connected for `healthy_after` s: however it ends, the backoff starts afresh."""
        return (
            self._connected_at is not None
            and time.monotonic() - self._connected_at >= self._config.healthy_after
        )

    def _end(self, reason: EndReason, detail: str = "", status: int | None = None) -> NoReturn:
        raise SessionEnded(reason, detail, session=self.number, healthy=self.healthy, status=status)

    def _fail(self, exc: BaseException) -> NoReturn:
        self._end(classify(exc, connected=self.connected), describe(exc))

    async def run(self) -> NoReturn:
        if self._config.live_mode is LiveMode.SSE:
            await self._run_sse()
        else:
            await self._run_long_poll()

    # --- SSE -----------------------------------------------------------------------
    async def _open(self, params: dict[str, str], header_timeout: float | None) -> Any:
        try:
            async with asyncio.timeout(header_timeout):
                resp = await self._http.get(self._url, params=params)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ClientError):
                self._end(EndReason.CONNECT_TIMEOUT, "no response headers in time")
            self._fail(exc)
        return resp

    async def _run_sse(self) -> NoReturn:
        cfg = self._config
        params = {"offset": self.offset, "live": "sse", "cursor": current_cursor()}
        resp = await self._open(params, cfg.connect_timeout if cfg.profile.timeouts else None)
        async with resp:
            if resp.status != 200:
                body = (await _safe_text(resp))[:200]
                self._end(EndReason.HTTP_ERROR, f"HTTP {resp.status} {body}", resp.status)
            idle = idle_bound(cfg, resp.headers)
            self._connected_at = time.monotonic()
            self._hooks.connected(idle)
            parser = SSEParser()
            rotate = False
            while True:
                try:
                    async with asyncio.timeout(idle):
                        chunk = await resp.content.readany()
                except TimeoutError as exc:
                    if isinstance(exc, aiohttp.ClientError):
                        self._fail(exc)
                    self._end(EndReason.IDLE_TIMEOUT, f"no byte for {idle:g}s")
                except (aiohttp.ClientError, OSError) as exc:
                    self._fail(exc)
                if not chunk:
                    self._end(EndReason.ROTATED if rotate else EndReason.EOF, "stream ended")
                self._hooks.got_bytes()
                try:
                    for item in parser.feed(chunk):
                        if isinstance(item, Comment):
                            rotate = rotate or item.text == ROTATE_COMMENT
                            continue
                        decoded = decode(item)
                        if isinstance(decoded, DataBatch):
                            await self._hooks.wakes(decoded.events)
                        else:
                            self._control(decoded)
                except SSEProtocolError as exc:
                    self._end(EndReason.PROTOCOL_ERROR, str(exc))

    def _control(self, ctl: Control) -> None:
        self.offset, self.cursor = ctl.next_offset, ctl.cursor
        self._hooks.offset(ctl.next_offset)
        if ctl.closed:
            self._end(EndReason.CLOSED, "Stream-Closed")

    # --- long-poll -----------------------------------------------------------------
    async def _run_long_poll(self) -> NoReturn:
        cfg = self._config
        bound = cfg.long_poll_timeout if cfg.profile.idle_watchdog else None
        if not cfg.profile.timeouts:
            bound = None
        delay = 0.1
        live = False  # the first request is the catch-up read
        while True:
            params = {"offset": self.offset}
            if live:
                params |= {"live": "long-poll", "cursor": self.cursor or current_cursor()}
            try:
                await self._poll_once(params, bound)
                delay = 0.1
                live = True
            except SessionEnded as end:
                if not (cfg.profile.hidden_retry and self.connected and _retried_inside(end)):
                    raise
                # legacy: swallow the failure, retry later, tell nobody
                log.debug("legacy stream layer retries in %.2fs after %r", delay, end)
                await asyncio.sleep(delay)
                delay = min(delay * 1.3, 60.0)

    async def _poll_once(self, params: dict[str, str], bound: float | None) -> None:
        header_bound = bound if params.get("live") else self._config.connect_timeout
        if not self._config.profile.timeouts:
            header_bound = None
        resp = await self._open(params, header_bound)
        async with resp:
            if resp.status not in (200, 204):
                body = (await _safe_text(resp))[:200]
                self._end(EndReason.HTTP_ERROR, f"HTTP {resp.status} {body}", resp.status)
            try:
                async with asyncio.timeout(header_bound):
                    raw = await resp.read()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._fail(exc)
            if not self.connected:
                self._connected_at = time.monotonic()
                self._hooks.connected(bound)
            self._hooks.got_bytes()
            if resp.status == 200 and raw.strip():
                try:
                    events = json.loads(raw)
                except ValueError as exc:
                    self._end(EndReason.PROTOCOL_ERROR, f"body is not JSON: {exc}")
                if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
                    self._end(EndReason.PROTOCOL_ERROR, "body is not a JSON array of objects")
                await self._hooks.wakes(events)
            next_offset = resp.headers.get(H_NEXT_OFFSET)
            if not next_offset:
                self._end(EndReason.PROTOCOL_ERROR, f"no {H_NEXT_OFFSET} header")
            self.offset = next_offset
            self.cursor = resp.headers.get(H_CURSOR, self.cursor)
            self._hooks.offset(next_offset)
            if resp.headers.get(H_CLOSED, "").lower() == "true":
                self._end(EndReason.CLOSED, "Stream-Closed")


def _retried_inside(end: SessionEnded) -> bool:
    """What the original stream client retries silently: network errors, 5xx, 429."""
    if end.reason is EndReason.HTTP_ERROR:
        return end.status is not None and (end.status >= 500 or end.status == 429)
    return end.reason not in (EndReason.CLOSED, EndReason.PROTOCOL_ERROR)


async def _safe_text(resp: aiohttp.ClientResponse) -> str:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            return (await resp.text()).strip().replace("\n", " ")
    return ""
