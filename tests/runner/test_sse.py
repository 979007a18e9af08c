"""The incremental SSE parser and the Durable Streams event decoding."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pullwake.runner.sse import (
    Comment,
    Control,
    DataBatch,
    SSEEvent,
    SSEParser,
    SSEProtocolError,
    decode,
)

WAKE = {"type": "wake", "wake_id": "w1", "stream": "/s", "generation": 1, "ts": "t"}
STREAM = (
    b": keepalive\n\n"
    b"event: data\ndata: " + json.dumps([WAKE]).encode() + b"\n\n"
    b'event: control\ndata: {"streamNextOffset":"0000000000000000_0000000000000001",'
    b'"streamCursor":"7","upToDate":true}\n\n'
    b":\n"
    b"event: data\r\ndata: [\r\n\r\n"  # multi-line data, CRLF endings
)


def parse_all(chunks: list[bytes]) -> list[SSEEvent | Comment]:
    p = SSEParser()
    out: list[SSEEvent | Comment] = []
    for c in chunks:
        out += p.feed(c)
    return out


def test_whole_stream() -> None:
    items = parse_all([STREAM])
    assert items[0] == Comment("keepalive")
    assert items[1] == SSEEvent("data", json.dumps([WAKE]))
    assert isinstance(items[2], SSEEvent) and items[2].event == "control"
    assert items[3] == Comment("")
    assert items[4] == SSEEvent("data", "[")


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    assert parse_all(chunks) == parse_all([STREAM])


def test_split_inside_utf8_and_crlf() -> None:
    raw = 'event: data\r\ndata: ["é"]\r\n\r\n'.encode()
    one_byte_chunks = [raw[i : i + 1] for i in range(len(raw))]
    assert parse_all(one_byte_chunks) == [SSEEvent("data", '["é"]')]


def test_multiline_data_id_and_unknown_fields() -> None:
    items = parse_all([b"id: 5\nretry: 10\nfoo: bar\ndata: a\ndata:b\n\n"])
    assert items == [SSEEvent("message", "a\nb", "5")]


def test_event_without_data_is_not_dispatched() -> None:
    assert parse_all([b"event: data\n\n"]) == []


def test_bom_and_lone_cr() -> None:
    assert parse_all(["\ufeffdata: x\r\rdata: y\r\r\n".encode()]) == [
        SSEEvent("message", "x"),
        SSEEvent("message", "y"),
    ]


def test_invalid_utf8_is_a_protocol_error() -> None:
    with pytest.raises(SSEProtocolError):
        SSEParser().feed(b"data: \xff\xfe\n\n")


def test_decode_data_and_control() -> None:
    assert decode(SSEEvent("data", json.dumps([WAKE]))) == DataBatch((WAKE,))
    ctl = decode(
        SSEEvent("control", '{"streamNextOffset":"o2","upToDate":true,"streamClosed":true}')
    )
    assert ctl == Control("o2", None, True, True)


@pytest.mark.parametrize(
    "ev",
    [
        SSEEvent("data", "{not json"),
        SSEEvent("data", '{"a": 1}'),
        SSEEvent("data", "[1, 2]"),
        SSEEvent("control", "[]"),
        SSEEvent("control", '{"upToDate": true}'),
        SSEEvent("control", '{"streamNextOffset": ""}'),
        SSEEvent("mystery", "{}"),
    ],
)
def test_decode_rejects(ev: SSEEvent) -> None:
    with pytest.raises(SSEProtocolError):
        decode(ev)
