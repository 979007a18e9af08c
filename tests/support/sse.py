"""A small blocking SSE reader for tests: raw lines, parsed events, deadlines."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tests.support.procs import PRINCIPAL


@dataclass
class Event:
    kind: str  # "data", "control" or "comment"
    data: Any  # decoded JSON for data/control, the text for comments
    at: float  # time.monotonic() when its last line arrived


class SSEReader:
    """GET a live=sse URL; `next_event()` blocks with a timeout; `None` at EOF."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 5.0):
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        h = {"electric-principal": PRINCIPAL}
        h.update(headers or {})
        self.conn.request("GET", f"{parts.path}?{parts.query}", headers=h)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = dict(self.resp.getheaders())
        self.eof = False

    def set_timeout(self, seconds: float) -> None:
        sock = self.conn.sock
        if sock is not None:
            sock.settimeout(seconds)

    def next_event(self, timeout: float = 5.0) -> Event | None:
        """The next event or comment; None at a clean end of the body."""
        self.set_timeout(timeout)
        kind, data = None, []
        while True:
            try:
                raw = self.resp.readline()
            except TimeoutError:
                raise AssertionError(f"no SSE line within {timeout}s") from None
            if not raw:
                self.eof = True
                return None
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                return Event("comment", line[1:].strip(), time.monotonic())
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data.append(line.split(":", 1)[1].strip())
            elif line == "" and kind is not None:
                return Event(kind, json.loads("\n".join(data)), time.monotonic())

    def events_until(self, pred: Any, timeout: float = 5.0) -> list[Event]:
        """Read until `pred(event)` is true; returns every event read (last matches)."""
        deadline = time.monotonic() + timeout
        seen: list[Event] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"condition not met within {timeout}s; saw {seen[-5:]}")
            ev = self.next_event(left)
            if ev is None:
                raise AssertionError(f"stream ended first; saw {seen[-5:]}")
            seen.append(ev)
            if pred(ev):
                return seen

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> SSEReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
