"""Server-level interop scenarios, driven the way the upstream runner drives the server.

A scripted client (`Claimer`) does what the unmodified upstream pull-wake
runner does on the wire: read the wake stream, claim each event's
subscription (the event as body), complete through the claim's `callback`
with `{epoch, acks:[{path, offset}], done:true}` at the claim's offset.
Every published message has an offset in its entity stream; a claim covers
the messages between its subscription's previous ack and its own offset.
The checks: every acknowledged message is covered by exactly one completed
claim (none lost, none twice), under bursts while a claim is held, many
entities at once, a lease that runs out (new generation, FENCED late done,
stale health row as upstream) and a server restart in the middle of a claim.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import ServerProcess, http_json, running, wait_until

P = "/_electric/runners"


@dataclass
class Covered:
    subscription_id: str
    epoch: int
    after: str  # the subscription's acked offset before this claim
    upto: str  # the claim's offset, acked by its done


@dataclass
class Claimer:
    """The upstream runner's wire behaviour, one claim at a time."""

    server: ServerProcess
    runner_id: str
    offset: str = "-1"
    acked: dict[str, str] = field(default_factory=dict)  # subscription -> last acked offset
    covered: list[Covered] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)

    def events(self) -> list[dict[str, Any]]:
        status, headers, body = self.server.api(
            "GET", f"/runners/{self.runner_id}/wake?offset={self.offset}"
        )
        assert status == 200, body
        self.offset = headers["Stream-Next-Offset"]
        return list(body)

    def claim(self, event: dict[str, Any]) -> dict[str, Any] | None:
        status, _, body = self.server.api("POST", f"{P}/{self.runner_id}/claim", event)
        self.answers.append(status)
        if status == 200 and "callback" in body:
            return dict(body)
        assert status in (204, 409), (status, body)
        return None

    def complete(self, claim: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
        upto = claim["streams"][0]["offset"]
        done = {
            "epoch": claim["epoch"],
            "acks": [{"path": claim["streamPath"], "offset": upto}],
            "done": True,
        }
        bearer = {"Authorization": f"Bearer {claim['claimToken']}"}
        status, _, body = http_json("POST", claim["callback"], done, headers=bearer)
        assert status == 200, body
        sub = event["subscription_id"]
        self.covered.append(Covered(sub, claim["epoch"], self.acked.get(sub, ""), upto))
        self.acked[sub] = upto
        return dict(body)

    def drain(self, until_quiet: float = 1.0, deadline: float = 30.0) -> None:
        """Claim and complete every event until nothing new arrives for `until_quiet` s."""
        end = time.monotonic() + deadline
        quiet_since = time.monotonic()
        while time.monotonic() < end:
            events = self.events()
            if events:
                quiet_since = time.monotonic()
            for ev in events:
                claim = self.claim(ev)
                if claim is not None:
                    self.complete(claim, ev)
            if not events and time.monotonic() - quiet_since > until_quiet:
                return
            if not events:
                time.sleep(0.05)
        raise AssertionError("the wake stream never went quiet")


def coverage(claimer: Claimer, messages: list[dict[str, Any]]) -> dict[str, int]:
    """How many completed claims cover each message (by its txid)."""
    out: dict[str, int] = {}
    for m in messages:
        out[m["txid"]] = sum(
            1
            for c in claimer.covered
            if c.subscription_id == m["subscription_id"] and c.after < m["offset"] <= c.upto
        )
    return out


def assert_exactly_once(claimer: Claimer, messages: list[dict[str, Any]]) -> None:
    counts = coverage(claimer, messages)
    lost = [t for t, n in counts.items() if n == 0]
    twice = [t for t, n in counts.items() if n > 1]
    assert not lost and not twice, f"lost {lost}, handled twice {twice}"


@pytest.fixture
def fast_lease(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path, extra=["--claim-lease-ms", "1000"])
    with running(srv):
        srv.start()
        yield srv


def test_burst_to_one_entity_while_its_claim_is_held(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    ent = f"/pullwake/burst-{rid}"
    c = Claimer(server, rid)
    first = [server.publish(rid, 0, entity=ent)]
    [event] = c.events()
    claim = c.claim(event)
    assert claim is not None
    # a burst while the claim is held: no new wake event, the claim does not cover it
    burst = [server.publish(rid, i, entity=ent) for i in range(1, 21)]
    assert c.events() == []
    assert c.claim(event) is None and c.answers[-1] == 409  # ALREADY_CLAIMED
    assert c.complete(claim, event) == {"ok": True, "next_wake": True}
    c.drain()
    assert_exactly_once(c, first + burst)
    # generation 2 covered the whole burst at once
    assert [(x.epoch, x.upto) for x in c.covered] == [
        (1, first[0]["offset"]),
        (2, burst[-1]["offset"]),
    ]


def test_bursts_racing_the_completions(server: ServerProcess, rid: str) -> None:
    """Messages keep arriving while claims come and go: each one handled exactly once."""
    server.register(rid)
    ent = f"/pullwake/race-{rid}"
    c = Claimer(server, rid)
    messages: list[dict[str, Any]] = []
    stop = threading.Event()

    def publish() -> None:
        for i in range(60):
            messages.append(server.publish(rid, i, entity=ent))
            if i % 7 == 0:
                time.sleep(0.02)
        stop.set()

    t = threading.Thread(target=publish)
    t.start()
    while not stop.is_set():
        for ev in c.events():
            claim = c.claim(ev)
            if claim is not None:
                c.complete(claim, ev)
    t.join()
    c.drain()
    assert len(messages) == 60
    assert_exactly_once(c, messages)
    gens = [x.epoch for x in c.covered]
    assert gens == list(range(1, len(gens) + 1))  # one generation per claim, no gaps


def test_many_entities_at_once(server: ServerProcess, rid: str) -> None:
    server.register(rid)
    entities = [f"/pullwake/many-{rid}-{i}" for i in range(25)]
    with ThreadPoolExecutor(8) as pool:
        messages = list(
            pool.map(lambda n: server.publish(rid, n, entity=entities[n % 25]), range(100))
        )
    c = Claimer(server, rid)
    c.drain()
    assert_exactly_once(c, messages)
    assert {x.subscription_id for x in c.covered} == {m["subscription_id"] for m in messages}
    health = server.api("GET", f"{P}/{rid}/health")[2]
    assert health["claims"]["active_count"] == 0
    assert health["dispatch"]["entities_with_active_claim"] == 0


def test_lease_expiry_is_a_new_generation_and_the_late_done_is_fenced(
    fast_lease: ServerProcess,
) -> None:
    srv, rid = fast_lease, "lease"
    srv.register(rid)
    c = Claimer(srv, rid)
    msg = srv.publish(rid, "work", entity="/pullwake/lease")
    [event] = c.events()
    claim = c.claim(event)
    assert claim is not None and claim["epoch"] == 1
    t0 = time.monotonic()
    # nobody acks: 1 s later DS drops the claim and announces generation 2
    [again] = wait_until(c.events, 10, what="the re-announcement")
    assert time.monotonic() - t0 >= 0.5
    assert (again["subscription_id"], again["generation"]) == (event["subscription_id"], 2)
    bearer = {"Authorization": f"Bearer {claim['claimToken']}"}
    done = {
        "epoch": 1,
        "acks": [{"path": claim["streamPath"], "offset": msg["offset"]}],
        "done": True,
    }
    status, _, body = http_json("POST", claim["callback"], done, headers=bearer)
    assert status == 502
    assert body == {
        "error": {
            "code": "WAKE_CALLBACK_FAILED",
            "message": 'Subscription ack failed: 409 {"error":{"code":"FENCED",'
            '"message":"Wake generation is stale"}}',
        }
    }
    # as upstream: the expired claim stays listed as active in health
    health = srv.api("GET", f"{P}/{rid}/health")[2]
    assert [a["epoch"] for a in health["claims"]["active"]] == [1]
    # a claim heartbeat ({epoch}) keeps the lease: no expiry while acked every 0.4 s
    claim2 = c.claim(again)
    assert claim2 is not None and claim2["epoch"] == 2
    bearer2 = {"Authorization": f"Bearer {claim2['claimToken']}"}
    for _ in range(5):
        status, _, body = http_json("POST", claim2["callback"], {"epoch": 2}, headers=bearer2)
        assert (status, body) == (200, {"ok": True, "next_wake": False})
        time.sleep(0.4)
    assert c.events() == []  # 2 s > the 1 s lease, and no new generation
    assert c.complete(claim2, again) == {"ok": True, "next_wake": False}
    assert_exactly_once(c, [msg])


def test_a_restart_in_the_middle_of_a_claim_loses_nothing(tmp_path: Path) -> None:
    """kill -9 while a claim is held and messages keep coming: after the restart the
    claim completes with its old token, the rest is announced, nothing twice."""
    db = tmp_path / "restart.db"
    srv = ServerProcess(tmp_path, db=db)
    ent = "/pullwake/restart"
    with running(srv):
        srv.start()
        srv.register("r")
        c = Claimer(srv, "r")
        before = [srv.publish("r", i, entity=ent) for i in range(5)]
        [event] = c.events()
        claim = c.claim(event)
        assert claim is not None
        during = [srv.publish("r", i, entity=ent) for i in range(5, 10)]
        srv.signal(signal.SIGKILL)
        srv.wait(5)
    again = ServerProcess(tmp_path, db=db, port=srv.port)
    with running(again):
        again.start()
        c.server = again
        assert c.complete(claim, event) == {"ok": True, "next_wake": True}
        after = [again.publish("r", i, entity=ent) for i in range(10, 15)]
        c.drain()
        assert_exactly_once(c, before + during + after)
