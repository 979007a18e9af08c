"""The tail probe: where does the wake stream end, asked on a fresh connection?

A live read that went silent is either healthy and idle (the real
agents-server sends nothing but a pair of `control` events every 30 s on SSE,
and nothing at all on a long-poll for 30 s) or dead (frozen server, half-open
connection, a proxy that stopped forwarding).  Silence alone cannot tell them
apart; the tail can: `HEAD <wake stream>` (or `GET ?offset=now` where HEAD
gives no offset) answers `Stream-Next-Offset`, the stream's tail.  A tail
beyond the live read's offset means wakes are waiting that the read did not
deliver; a tail equal to it means the silence is harmless.  The probe uses a
new connection each time (the stream session never pools), so it does not
share the fate of the live read's socket.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
import yarl

from pullwake.core.protocol import H_NEXT_OFFSET, OFFSET_NOW

_OFFSET = re.compile(r"^(\d+)_(\d+)$")


def offset_key(offset: str) -> tuple[int, int] | None:
    """A concrete `<digits>_<digits>` offset as a comparable pair; None for -1, now, junk."""
    m = _OFFSET.match(offset)
    return (int(m.group(1)), int(m.group(2))) if m else None


def ahead(tail: str, offset: str) -> bool:
    """True if `tail` is strictly beyond `offset` (both concrete), else False."""
    t, o = offset_key(tail), offset_key(offset)
    return t is not None and o is not None and t > o


class TailProbe:
    """Fetch the stream's tail offset; None when the server did not say (any failure)."""

    def __init__(self, http: aiohttp.ClientSession, url: str | yarl.URL, timeout: float) -> None:
        self._http = http
        self._url = url
        self._timeout = timeout
        self._use_head = True
        self.probes = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"<TailProbe {self._url} head={self._use_head} {self.probes}/{self.failures}>"

    async def tail(self) -> str | None:
        self.probes += 1
        try:
            async with asyncio.timeout(self._timeout):
                if self._use_head:
                    async with self._http.head(self._url) as resp:
                        tail = resp.headers.get(H_NEXT_OFFSET)
                        if resp.status == 200 and tail:
                            return tail
                        if resp.status < 500:
                            self._use_head = False  # no HEAD support: ask with offset=now
                        else:
                            self.failures += 1
                            return None
                async with self._http.get(self._url, params={"offset": OFFSET_NOW}) as resp:
                    await resp.read()
                    tail = resp.headers.get(H_NEXT_OFFSET)
                    if resp.status == 200 and tail:
                        return tail
        except (aiohttp.ClientError, OSError, TimeoutError):
            pass
        self.failures += 1
        return None
