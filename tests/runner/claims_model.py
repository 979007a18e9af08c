"""An in-memory model of the real agents-server's pull-wake subscriptions, for the
dispatcher's tests (upstream-protocol.md 0.1, 5.2, 6, 7).

One subscription per entity stream: a generation counter, at most one wake at
a time, appends while a wake is outstanding or claimed make no event, a claim
takes whatever wake is current (the event's generation is ignored), `done`
acks and announces the next generation at once if data remains, a lease
expiry (`expire`) or release announces a new generation, a late or foreign
callback is 502 `WAKE_CALLBACK_FAILED` / FENCED.  Every request is recorded.
It speaks through the same `ClaimAPI` the dispatcher uses on the wire, so the
tests exercise the dispatcher's whole cycle without sockets; the wire shapes
themselves are covered against the aiohttp stub (test_claims_wire.py).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from pullwake.runner.api import Answer

BASE = "http://agents.test"


def offset(n: int) -> str:
    return f"{0:016d}_{n:016d}"


def offset_n(text: str) -> int:
    return int(text.split("_")[1])


@dataclass
class Sub:
    sid: str
    stream: str
    tail: int = 0
    acked: int = 0
    generation: int = 0
    outstanding: bool = False  # announced, not claimed
    holder: str | None = None  # wake id of the current claim
    token: str | None = None
    paused: bool = False


@dataclass
class Claimed:
    sid: str
    wake_id: str
    epoch: int
    token: str
    start: int  # acked when claimed
    end: int  # tail when claimed (the offset to ack)


@dataclass
class Model:
    """`events` receives every wake event appended to the wake stream, in order."""

    events: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    subs: dict[str, Sub] = field(default_factory=dict)
    claims: dict[str, Claimed] = field(default_factory=dict)  # by wake id
    requests: list[tuple[str, Any]] = field(default_factory=list)
    callback_headers: list[str] = field(default_factory=list)
    answer_override: list[Answer] = field(default_factory=list)  # next claim answers
    ts: itertools.count[int] = field(default_factory=lambda: itertools.count(1_796_000_000_000))
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def entity(self, name: str) -> Sub:
        sid = f"runner:r1:{name}"
        sub = self.subs[sid] = Sub(sid, f"t/{name}/main")
        return sub

    def append(self, sub: Sub, n: int = 1) -> None:
        sub.tail += n
        self._maybe_wake(sub)

    def _maybe_wake(self, sub: Sub) -> bool:
        if sub.tail > sub.acked and not sub.outstanding and sub.holder is None:
            self._announce(sub)
            return True
        return False

    def _announce(self, sub: Sub) -> None:
        sub.generation += 1
        sub.outstanding = True
        self.events.put_nowait(
            {
                "type": "wake",
                "subscription_id": sub.sid,
                "stream": sub.stream,
                "generation": sub.generation,
                "ts": next(self.ts),
            }
        )

    def expire(self, sub: Sub) -> None:
        """The claim lease ran out: fence the holder, announce a new generation."""
        sub.holder = sub.token = None
        sub.outstanding = False
        self._maybe_wake(sub)

    def restart(self) -> None:
        """A server restart: subscriptions forgotten (claims of old ones answer 204)."""
        self.subs.clear()

    # --- ClaimAPI ---
    async def claim(self, body: dict[str, Any]) -> Answer:
        self.requests.append(("claim", body))
        await asyncio.sleep(0)
        if self.answer_override:
            return self.answer_override.pop(0)
        sub = self.subs.get(body.get("subscription_id", ""))
        if sub is None:
            return Answer(204, None)
        if sub.holder is not None:
            return Answer(409, _error("ALREADY_CLAIMED", '{"error":{"code":"ALREADY_CLAIMED"}}'))
        if sub.tail <= sub.acked:
            return Answer(409, _error("NO_PENDING_WORK", "Subscription has no pending work"))
        if not sub.outstanding:
            self._announce(sub)
        if sub.paused:  # the agents-server releases: a new generation at once
            sub.outstanding = False
            self._announce(sub)
            return Answer(200, {"done": True})
        wake_id = f"w_{next(self._ids):024x}"
        token = f"tok-{wake_id}"
        sub.outstanding = False
        sub.holder, sub.token = wake_id, token
        self.claims[wake_id] = Claimed(sub.sid, wake_id, sub.generation, token, sub.acked, sub.tail)
        path = "/" + sub.stream
        return Answer(
            200,
            {
                "consumerId": wake_id,
                "epoch": sub.generation,
                "wakeId": wake_id,
                "streamPath": path,
                "streams": [{"path": path, "offset": offset(sub.tail)}],
                "callback": f"{BASE}/_electric/wake-callbacks/{wake_id}",
                "claimToken": token,
                "triggerEvent": "message_received",
                "entity": {"type": "t", "status": "idle", "url": path.removesuffix("/main")},
                "principal": {"url": "/principal/system%3Adev-local"},
            },
        )

    async def callback(self, url: str, token: str, body: dict[str, Any]) -> Answer:
        self.requests.append(("callback", body))
        self.callback_headers.append(token)
        await asyncio.sleep(0)
        wake_id = url.rsplit("/", 1)[-1]
        claimed = self.claims.get(wake_id)
        if claimed is None:
            return Answer(404, _error("WAKE_CALLBACK_NOT_FOUND", "Unknown wake-callback consumer"))
        sub = self.subs.get(claimed.sid)
        if sub is None or sub.token != token or body.get("epoch") != sub.generation:
            return Answer(
                502,
                _error(
                    "WAKE_CALLBACK_FAILED",
                    'Subscription ack failed: 409 {"error":{"code":"FENCED",'
                    '"message":"Wake generation is stale"}}',
                ),
            )
        for ack in body.get("acks", []):
            sub.acked = max(sub.acked, offset_n(ack["offset"]))
        if body.get("done") is True:
            sub.holder = sub.token = None
            more = self._maybe_wake(sub)
            return Answer(200, {"ok": True, "next_wake": more})
        return Answer(200, {"ok": True, "next_wake": False})

    def callbacks(self, kind: str = "") -> list[dict[str, Any]]:
        out = [b for k, b in self.requests if k == "callback"]
        if kind == "done":
            return [b for b in out if b.get("done")]
        if kind == "heartbeat":
            return [b for b in out if not b.get("done")]
        return out

    def claim_requests(self) -> list[dict[str, Any]]:
        return [b for k, b in self.requests if k == "claim"]


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
