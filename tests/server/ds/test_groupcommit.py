"""Group commit and the read path off the writer (issue 14 items 1-2), in process.

Concurrent writes share commits without changing what each one answers; a refused
call in a batch rolls back alone; live readers get new data from the writer's
hand-over cache; catch-up reads use their own connection and see committed data only.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from pullwake.server.ds.store import (
    FRAME_OVERHEAD,
    DSStore,
    Producer,
    StoreCore,
    StoreError,
    format_body,
    format_offset,
    offset_pos,
)


async def test_concurrent_appends_share_commits_and_keep_offsets(store: DSStore) -> None:
    streams = [f"s{i}" for i in range(16)]
    for p in streams:
        await store.create(p, content_type="text/plain")
    before_commits, before_calls = store.commits, store.committed_calls
    per_stream = 20
    body = b"0123456789"

    async def writer(p: str) -> list[str]:
        return [(await store.append(p, body)).offset for _ in range(per_stream)]

    # 16 writers on 16 streams, plus 40 concurrent appends on one stream
    results = await asyncio.gather(
        *(writer(p) for p in streams), *(store.append("s0", body) for _ in range(40))
    )
    calls = store.committed_calls - before_calls
    commits = store.commits - before_commits
    assert calls == 16 * per_stream + 40
    assert commits < calls / 2, f"{commits} commits for {calls} appends: no grouping"
    step = FRAME_OVERHEAD + len(body)
    for p, offsets in zip(streams[1:], results[1:16], strict=True):
        assert offsets == [format_offset(step * (i + 1)) for i in range(per_stream)], p
    s0 = sorted(
        [offset_pos(o) for o in results[0]]  # type: ignore[union-attr]
        + [offset_pos(r.offset) for r in results[16:]]  # type: ignore[union-attr]
    )
    assert s0 == [step * (i + 1) for i in range(per_stream + 40)]  # distinct, no gap
    assert store.tail("s0") == format_offset(step * (per_stream + 40))
    assert len((await store.read("s0")).messages) == per_stream + 40


async def test_a_refused_call_in_a_batch_rolls_back_alone(store: DSStore) -> None:
    await store.create("ok", content_type="application/json")
    await store.create("p", content_type="text/plain")
    await store.append("p", b"a", producer=Producer("w", 0, 0))
    outcomes = await asyncio.gather(
        store.append("ok", b"[1]"),
        store.append("missing", b"x"),  # 404
        store.append("ok", b"{nope"),  # 400 invalid JSON
        store.append("p", b"c", producer=Producer("w", 0, 5)),  # sequence gap: not written
        store.append("ok", b"[2]"),
        store.append("p", b"b", producer=Producer("w", 0, 1)),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], StoreError) and outcomes[1].status == 404
    assert isinstance(outcomes[2], StoreError) and outcomes[2].status == 400
    assert outcomes[3].status == "sequence_gap"  # type: ignore[union-attr]
    assert outcomes[5].status == "accepted"  # type: ignore[union-attr]
    assert json.loads(format_body((await store.read("ok")).messages, True)) == [1, 2]
    assert format_body((await store.read("p")).messages, False) == b"ab"


async def test_durable_across_reopen_and_read_by_a_fresh_connection(tmp_path: Path) -> None:
    db = str(tmp_path / "ds.db")
    s = DSStore(db)
    await s.create("e", content_type="application/json")
    await asyncio.gather(*(s.append_json("e", [i]) for i in range(50)))
    s.close()
    s = DSStore(db)
    try:
        values = json.loads(format_body((await s.read("e")).messages, True))
        assert sorted(values) == list(range(50))
        assert len(values) == 50
    finally:
        s.close()


async def test_live_reader_gets_new_data_from_memory(store: DSStore) -> None:
    await store.create("live", content_type="text/plain", initial=b"old")
    tail = store.tail("live")
    assert tail is not None
    store.follow("live")
    try:
        await store.append("live", b"new1")
        await store.append("live", b"new2")
        m, msgs = store.core.snapshot("live", tail)
        assert m is not None and msgs is not None  # memory answers: no SQLite read
        assert [x.data for x in msgs] == [b"new1", b"new2"]
        _, from_start = store.core.snapshot("live", "-1")
        assert from_start is None  # before the cache: read from SQLite
        res = await store.read("live", tail)
        assert [x.data for x in res.messages] == [b"new1", b"new2"] and res.up_to_date
        assert format_body((await store.read("live")).messages, False) == b"oldnew1new2"
        # delete + re-create: the cache restarts with the new incarnation
        await store.delete("live")
        await store.create("live", content_type="text/plain")
        await store.append("live", b"again")
        res = await store.read("live", "-1")
        assert [x.data for x in res.messages] == [b"again"]
        _, msgs = store.core.snapshot("live", format_offset(0))
        assert msgs is not None and [x.data for x in msgs] == [b"again"]
    finally:
        store.unfollow("live")
    assert "live" not in store.core.recent  # the last reader gone: nothing kept


async def test_cache_keeps_a_bounded_window(store: DSStore) -> None:
    await store.create("big", content_type="text/plain")
    store.follow("big")
    try:
        await asyncio.gather(*(store.append("big", b"x" * 10_000) for _ in range(100)))
        rec = store.core.recent["big"]
        assert len(rec.msgs) <= 64 and rec.size <= 256 * 1024
        res = await store.read("big", "-1")  # older than the window: from SQLite
        assert len(res.messages) == 100
        _, msgs = store.core.snapshot("big", format_offset(rec.start))
        assert msgs is not None and len(msgs) == len(rec.msgs)
    finally:
        store.unfollow("big")


async def test_waiting_reader_wakes_on_append_without_the_writer(store: DSStore) -> None:
    await store.create("w", content_type="text/plain")
    tail = store.tail("w")
    assert tail is not None
    store.follow("w")
    try:
        waiting = asyncio.create_task(store.wait("w", tail, 5.0))
        await asyncio.sleep(0)
        assert not waiting.done()
        await store.append("w", b"hi")
        assert await asyncio.wait_for(waiting, 5.0)
        calls = store.committed_calls
        res = await store.read("w", tail)
        assert [x.data for x in res.messages] == [b"hi"]
        assert store.committed_calls == calls  # the read never went through the writer
    finally:
        store.unfollow("w")


def test_core_outside_a_batch_commits_each_transaction(tmp_path: Path) -> None:
    """StoreCore used alone (no writer thread): each call is its own transaction."""
    core = StoreCore(str(tmp_path / "c.db"))
    try:
        core.create("c", content_type="text/plain")
        assert core.append("c", b"abc").status == "accepted"
        assert core.metas["c"].tail == FRAME_OVERHEAD + 3
        assert not core.db.in_transaction
    finally:
        core.close()


async def test_wake_event_rides_in_the_appends_commit(store: DSStore) -> None:
    """An append that announces a wake: the wake event and the subscription record are
    committed with the append, one flush in all (no second commit per send)."""
    from pullwake.server.ds.subscriptions import SubscriptionManager

    subs = SubscriptionManager(store)
    await subs.start()
    try:
        await store.create("w", content_type="application/json")
        await store.create("e", content_type="application/json")
        await subs.put("sub", {"type": "pull-wake", "streams": ["e"], "wake_stream": "w"})
        commits = store.commits
        await store.append_json("e", [1])
        assert store.commits - commits == 1  # the append and its wake: one commit
        events = json.loads(format_body((await store.read("w")).messages, True))
        assert [(e["subscription_id"], e["generation"], e["stream"]) for e in events] == [
            ("sub", 1, "e")
        ]
        st = subs.state("sub")
        assert st is not None and st.wake_outstanding and st.generation == 1
        # while the wake is out, further appends write no event (and no extra commit)
        commits = store.commits
        await store.append_json("e", [2])
        assert store.commits - commits == 1
        assert len((await store.read("w")).messages) == 1
    finally:
        subs.shutdown()


def test_readers_never_see_an_open_batch(tmp_path: Path) -> None:
    """Inside a batch nothing is visible to other connections or in `metas` (so no reader
    is ever given data before it is durable); after the COMMIT all of it is."""
    import sqlite3

    path = str(tmp_path / "c.db")
    core = StoreCore(path)
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        core.create("c", content_type="text/plain")
        core.follow("c")
        core.begin_batch()
        core.append("c", b"one")
        core.append("c", b"two")
        m = core.metas["c"]
        assert m.tail == 0  # committed metadata unchanged
        assert core.read_committed(reader, m, -1) == []
        assert reader.execute("SELECT COUNT(*) FROM ds_messages").fetchone()[0] == 0
        assert core.snapshot("c", format_offset(0)) == (m, [])  # at the committed tail
        written = [x for e in [core.take_effects()] for x in e.written]
        core.commit_batch(written)
        m = core.metas["c"]
        assert m.tail == 2 * FRAME_OVERHEAD + 6
        assert [x.data for x in core.read_committed(reader, m, -1)] == [b"one", b"two"]
        _, cached = core.snapshot("c", format_offset(0))
        assert cached is not None and [x.data for x in cached] == [b"one", b"two"]
    finally:
        reader.close()
        core.close()
