"""DSStore on real SQLite files: offsets, JSON mode, closure, producers, forks, TTL, waits."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from pullwake.server.ds.store import (
    ZERO_OFFSET,
    Appended,
    DSStore,
    Message,
    Producer,
    StoreError,
    format_body,
    format_offset,
    message_items,
)

WAKE = (
    b'{"type":"wake","subscription_id":"runner:r1:23c1232b5a83aee4","stream":"probe/e1/main",'
    b'"generation":1,"ts":1796179384247}'
)


def body(messages: list[Message]) -> object:
    return json.loads(format_body(messages, True))


async def test_offsets_match_upstream(store: DSStore) -> None:
    """A 121-byte wake event ends at byte 127, the second at 254 (probe 07-reads)."""
    await store.create("runners/r1/wake", content_type="application/json")
    assert store.tail("runners/r1/wake") == ZERO_OFFSET
    assert len(WAKE) == 121
    r1 = await store.append("runners/r1/wake", WAKE)
    r2 = await store.append("runners/r1/wake", WAKE)
    assert (r1.offset, r2.offset) == (format_offset(127), format_offset(254))
    res = await store.read("runners/r1/wake", format_offset(127))
    assert [m.offset for m in res.messages] == [format_offset(254)]
    assert res.next_offset == res.tail == format_offset(254)


async def test_json_array_appends_elements(store: DSStore) -> None:
    await store.create("s", content_type="application/json; charset=utf-8", initial=b"[]")
    assert store.tail("s") == ZERO_OFFSET  # [] on create is an empty stream
    await store.append("s", b'[1, 2, {"a": [3]}]')
    tail = await store.append_json("s", ["x"])
    res = await store.read("s")
    assert body(res.messages) == [1, 2, {"a": [3]}, "x"]
    assert res.next_offset == tail
    assert body((await store.read("s", tail)).messages) == []
    with pytest.raises(StoreError) as e:
        await store.append("s", b"[]")
    assert (e.value.status, e.value.text) == (400, "Empty arrays are not allowed")
    with pytest.raises(StoreError) as e:
        await store.append("s", b"{nope")
    assert (e.value.status, e.value.text) == (400, "Invalid JSON")


async def test_read_modes_and_errors(store: DSStore) -> None:
    await store.create("b", content_type="text/plain")
    await store.append("b", b"hello ")
    await store.append("b", b"world")
    assert format_body((await store.read("b", "-1")).messages, False) == b"hello world"
    assert (await store.read("b", "now")).messages == []
    beyond = format_offset(10_000)
    res = await store.read("b", beyond)
    assert res.messages == [] and res.next_offset == res.tail
    with pytest.raises(StoreError) as e:
        await store.read("missing")
    assert (e.value.status, e.value.text) == (404, "Stream not found")
    with pytest.raises(StoreError) as e:
        await store.append("b", b"x", content_type="application/json")
    assert e.value.status == 409


async def test_create_idempotent_and_conflicting(store: DSStore) -> None:
    assert (await store.create("c", content_type="text/plain")).created
    assert not (await store.create("c", content_type="text/plain; charset=utf-8")).created
    with pytest.raises(StoreError) as e:
        await store.create("c", content_type="application/json")
    assert e.value.status == 409
    assert await store.delete("c")
    assert not await store.delete("c")
    res = await store.create("c", content_type="application/json")
    assert res.created and store.tail("c") == ZERO_OFFSET


async def test_recreated_path_does_not_see_old_messages(store: DSStore) -> None:
    await store.create("r", content_type="text/plain", initial=b"old")
    await store.delete("r")
    await store.create("r", content_type="text/plain")
    assert (await store.read("r")).messages == []


async def test_close_and_producers(store: DSStore) -> None:
    await store.create("p", content_type="text/plain")
    ok = await store.append("p", b"a", producer=Producer("w", 0, 0))
    assert ok.status == "accepted"
    dup = await store.append("p", b"a", producer=Producer("w", 0, 0))
    assert (dup.status, dup.last_seq) == ("duplicate", 0)
    gap = await store.append("p", b"c", producer=Producer("w", 0, 5))
    assert (gap.status, gap.expected_seq, gap.received_seq) == ("sequence_gap", 1, 5)
    assert (await store.append("p", b"b", producer=Producer("w", 1, 0))).status == "accepted"
    stale = await store.append("p", b"z", producer=Producer("w", 0, 1))
    assert (stale.status, stale.current_epoch) == ("stale_epoch", 1)
    closed = await store.close_stream("p")
    assert closed.closed
    assert (await store.append("p", b"late")).status == "closed"
    assert format_body((await store.read("p")).messages, False) == b"ab"


async def test_stream_seq(store: DSStore) -> None:
    await store.create("q", content_type="text/plain")
    await store.append("q", b"1", seq="001")
    with pytest.raises(StoreError) as e:
        await store.append("q", b"2", seq="001")
    assert (e.value.status, e.value.text) == (409, "Sequence conflict")
    await store.append("q", b"2", seq="002")


async def test_fork_reads_through_source(store: DSStore) -> None:
    await store.create("src", content_type="application/json")
    mid = await store.append_json("src", [1])
    await store.append_json("src", [2])
    await store.create("fork", forked_from="src", fork_offset=mid)
    await store.append_json("fork", [3])
    assert body((await store.read("fork")).messages) == [1, 3]
    assert await store.delete("src")  # soft: the fork still reads through it
    assert not store.exists("src")
    with pytest.raises(StoreError) as e:
        await store.read("src")
    assert e.value.status == 410
    assert body((await store.read("fork")).messages) == [1, 3]
    assert await store.delete("fork")  # last reference: the source goes too
    assert (await store.create("src", content_type="application/json")).created


async def test_ttl_expiry(tmp_path: Path) -> None:
    now = [1_000_000]
    s = DSStore(str(tmp_path / "t.db"), clock=lambda: now[0])
    try:
        await s.create("t", content_type="text/plain", ttl_seconds=10)
        now[0] += 9_000
        await s.read("t")  # access slides the window
        now[0] += 9_000
        await s.head("t")
        now[0] += 11_000
        with pytest.raises(StoreError) as e:
            await s.head("t")
        assert e.value.status == 404
    finally:
        s.close()


async def test_listeners_and_wait(store: DSStore) -> None:
    seen: list[Appended] = []
    store.on_append(seen.append)
    await store.create("w", content_type="application/json")
    tail = store.tail("w")
    assert tail is not None
    waiter = asyncio.create_task(store.wait("w", tail, 5.0))
    await asyncio.sleep(0)
    assert not waiter.done()
    new_tail = await store.append_json("w", [{"k": 1}])
    assert await asyncio.wait_for(waiter, 5.0)
    assert seen == [Appended("w", new_tail, False)]
    assert not await store.wait("w", new_tail, 0.05)  # nothing new: times out


async def test_durable_across_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "d.db")
    s = DSStore(path)
    await s.create("k", content_type="application/json")
    tail = await s.append_json("k", [1, 2])
    s.close()
    s2 = DSStore(path)
    try:
        assert s2.tail("k") == tail
        assert body((await s2.read("k")).messages) == [1, 2]
    finally:
        s2.close()


async def test_read_is_capped_but_never_empty(store: DSStore) -> None:
    await store.create("big", content_type="application/octet-stream")
    for _ in range(3):
        await store.append("big", b"x" * 1000)
    first = await store.call(lambda core: core.read("big", "-1", max_bytes=1500))
    assert len(first.messages) == 1 and not first.up_to_date
    rest = await store.call(lambda core: core.read("big", first.next_offset, max_bytes=1))
    assert len(rest.messages) == 1  # at least one, even above the cap
    last = await store.read("big", rest.next_offset)
    assert len(last.messages) == 1 and last.up_to_date


async def test_leading_slash_names_the_same_stream(store: DSStore) -> None:
    await store.create("/runners/r1/wake", content_type="application/json")
    assert store.exists("runners/r1/wake") and store.tail("/runners/r1/wake") is not None
    await store.append_json("runners/r1/wake", [1])
    assert body((await store.read("/runners/r1/wake")).messages) == [1]


def test_message_items_adds_offset_only_to_state_events() -> None:
    plain = b'{"a":1},{"headers":{"operation":true}},'
    assert message_items(Message(plain, 40)) == plain[:-1]  # the stored bytes, as is
    mixed = Message(b'{"v":2.5},{"headers":{"operation":"delete"},"k":"\xc3\xa9"},', 99)
    offset = "0000000000000000_0000000000000099"
    assert message_items(mixed) == (
        b'{"v":2.5},{"headers":{"operation":"delete","offset":"' + offset.encode() + b'"},'
        b'"k":"\xc3\xa9"}'
    )
    assert format_body([mixed], json_mode=False) == mixed.data  # not a JSON stream: bytes
