"""Incremental SSE parsing and decoding of the wake stream's events.  Pure.

`SSEParser.feed(chunk)` accepts bytes split anywhere (inside a line, inside a
UTF-8 sequence, between CR and LF) and returns the events completed so far.
Comment lines (``: keepalive``) are reported as `Comment` so the caller can
see the server is alive even when no event flows.  `decode` turns an event
into a `DataBatch` or a `Control`, raising `SSEProtocolError` for anything
the Durable Streams protocol does not allow.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from typing import Any


class SSEProtocolError(ValueError):
    """The stream broke the SSE or Durable Streams rules."""


@dataclass(frozen=True)
class SSEEvent:
    event: str  # "message" when no `event:` field was given
    data: str
    id: str | None = None


@dataclass(frozen=True)
class Comment:
    text: str


@dataclass(frozen=True)
class DataBatch:
    events: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Control:
    next_offset: str
    cursor: str | None
    up_to_date: bool
    closed: bool


MAX_LINE = 1024 * 1024  # a line longer than this is a protocol error, not a memory leak


class SSEParser:
    """Line-oriented SSE parser per the WHATWG rules, fed in arbitrary chunks."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self._buf = ""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._bom_checked = False

    def feed(self, chunk: bytes) -> list[SSEEvent | Comment]:
        try:
            text = self._decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            raise SSEProtocolError(f"invalid UTF-8: {exc}") from exc
        if not self._bom_checked and text:
            self._bom_checked = True
            text = text.removeprefix("\ufeff")
        self._buf += text
        out: list[SSEEvent | Comment] = []
        while True:
            cut = _line_end(self._buf)
            if cut is None:
                if len(self._buf) > MAX_LINE:
                    raise SSEProtocolError("line too long")
                return out
            line, self._buf = self._buf[: cut[0]], self._buf[cut[1] :]
            item = self._line(line)
            if item is not None:
                out.append(item)

    def _line(self, line: str) -> SSEEvent | Comment | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return Comment(line[1:].lstrip(" "))
        name, sep, value = line.partition(":")
        if sep:
            value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        # `retry` and unknown fields are ignored, as the spec says
        return None

    def _dispatch(self) -> SSEEvent | None:
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        return SSEEvent(event, "\n".join(data), self._id)


def _line_end(buf: str) -> tuple[int, int] | None:
    """(end of line, start of next) for the first CR, LF or CRLF; None if incomplete.

    A CR at the very end may be the first half of a CRLF split across chunks.
    """
    lf, cr = buf.find("\n"), buf.find("\r")
    if cr == -1 or (lf != -1 and lf < cr):
        return None if lf == -1 else (lf, lf + 1)
    if cr + 1 == len(buf):
        return None
    return cr, cr + 2 if buf[cr + 1] == "\n" else cr + 1


def decode(ev: SSEEvent) -> DataBatch | Control:
    """Map one SSE event of a Durable Streams JSON stream to data or control."""
    try:
        payload = json.loads(ev.data)
    except ValueError as exc:
        raise SSEProtocolError(f"{ev.event} event is not JSON: {exc}") from exc
    if ev.event == "data":
        if not isinstance(payload, list) or not all(isinstance(x, dict) for x in payload):
            raise SSEProtocolError("data event is not a JSON array of objects")
        return DataBatch(tuple(payload))
    if ev.event == "control":
        if not isinstance(payload, dict):
            raise SSEProtocolError("control event is not a JSON object")
        offset = payload.get("streamNextOffset")
        if not isinstance(offset, str) or not offset:
            raise SSEProtocolError("control event without streamNextOffset")
        cursor = payload.get("streamCursor")
        return Control(
            next_offset=offset,
            cursor=str(cursor) if cursor is not None else None,
            up_to_date=bool(payload.get("upToDate", False)),
            closed=bool(payload.get("streamClosed", False)),
        )
    raise SSEProtocolError(f"unexpected SSE event type {ev.event!r}")
