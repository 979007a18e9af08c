"""One stream session: open the wake stream, read it, and end with a reason.

`run_session` never returns: it raises `SessionEnded` on every end, clean or
not.  Two readers share the same detectors:

* SSE: one long response parsed incrementally; every byte (event, control
  event or keepalive comment) feeds the read-idle watchdog.  The watchdog bound
  is `idle_timeout` if configured, else 3 x the server's
  `Stream-Keepalive-Interval` header, else 45 s (the real agents-server sends
  no header and no comment, only a pair of `control` events every 30 s).
* long-poll: a catch-up read then `live=long-poll` requests in a loop; each
  request must answer within `long_poll_timeout` (the idle bound for this mode;
  the real server answers 204 after 30 s).

While the read waits on the network, the tail probe (profile `tail_probe`,
`runner.tailprobe`) asks the stream's tail on a fresh connection every
`tail_probe_interval` s of silence.  What the read and the probe saw is fed to
a `runner.detectors.ReadIdleWatchdog`, which judges (this module only does
the I/O: reading, sending probes, ending).  A tail equal to the read offset proves
the silence harmless and pushes the idle watchdog's deadline (so a healthy
stream is never dropped, even from a server that sends nothing while idle);
a tail beyond it, with not one byte arriving on the read within
`tail_probe_grace` s, means the read is dead while wakes wait: the session
ends `tail_ahead`.  A probe that gets no answer proves nothing: the watchdog
then fires `idle_bound` s after the last byte or the last good probe.  Once
the server has shown that it talks while idle (a chunk without data after
IDLE_TRAFFIC_GAP_S of silence: the real server's control pairs, pullwake's
comments), good probes stop pushing the deadline: silence beyond the bound is
then a dead read even with nothing waiting, as it is sized above what the
server sends.
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
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, NoReturn, Protocol, TypeVar

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
from pullwake.runner.detectors import ReadIdleWatchdog
from pullwake.runner.errors import SessionEnded, classify, describe
from pullwake.runner.sse import Comment, Control, DataBatch, SSEParser, SSEProtocolError, decode
from pullwake.runner.tailprobe import TailProbe, ahead
from pullwake.runner.transport import raw_url

log = logging.getLogger("pullwake.runner.session")

T = TypeVar("T")

# No keepalive header: the real server's longest idle gap is 30 s (a pair of
# control events), so 45 s never drops it and still bounds a dead read.
DEFAULT_IDLE_S = 45.0
IDLE_FACTOR = 3.0
IDLE_TRAFFIC_GAP_S = 1.0  # a data-less chunk after this much silence: the server talks idle
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
        self._url = raw_url(url)
        self.offset = start_offset
        self._hooks = hooks
        self._connected_at: float | None = None
        self.cursor: str | None = None
        self.probe: TailProbe | None = None
        if config.profile.tail_probe and config.tail_probe_interval > 0:
            self.probe = TailProbe(http, self._url, config.connect_timeout)
        # the bound is armed when the SSE read connects (long-poll: bounded per request)
        self.watchdog = ReadIdleWatchdog(
            bound=None,
            probe_interval=config.tail_probe_interval if self.probe is not None else None,
            probe_grace=config.tail_probe_grace,
            idle_traffic_gap=IDLE_TRAFFIC_GAP_S,
            now=time.monotonic(),
        )

    def __repr__(self) -> str:
        return f"<Session {self.number} offset={self.offset} connected={self.connected}>"

    @property
    def connected(self) -> bool:
        return self._connected_at is not None

    @property
    def idle_traffic(self) -> bool:
        """The server was seen sending while idle (SSE)."""
        return self.watchdog.idle_traffic

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
            self.watchdog.arm(self._connected_at, idle)
            self._hooks.connected(idle)
            parser = SSEParser()
            rotate = False
            while True:
                try:
                    chunk = await self._watched(resp.content.readany())
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    self._fail(exc)
                if not chunk:
                    self._end(EndReason.ROTATED if rotate else EndReason.EOF, "stream ended")
                arrived = time.monotonic()
                self._hooks.got_bytes()
                had_data = False
                try:
                    for item in parser.feed(chunk):
                        if isinstance(item, Comment):
                            rotate = rotate or item.text == ROTATE_COMMENT
                            continue
                        decoded = decode(item)
                        if isinstance(decoded, DataBatch):
                            had_data = True
                            await self._hooks.wakes(decoded.events)
                        else:
                            self._control(decoded)
                except SSEProtocolError as exc:
                    self._end(EndReason.PROTOCOL_ERROR, str(exc))
                # time spent in backpressure is not silence: counted from now
                self.watchdog.on_bytes(time.monotonic(), had_data, arrived)

    # --- the watch: the I/O around the watchdog, while the read waits -----------------
    async def _watched(self, aw: Awaitable[T]) -> T:
        """Await a network read; on every tick of silence run the watch (may end us)."""
        task = asyncio.ensure_future(aw)
        tick = self.watchdog.tick()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=tick)
                if done:
                    return task.result()
                await self._watch()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _watch(self) -> None:
        """Send the probe the watchdog wants, if any; then ask it whether the read is dead."""
        wd = self.watchdog
        now = time.monotonic()
        if self.probe is not None and self.connected and wd.probe_due(now):
            wd.probe_sent(now)
            probed = await self.probe.tail()
            now = time.monotonic()
            wd.on_probe(now, probed, self.offset)
            if wd.suspect is not None:
                log.info("tail probe: %s beyond read offset %s", probed, self.offset)
        verdict = wd.verdict(now)
        if verdict is not None:
            self._end(verdict.reason, verdict.detail)

    def _went_back(self, next_offset: str) -> None:
        """A server whose stream answers an offset *before* ours recreated the stream
        (a fresh database): ours belongs to an earlier incarnation.  Ended as a 410
        (the runner then reads from the start; old wakes come back as cheap 409/204
        claims), never resumed there: an unclaimed wake is never announced again."""
        if ahead(self.offset, next_offset):
            self._end(
                EndReason.HTTP_ERROR,
                f"stream went back from {self.offset} to {next_offset} (recreated)",
                410,
            )

    def _control(self, ctl: Control) -> None:
        self._went_back(ctl.next_offset)
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

    async def _fetch(
        self, params: dict[str, str], header_bound: float | None
    ) -> tuple[int, Mapping[str, str], bytes]:
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
            return resp.status, resp.headers, raw

    async def _poll_once(self, params: dict[str, str], bound: float | None) -> None:
        header_bound = bound if params.get("live") else self._config.connect_timeout
        if not self._config.profile.timeouts:
            header_bound = None
        fetch = self._fetch(params, header_bound)
        if self.connected and self.probe is not None:
            status, headers, raw = await self._watched(fetch)
        else:
            status, headers, raw = await fetch
        if not self.connected:
            self._connected_at = time.monotonic()
            self._hooks.connected(bound)
        arrived = time.monotonic()
        self._hooks.got_bytes()
        next_offset = headers.get(H_NEXT_OFFSET)
        if not next_offset:
            self._end(EndReason.PROTOCOL_ERROR, f"no {H_NEXT_OFFSET} header")
        self._went_back(next_offset)
        if status == 200 and raw.strip():
            try:
                events = json.loads(raw)
            except ValueError as exc:
                self._end(EndReason.PROTOCOL_ERROR, f"body is not JSON: {exc}")
            if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
                self._end(EndReason.PROTOCOL_ERROR, "body is not a JSON array of objects")
            await self._hooks.wakes(events)
        self.offset = next_offset
        self.cursor = headers.get(H_CURSOR, self.cursor)
        self._hooks.offset(next_offset)
        # an answer is not idle talk (that is an SSE notion): data=True
        self.watchdog.on_bytes(time.monotonic(), True, arrived)
        if headers.get(H_CLOSED, "").lower() == "true":
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
