"""The store on its own (SQLite in memory, no sockets): offsets, retention, claims."""

from __future__ import annotations

import json

import pytest

from pullwake.core.protocol import ClaimOutcome, format_offset, parse_offset
from pullwake.server import claimstore
from pullwake.server.records import BadOffset, NotOwner, OffsetGone, StreamTaken, UnknownRunner
from pullwake.server.store import READ_BYTES, Store

NOW = 1_700_000_000_000


def make(retain: int = 0) -> Store:
    s = Store(":memory:", retain=retain)
    s.register(
        "r",
        owner="user:a",
        label="r",
        kind="k",
        admin_status=None,
        wake_stream="/runners/r/wake",
        now=NOW,
    )
    return s


def test_offsets_are_sortable_and_reads_resume_exactly() -> None:
    s = make()
    pubs = [s.publish("r", {"i": i}, NOW) for i in range(5)]
    offsets = [p.offset for p in pubs]
    assert offsets == sorted(offsets) and len(set(offsets)) == 5
    res = s.read("/runners/r/wake", offsets[1])
    assert [json.loads(e)["payload"]["i"] for e in res.events] == [2, 3, 4]
    assert res.next_offset == offsets[-1] and res.up_to_date
    tail = s.read("/runners/r/wake", "now")
    assert (tail.events, tail.next_offset) == ([], offsets[-1])
    empty = make().read("/runners/r/wake", "-1")
    assert empty.events == [] and parse_offset(empty.next_offset)[1] == 0


def test_bad_and_gone_offsets() -> None:
    s = make(retain=2)
    pubs = [s.publish("r", None, NOW) for _ in range(4)]
    epoch, _ = parse_offset(pubs[0].offset)
    with pytest.raises(BadOffset):
        s.read("/runners/r/wake", "x")
    with pytest.raises(BadOffset):
        s.read("/runners/r/wake", format_offset(epoch, 9))  # beyond the tail
    with pytest.raises(OffsetGone):
        s.read("/runners/r/wake", format_offset(epoch - 1, 0))  # earlier incarnation
    with pytest.raises(OffsetGone):
        s.read("/runners/r/wake", pubs[0].offset)  # event 2 was compacted away
    assert len(s.read("/runners/r/wake", pubs[1].offset).events) == 2
    assert len(s.read("/runners/r/wake", "-1").events) == 2


def test_ownership_and_stream_uniqueness() -> None:
    s = make()
    with pytest.raises(NotOwner):
        s.register(
            "r",
            owner="user:b",
            label="r",
            kind="k",
            admin_status=None,
            wake_stream="/runners/r/wake",
            now=NOW,
        )
    with pytest.raises(StreamTaken):
        s.register(
            "q",
            owner="user:a",
            label="q",
            kind="k",
            admin_status=None,
            wake_stream="/runners/r/wake",
            now=NOW,
        )
    with pytest.raises(UnknownRunner):
        s.publish("ghost", None, NOW)


def test_claim_lifecycle_and_expiry_reannounces() -> None:
    s = make()
    w = s.publish("r", None, NOW)
    assert s.facts()["r"].pending == 1
    first = claimstore.claim(s, "r", w.wake_id, 1000, NOW)
    assert first.outcome is ClaimOutcome.CLAIMED and first.wake is not None
    assert claimstore.claim(s, "r", w.wake_id, 1000, NOW + 10).outcome is ClaimOutcome.CONFLICT
    assert claimstore.claim(s, "r", None, 1000, NOW + 10).outcome is ClaimOutcome.EMPTY
    assert claimstore.expire_claims(s, NOW + 999) == []
    assert claimstore.expire_claims(s, NOW + 1000) == [("r", "/runners/r/wake")]
    events = s.read("/runners/r/wake", "-1").events
    assert [json.loads(e)["wake_id"] for e in events] == [w.wake_id, w.wake_id]
    token = first.wake.claim_token
    assert token is not None
    assert not claimstore.complete(s, "r", w.wake_id, token, NOW + 1001)  # that claim is gone
    second = claimstore.claim(s, "r", None, 1000, NOW + 1001)  # the oldest claimable one
    assert second.wake is not None and second.wake.wake_id == w.wake_id
    assert second.wake.claim_token is not None
    assert claimstore.complete(s, "r", w.wake_id, second.wake.claim_token, NOW + 1002)
    assert claimstore.claim(s, "r", w.wake_id, 1000, NOW + 1003).outcome is ClaimOutcome.EMPTY
    assert s.facts()["r"].pending == 0


def test_a_read_stops_at_about_read_bytes_and_resumes_exactly() -> None:
    """Big wakes: one response holds about READ_BYTES, never a gigabyte."""
    s = make()
    big = "x" * (READ_BYTES // 3)
    pubs = [s.publish("r", {"i": i, "big": big}, NOW) for i in range(5)]
    first = s.read("/runners/r/wake", "-1")
    # a third event would pass the bound
    assert [json.loads(e)["payload"]["i"] for e in first.events] == [0, 1]
    assert first.next_offset == pubs[1].offset and not first.up_to_date
    second = s.read("/runners/r/wake", first.next_offset)
    third = s.read("/runners/r/wake", second.next_offset)
    assert [json.loads(e)["payload"]["i"] for e in second.events + third.events] == [2, 3, 4]
    assert third.up_to_date and third.next_offset == pubs[-1].offset
    # one event bigger than the bound still comes alone, not never
    s.publish("r", {"big": "y" * (READ_BYTES + 10)}, NOW)
    alone = s.read("/runners/r/wake", pubs[-1].offset)
    assert len(alone.events) == 1 and alone.up_to_date


def test_pending_count_recomputed_on_heartbeat_counts_claimed_not_completed() -> None:
    s = make()
    done, held, _open = (s.publish("r", None, NOW) for _ in range(3))
    c = claimstore.claim(s, "r", done.wake_id, 1000, NOW)
    assert c.wake is not None and c.wake.claim_token is not None
    assert claimstore.complete(s, "r", done.wake_id, c.wake.claim_token, NOW)
    claimstore.claim(s, "r", held.wake_id, 1000, NOW)
    s.heartbeat("r", lease_ms=1000, offset=None, diagnostics=None, now=NOW)  # recount from db
    assert s.facts()["r"].pending == 2  # the claimed one and the open one


def test_claim_without_a_wake_id_takes_the_oldest_claimable() -> None:
    s = make()
    a = s.publish("r", None, NOW)
    b = s.publish("r", None, NOW + 1)
    assert claimstore.claim(s, "r", a.wake_id, 1000, NOW + 2).outcome is ClaimOutcome.CLAIMED
    first = claimstore.claim(s, "r", None, 1000, NOW + 3)  # a is held: b
    assert first.wake is not None and first.wake.wake_id == b.wake_id
    c = s.publish("r", None, NOW + 4)
    lapsed = claimstore.claim(s, "r", None, 1000, NOW + 1002)  # a's lease ran out: a, not c
    assert lapsed.wake is not None and lapsed.wake.wake_id == a.wake_id
    nxt = claimstore.claim(s, "r", None, 1000, NOW + 1002)  # b held until +1003: c
    assert nxt.wake is not None and nxt.wake.wake_id == c.wake_id
