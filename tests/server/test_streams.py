"""The wake stream read protocol: catch-up, long-poll, SSE, offsets, cursor, ETag."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest

from pullwake.core.protocol import current_cursor, parse_offset
from tests.support.procs import ServerProcess, running
from tests.support.sse import SSEReader


def stream(rid: str, query: str) -> str:
    return f"/runners/{rid}/wake?{query}"


def test_resume_from_a_returned_offset_has_no_gap_and_no_repeat(
    server: ServerProcess, rid: str
) -> None:
    server.register(rid)
    ids = [server.publish(rid)["wake_id"] for _ in range(5)]
    status, h1, first = server.api("GET", stream(rid, "offset=-1"))
    assert status == 200 and [e["wake_id"] for e in first] == ids
    more = [server.publish(rid)["wake_id"] for _ in range(3)]
    status, h2, second = server.api("GET", stream(rid, f"offset={h1['Stream-Next-Offset']}"))
    assert status == 200 and [e["wake_id"] for e in second] == more
    assert h2["Stream-Next-Offset"] > h1["Stream-Next-Offset"]
    status, h3, empty = server.api("GET", stream(rid, f"offset={h2['Stream-Next-Offset']}"))
    assert (status, empty, h3["Stream-Up-To-Date"]) == (200, [], "true")
    assert h3["Stream-Next-Offset"] == h2["Stream-Next-Offset"]


def test_offset_now_is_the_tail(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    last = [server.publish(rid) for _ in range(2)][-1]
    status, headers, body = server.api("GET", stream(rid, "offset=now"))
    assert (status, body, headers["Stream-Next-Offset"]) == (200, [], last["offset"])


def test_etag_and_if_none_match(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    server.publish(rid)
    status, headers, _ = server.api("GET", stream(rid, "offset=-1"))
    assert status == 200 and headers["ETag"]
    status, h304, body = server.api(
        "GET", stream(rid, "offset=-1"), headers={"If-None-Match": headers["ETag"]}
    )
    assert status == 304 and not body
    assert h304["Stream-Next-Offset"] == headers["Stream-Next-Offset"]
    server.publish(rid)
    status, _, body = server.api(
        "GET", stream(rid, "offset=-1"), headers={"If-None-Match": headers["ETag"]}
    )
    assert status == 200 and len(body) == 2


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("offset=banana", 400, "INVALID_OFFSET"),
        ("offset=", 400, "INVALID_OFFSET"),
        ("offset=0000000000000001_0000000000000000&offset=-1", 400, "INVALID_REQUEST"),
        ("offset=9999999999999999_0000000000000000", 400, "INVALID_OFFSET"),
        ("offset=0000000000000001_0000000000000000", 410, "OFFSET_GONE"),  # older epoch
        ("live=sse", 400, "INVALID_OFFSET"),  # live reads need an offset
        ("live=long-poll", 400, "INVALID_OFFSET"),
        ("offset=-1&live=websocket", 400, "INVALID_REQUEST"),
    ],
)
def test_bad_reads(server: ServerProcess, rid: str, query: str, status: int, code: str) -> None:
    server.register(rid)
    got, _, body = server.api("GET", stream(rid, query))
    assert (got, body["error"]["code"]) == (status, code), body


def test_offset_beyond_the_tail_is_400(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    epoch, seq = parse_offset(server.publish(rid)["offset"])
    got, _, body = server.api("GET", stream(rid, f"offset={epoch:016d}_{seq + 5:016d}"))
    assert (got, body["error"]["code"]) == (400, "INVALID_OFFSET")


def test_unknown_stream_is_404(server: ServerProcess) -> None:
    got, _, body = server.api("GET", "/runners/nobody/wake?offset=-1")
    assert (got, body["error"]["code"]) == (404, "NOT_FOUND")


def test_offset_older_than_retained_is_410(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, extra=["--retain", "3"])
    with running(srv):
        srv.start()
        srv.register("r")
        offsets = [srv.publish("r")["offset"] for _ in range(6)]
        got, _, body = srv.api("GET", stream("r", f"offset={offsets[0]}"))
        assert (got, body["error"]["code"]) == (410, "OFFSET_GONE")
        got, _, body = srv.api("GET", stream("r", f"offset={offsets[2]}"))
        assert got == 200 and len(body) == 3  # the 3 retained ones, nothing lost after it
        got, _, body = srv.api("GET", stream("r", "offset=-1"))  # -1: oldest retained
        assert got == 200 and len(body) == 3
        got, _, body = srv.api("GET", stream("r", f"offset={offsets[1]}&live=sse"))
        assert (got, body["error"]["code"]) == (410, "OFFSET_GONE")


def test_long_poll_times_out_with_204_and_headers(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    tail = server.publish(rid)["offset"]
    cursor = current_cursor()
    t0 = time.monotonic()
    status, headers, _ = server.api(
        "GET", stream(rid, f"offset={tail}&live=long-poll&cursor={cursor}")
    )
    waited = time.monotonic() - t0
    assert status == 204
    assert 0.8 <= waited < 4.0  # the fixture's long-poll timeout is 1 s
    assert headers["Stream-Next-Offset"] == tail
    assert headers["Stream-Up-To-Date"] == "true"
    assert int(headers["Stream-Cursor"]) > int(cursor)  # strictly past the client's cursor


def test_long_poll_answers_as_soon_as_a_wake_arrives(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    tail = server.publish(rid)["offset"]
    timer = threading.Timer(0.3, server.publish, (rid,))
    timer.start()
    try:
        status, headers, body = server.api("GET", stream(rid, f"offset={tail}&live=long-poll"))
    finally:
        timer.join()
    assert status == 200 and len(body) == 1
    assert headers["Stream-Next-Offset"] > tail and headers["Stream-Cursor"]


def test_sse_data_control_and_keepalives(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    first = server.publish(rid)
    with SSEReader(server.url + stream(rid, "offset=-1&live=sse")) as sse:
        assert sse.status == 200
        assert sse.headers["Content-Type"].startswith("text/event-stream")
        assert sse.headers["Stream-Keepalive-Interval"] == "0.5"
        seen = sse.events_until(lambda e: e.kind == "control")
        data = [e for e in seen if e.kind == "data"]
        assert [w["wake_id"] for w in data[0].data] == [first["wake_id"]]
        assert seen[-1].data["streamNextOffset"] == first["offset"]
        assert seen[-1].data["upToDate"] is True and seen[-1].data["streamCursor"]
        # keepalive comments flow while idle, at about the advertised interval
        comments = [sse.events_until(lambda e: e.kind == "comment") for _ in range(3)]
        gaps = [b[-1].at - a[-1].at for a, b in itertools.pairwise(comments)]
        assert all(0.2 < g < 2.5 for g in gaps), gaps
        second = server.publish(rid)
        seen = sse.events_until(lambda e: e.kind == "control")
        assert [w["wake_id"] for e in seen if e.kind == "data" for w in e.data] == [
            second["wake_id"]
        ]
        assert seen[-1].data["streamNextOffset"] == second["offset"]


def test_sse_rotates_cleanly_and_resumes_without_gap(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    server.publish(rid)
    got: list[str] = []
    offset = "-1"
    for _ in range(2):
        with SSEReader(server.url + stream(rid, f"offset={offset}&live=sse")) as sse:
            t0 = time.monotonic()
            while (ev := sse.next_event(timeout=5)) is not None:
                if ev.kind == "data":
                    got += [w["wake_id"] for w in ev.data]
                if ev.kind == "control":
                    offset = ev.data["streamNextOffset"]
                    if len(got) == 1:
                        server.publish(rid)  # lands during the first connection
            # the fixture rotates SSE responses every 2 s: a clean end, not an error
            assert 1.5 < time.monotonic() - t0 < 6.0
        server.publish(rid)  # between connections: must arrive on the next one
    status, _, rest = server.api("GET", stream(rid, f"offset={offset}"))
    got += [w["wake_id"] for w in rest]
    assert status == 200 and len(rest) == 1
    assert len(got) == len(set(got)) == 4


def test_custom_wake_stream_path(server: ServerProcess, rid: str) -> None:
    path = f"/custom/{rid}/inbox"
    status, _, body = server.api("POST", "/_electric/runners", {"id": rid, "wake_stream": path})
    assert (status, body["wake_stream"]) == (201, path)
    wake = server.publish(rid)
    assert wake["stream"] == path
    status, _, events = server.api("GET", f"{path}?offset=-1")
    assert status == 200 and [e["wake_id"] for e in events] == [wake["wake_id"]]
    assert events[0]["stream"] == path
    status, _, _ = server.api("GET", f"/runners/{rid}/wake?offset=-1")
    assert status == 404


def test_moving_a_wake_stream_ends_reads_of_the_old_path_at_once(tmp_path: Path) -> None:
    """Re-registering with another wake_stream must not leave a reader on the old
    path with keepalives and no data (a silent dead stream) until its rotation."""
    srv = ServerProcess(tmp_path)  # default 60 s rotation: only the move can end it
    with running(srv):
        srv.start()
        srv.register("r")
        with SSEReader(srv.url + stream("r", "offset=-1&live=sse")) as sse:
            sse.events_until(lambda e: e.kind == "control")
            status, _, _ = srv.api(
                "POST", "/_electric/runners", {"id": "r", "wake_stream": "/r/new"}
            )
            assert status == 200
            t0 = time.monotonic()
            while sse.next_event(timeout=5) is not None:
                pass
            assert time.monotonic() - t0 < 3.0  # a keepalive is 0.5 s; rotation 60 s
        status, _, _ = srv.api("GET", stream("r", "offset=-1"))
        assert status == 404
        wake = srv.publish("r")
        status, _, events = srv.api("GET", "/r/new?offset=-1")
        assert status == 200 and [e["wake_id"] for e in events] == [wake["wake_id"]]
