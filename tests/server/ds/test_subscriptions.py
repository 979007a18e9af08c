"""SubscriptionManager on a real SQLite store, with an injected clock (no sleeping)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pullwake.server.ds.store import DSStore, format_body
from pullwake.server.ds.subscriptions import SubscriptionError, SubscriptionManager, glob_match
from tests.support.waits import until

WAKE = "runners/r1/wake"
MAIN = "probe/e1/main"
SID = "runner:r1:23c1232b5a83aee4"
SPEC = {"type": "pull-wake", "streams": [MAIN], "wake_stream": WAKE, "description": "x"}


class Clock:
    def __init__(self) -> None:
        self.ms = 1_796_179_384_000

    def __call__(self) -> int:
        return self.ms


@dataclass
class Env:
    store: DSStore
    subs: SubscriptionManager
    clock: Clock

    async def events(self) -> list[dict[str, Any]]:
        res = await self.store.read(WAKE)
        return list(json.loads(format_body(res.messages, True)))


async def make(path: Path, clock: Clock) -> Env:
    store = DSStore(str(path), clock=clock)
    subs = SubscriptionManager(store, clock=clock)
    await subs.start()
    return Env(store, subs, clock)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = await make(tmp_path / "ds.db", Clock())
    await e.store.create(WAKE, content_type="application/json")
    await e.store.create(MAIN, content_type="application/json")
    await e.store.append_json(MAIN, [{"before": True}])  # before the link: not pending
    await e.subs.put(SID, SPEC)
    try:
        yield e
    finally:
        e.subs.shutdown()
        e.store.close()


async def test_create_confirm_conflict(env: Env) -> None:
    body, created = await env.subs.put(SID, SPEC)
    assert not created
    assert body["streams"] == [
        {"path": MAIN, "link_type": "explicit", "acked_offset": env.store.tail(MAIN)}
    ]
    assert body["lease_ttl_ms"] == 30_000 and body["wake_stream"] == WAKE
    with pytest.raises(SubscriptionError) as e:
        await env.subs.put(SID, {**SPEC, "lease_ttl_ms": 5000})
    assert (e.value.status, e.value.code) == (409, "SUBSCRIPTION_ALREADY_EXISTS")
    with pytest.raises(SubscriptionError) as e:
        await env.subs.put("x", {**SPEC, "lease_ttl_ms": 10})
    assert (e.value.status, e.value.code) == (400, "INVALID_REQUEST")


async def test_append_announces_once(env: Env) -> None:
    assert await env.events() == []
    with pytest.raises(SubscriptionError) as e:
        await env.subs.claim(SID, "r1")
    assert e.value.code == "NO_PENDING_WORK"
    await env.store.append_json(MAIN, [{"m": 1}])
    await env.store.append_json(MAIN, [{"m": 2}])  # wake outstanding: no second event
    events = await env.events()
    assert events == [
        {
            "type": "wake",
            "subscription_id": SID,
            "stream": MAIN,
            "generation": 1,
            "ts": env.clock.ms,
        }
    ]
    st = env.subs.state(SID)
    assert st is not None and st.wake_outstanding and st.has_pending and st.holder is None


async def test_claim_ack_done_and_next_wake(env: Env) -> None:
    await env.store.append_json(MAIN, [{"m": 1}])
    claim = await env.subs.claim(SID, "r1")
    assert claim["generation"] == 1 and claim["wake_id"].startswith("w_")
    assert len(claim["wake_id"]) == 26
    (info,) = claim["streams"]
    assert info["has_pending"] and info["tail_offset"] == env.store.tail(MAIN)
    with pytest.raises(SubscriptionError) as e:
        await env.subs.claim(SID, "r2")
    assert e.value.body() == {
        "error": {"code": "ALREADY_CLAIMED", "current_holder": "r1", "generation": 1}
    }
    await env.store.append_json(MAIN, [{"m": 2}])  # while claimed: no event
    assert len(await env.events()) == 1
    req = {"wake_id": claim["wake_id"], "generation": 1}
    ack = {"path": "/" + MAIN, "offset": info["tail_offset"]}
    res = await env.subs.ack(SID, claim["token"], {**req, "acks": [ack], "done": True})
    assert res == {"ok": True, "next_wake": True}  # m2 arrived after the claim's tail
    events = await env.events()
    assert [e["generation"] for e in events] == [1, 2]
    claim2 = await env.subs.claim(SID, "r1")
    assert claim2["generation"] == 2
    req2 = {"wake_id": claim2["wake_id"], "generation": 2}
    tail = claim2["streams"][0]["tail_offset"]
    res = await env.subs.ack(
        SID, claim2["token"], {**req2, "acks": [{"stream": MAIN, "offset": tail}], "done": True}
    )
    assert res == {"ok": True, "next_wake": False}
    st = env.subs.state(SID)
    assert st is not None and not st.has_pending and st.wake_id is None


async def test_ack_errors(env: Env) -> None:
    await env.store.append_json(MAIN, [{"m": 1}])
    claim = await env.subs.claim(SID, "r1")
    req = {"wake_id": claim["wake_id"], "generation": 1}

    async def code(token: str, body: dict[str, Any]) -> tuple[int, str, str | None]:
        with pytest.raises(SubscriptionError) as e:
            await env.subs.ack(SID, token, body)
        return e.value.status, e.value.code, e.value.message

    assert await code("nope", req) == (401, "TOKEN_INVALID", "Token invalid")
    assert (await code(claim["token"], {**req, "generation": 2}))[:2] == (409, "FENCED")
    assert (await code(claim["token"], {}))[:2] == (409, "FENCED")
    bad = [({"path": MAIN, "offset": "-1"}, "Ack offset must not be -1")]
    bad.append(({"path": "other", "offset": "x"}, "Ack references an unknown subscription stream"))
    bad.append(({"path": MAIN, "offset": "0000000000000001_0"}, "Ack offset is beyond stream tail"))
    bad.append(({"path": MAIN, "offset": ""}, "Ack offset regresses the committed cursor"))
    for ack, msg in bad:
        assert await code(claim["token"], {**req, "acks": [ack]}) == (409, "INVALID_OFFSET", msg)
    env.clock.ms += 3601 * 1000
    assert (await code(claim["token"], req))[:2] == (401, "TOKEN_EXPIRED")


async def test_lease_reset_by_ack_then_expiry(env: Env) -> None:
    await env.store.append_json(MAIN, [{"m": 1}])
    claim = await env.subs.claim(SID, "r1")
    req = {"wake_id": claim["wake_id"], "generation": 1}
    env.clock.ms += 20_000
    assert await env.subs.ack(SID, claim["token"], req) == {"ok": True, "next_wake": False}
    env.clock.ms += 20_000  # 40 s after the claim, 20 s after the ack: still held
    assert await env.subs.expire_due() == 0
    st = env.subs.state(SID)
    assert st is not None and st.holder == "r1"
    assert st.lease_expires_at == env.clock.ms + 10_000
    env.clock.ms += 10_000
    expired: list[tuple[str, int, str | None]] = []
    env.subs.on_expired(lambda *a: expired.append(a))
    assert await env.subs.expire_due() == 1
    assert expired == [(SID, 1, claim["wake_id"])]
    events = await env.events()
    assert [e["generation"] for e in events] == [1, 2]
    assert events[1]["ts"] == env.clock.ms
    with pytest.raises(SubscriptionError) as e:
        await env.subs.ack(SID, claim["token"], {**req, "done": True})
    assert e.value.code == "FENCED"


async def test_release_reannounces(env: Env) -> None:
    await env.store.append_json(MAIN, [{"m": 1}])
    claim = await env.subs.claim(SID, "r1")
    await env.subs.release(SID, claim["token"], {"wake_id": claim["wake_id"], "generation": 1})
    assert [e["generation"] for e in await env.events()] == [1, 2]
    st = env.subs.state(SID)
    assert st is not None and st.wake_outstanding and st.holder is None


async def test_claim_without_event_creates_one(env: Env) -> None:
    """No wake stream at announce time: the wake stays outstanding without an event."""
    await env.subs.put("s2", {**SPEC, "wake_stream": "runners/none/wake"})
    await env.store.append_json(MAIN, [{"m": 1}])
    st = env.subs.state("s2")
    assert st is not None and st.wake_outstanding and st.generation == 1
    claim = await env.subs.claim("s2", "w")
    assert claim["generation"] == 1


async def test_state_survives_restart(tmp_path: Path) -> None:
    """Generation, acked offsets, holder, token and the outstanding wake are persisted."""
    clock = Clock()
    db = tmp_path / "ds.db"
    e = await make(db, clock)
    await e.store.create(WAKE, content_type="application/json")
    await e.store.create(MAIN, content_type="application/json")
    await e.subs.put(SID, SPEC)
    await e.store.append_json(MAIN, [1])
    claim = await e.subs.claim(SID, "r1")
    tail = claim["streams"][0]["tail_offset"]
    req = {"wake_id": claim["wake_id"], "generation": 1}
    await e.subs.ack(SID, claim["token"], {**req, "acks": [{"path": MAIN, "offset": tail}]})
    await e.store.append_json(MAIN, [2])
    e.subs.shutdown()
    e.store.close()

    e2 = await make(db, clock)
    try:
        st = e2.subs.state(SID)
        assert st is not None and st.holder == "r1" and st.generation == 1
        assert st.streams[0].acked_offset == tail and st.has_pending
        # the old token still works after the restart
        res = await e2.subs.ack(SID, claim["token"], {**req, "done": True})
        assert res == {"ok": True, "next_wake": True}
        events = json.loads(format_body((await e2.store.read(WAKE)).messages, True))
        assert [ev["generation"] for ev in events] == [1, 2]
    finally:
        e2.subs.shutdown()
        e2.store.close()


async def test_expired_lease_while_down_is_applied_at_start(tmp_path: Path) -> None:
    clock = Clock()
    db = tmp_path / "ds.db"
    e = await make(db, clock)
    await e.store.create(WAKE, content_type="application/json")
    await e.store.create(MAIN, content_type="application/json")
    await e.subs.put(SID, SPEC)
    await e.store.append_json(MAIN, [1])
    await e.subs.claim(SID, "r1")
    e.subs.shutdown()
    e.store.close()
    clock.ms += 31_000
    e2 = await make(db, clock)
    try:
        st = e2.subs.state(SID)
        assert st is not None and st.holder is None and st.generation == 2 and st.wake_outstanding
    finally:
        e2.subs.shutdown()
        e2.store.close()


async def test_glob_pattern_links_new_streams(env: Env) -> None:
    await env.subs.put("g", {"type": "pull-wake", "pattern": "jobs/*", "wake_stream": WAKE})
    await env.store.create("jobs/a", content_type="application/json")
    await env.store.append_json("jobs/a", [1])
    st = env.subs.state("g")
    assert st is not None and st.generation == 1
    assert [s.path for s in st.streams] == ["jobs/a"] and st.streams[0].link_type == "glob"


def test_glob_match() -> None:
    assert glob_match("a/*/c", "a/b/c")
    assert not glob_match("a/*", "a/b/c")
    assert glob_match("a/**", "a/b/c") and glob_match("a/**", "a")
    assert glob_match("**/c", "a/b/c")
    assert glob_match("a/%2A", "a/*") and not glob_match("a/%2A", "a/b")


async def test_deleted_stream_is_unlinked(env: Env) -> None:
    await env.store.delete(MAIN)
    st = env.subs.state(SID)
    assert st is not None and st.streams == ()


async def test_operations_before_start_load_first(tmp_path: Path) -> None:
    """An append or claim before the app's startup hook ran still sees the persisted state."""
    db = str(tmp_path / "ds.db")
    clock = Clock()
    e = await make(tmp_path / "ds.db", clock)
    await e.store.create(WAKE, content_type="application/json")
    await e.store.create(MAIN, content_type="application/json")
    await e.subs.put(SID, SPEC)
    e.subs.shutdown()
    e.store.close()
    store = DSStore(db, clock=clock)
    subs = SubscriptionManager(store, clock=clock)  # no start()
    try:
        await store.append_json(MAIN, [1])
        claim = await subs.claim(SID, "r1")
        assert claim["generation"] == 1
    finally:
        subs.shutdown()
        store.close()


async def test_cancelled_append_still_announces(env: Env) -> None:
    """A caller cancelled mid-append (a client gone, aiohttp handler cancellation):
    the append still commits, wakes its readers and announces its wake."""
    tail = env.store.tail(MAIN)
    assert tail is not None
    reader = asyncio.create_task(env.store.wait(MAIN, tail, 10))
    task = asyncio.create_task(env.store.append_json(MAIN, [{"m": 1}]))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.wait_for(reader, 10)
    await until(lambda: env.subs.state(SID).wake_outstanding, 10, what="wake announced")  # type: ignore[union-attr]
    assert [e["generation"] for e in await env.events()] == [1]
