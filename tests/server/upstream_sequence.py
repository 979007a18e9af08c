"""One scripted conversation with an agents-server, normalized for comparison.

`run(base_url)` replays the requests of the upstream probes (registration,
principals, heartbeats, health, entity types, spawn, send, wake stream reads,
claims, wake callbacks, pause) and returns one record per request: status,
content type and body with volatile values (times, ids, tokens, ports)
replaced by stable placeholders.  `tests/server/data/upstream_sequence.json` is
what the REAL agents-server 0.6.4 answered (recorded with
`python -m tests.server.upstream_sequence http://127.0.0.1:PORT [main|expiry] > ...json`
against `interop/upstream.py server`); `test_upstream_sequence.py` replays them
against ours and requires the same answers.  `data/upstream_expiry.json`: a claim
left to its 30 s lease (slow).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

Record = dict[str, Any]

_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_WAKE_ID = re.compile(r"w_[0-9a-f]{24}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TOKEN = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_ORIGIN = re.compile(r"http://127\.0\.0\.1:\d+")


class Normalizer:
    """Replaces volatile values by placeholders numbered in order of appearance."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.seen: dict[str, str] = {}

    def _sub(self, kind: str, m: re.Match[str]) -> str:
        key = m.group(0)
        if key not in self.seen:
            self.seen[key] = (
                f"<{kind}{sum(1 for v in self.seen.values() if v.startswith('<' + kind))}>"
            )
        return self.seen[key]

    def text(self, s: str) -> str:
        for entity in ("e0", "e1", "e2", "e3"):  # the subscription hash of our entities' URLs
            digest = hashlib.sha256(f"/probe{self.tag}/{entity}".encode()).hexdigest()[:16]
            s = s.replace(digest, f"<sha256 /probe<tag>/{entity}>")
        for name in ("r1",):  # the ETag carries the base64 of the DS path
            path = f"/v1/stream/runners/{name}-{self.tag}/wake"
            s = s.replace(base64.b64encode(path.encode()).decode(), f"<b64 {path}>")
        s = s.replace(self.tag, "<tag>")
        s = _ORIGIN.sub("<origin>", s)
        s = _TOKEN.sub(lambda m: self._sub("token", m), s)
        s = _WAKE_ID.sub(lambda m: self._sub("wake", m), s)
        s = _UUID.sub("<uuid>", s)
        return _ISO.sub("<time>", s)

    def value(self, v: Any, key: str = "") -> Any:
        if key == "active" and isinstance(v, list):
            # health's claims.active: upstream selects them with no ORDER BY
            v = sorted(v, key=lambda c: c.get("epoch", 0) if isinstance(c, dict) else 0)
        if isinstance(v, dict):
            return {k: self.value(x, k) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, str):
            return self.text(v)
        volatile = key in ("created_at", "updated_at", "ts", "txid", "lease_remaining_ms")
        if volatile and isinstance(v, int | float) and not isinstance(v, bool):
            return f"<{key}>"
        return v


class Conversation:
    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.tag = uuid.uuid4().hex[:6]
        self.norm = Normalizer(self.tag)
        self.records: list[Record] = []
        self.last: Any = None
        self.last_headers: dict[str, str] = {}

    def call(
        self,
        name: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        principal: str | None = None,
        url: str | None = None,
        keep_headers: tuple[str, ...] = (),
    ) -> Any:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        h = {"Content-Type": "application/json"} if data is not None else {}
        if principal is not None:
            h["electric-principal"] = principal
        h.update(headers or {})
        req = urllib.request.Request(url or self.base + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=40) as resp:
                status, hdrs, payload = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            status, hdrs, payload = err.code, err.headers, err.read()
        text = payload.decode("utf-8", "replace")
        try:
            decoded: Any = json.loads(text) if text else None
        except ValueError:
            decoded = text
        self.last = decoded
        self.last_headers = {k.lower(): v for k, v in hdrs.items()}
        rec: Record = {
            "name": name,
            "status": status,
            "content_type": (hdrs.get("Content-Type") or "").lower() or None,
            "body": self.norm.value(decoded),
        }
        for k in keep_headers:
            rec[k] = self.norm.text(self.last_headers.get(k, "<absent>"))
        self.records.append(rec)
        return decoded


def script(c: Conversation) -> None:
    t = c.tag
    r1, ra, rb = f"r1-{t}", f"ra-{t}", f"rb-{t}"
    alice, bob = f"user:alice-{t}", f"/principal/user%3Abob-{t}"
    c.call("register minimal", "POST", "/_electric/runners", {"id": r1, "label": "r1"})
    c.call("re-register", "POST", "/_electric/runners", {"id": r1, "label": "again"})
    c.call("register empty body", "POST", "/_electric/runners", raw=b"")
    c.call("register invalid JSON", "POST", "/_electric/runners", raw=b"{nope")
    c.call("register array", "POST", "/_electric/runners", [1])
    c.call("register id number", "POST", "/_electric/runners", {"id": 5, "label": "x"})
    c.call(
        "register kind bogus", "POST", "/_electric/runners", {"id": "k", "label": "x", "kind": "k"}
    )
    c.call(
        "register admin bogus",
        "POST",
        "/_electric/runners",
        {"id": "k", "label": "x", "admin_status": "bogus"},
    )
    c.call(
        "register owner key form",
        "POST",
        "/_electric/runners",
        {"id": "k", "label": "x", "owner_principal": "system:dev-local"},
    )
    c.call(
        "register owner legacy URL",
        "POST",
        "/_electric/runners",
        {"id": f"r8-{t}", "label": "x", "owner_principal": "/principal/system:dev-local"},
    )
    c.call(
        "register owner other",
        "POST",
        "/_electric/runners",
        {"id": "k", "label": "x", "owner_principal": bob},
    )
    c.call(
        "register as alice", "POST", "/_electric/runners", {"id": ra, "label": "a"}, principal=alice
    )
    c.call(
        "register as bob URL", "POST", "/_electric/runners", {"id": rb, "label": "b"}, principal=bob
    )
    c.call(
        "register id with colon", "POST", "/_electric/runners", {"id": f"host:{t}", "label": "x"}
    )
    c.call(
        "register profiles",
        "POST",
        "/_electric/runners",
        {
            "id": f"re-{t}",
            "label": "x",
            "kind": "ci",
            "extra": 1,
            "sandbox_profiles": [{"name": "p", "label": "P", "remote": True, "more": 2}],
        },
    )
    c.call(
        "register bad profile",
        "POST",
        "/_electric/runners",
        {"id": "k", "label": "x", "sandbox_profiles": [{"name": 1}]},
    )
    c.call("register empty id", "POST", "/_electric/runners", {"id": "", "label": "x"})
    c.call("register id with slash", "POST", "/_electric/runners", {"id": f"a/b{t}", "label": "x"})
    c.call("register id with @", "POST", "/_electric/runners", {"id": f"al@{t}", "label": "x"})
    c.call("get encoded id", "GET", f"/_electric/runners/al%40{t}")
    c.call("wake stream encoded id", "GET", f"/runners/al%40{t}/wake?offset=-1")
    c.call("wake stream raw id", "GET", f"/runners/al@{t}/wake?offset=-1")
    c.call("get id with slash", "GET", f"/_electric/runners/a/b{t}")
    c.call(
        "custom wake_stream",
        "POST",
        "/_electric/runners",
        {"id": f"c{t}", "label": "x", "wake_stream": f"/custom/{t}"},
    )
    c.call(
        "duplicate wake_stream",
        "POST",
        "/_electric/runners",
        {"id": f"d{t}", "label": "x", "wake_stream": f"/custom/{t}"},
    )
    c.call(
        "register owner empty",
        "POST",
        "/_electric/runners",
        {"id": f"e{t}", "label": "x", "owner_principal": ""},
    )
    c.call("health route", "GET", "/_electric/health")
    c.call(
        "preflight", "OPTIONS", "/_electric/runners", keep_headers=("access-control-allow-methods",)
    )
    c.call("entity type no description", "POST", "/_electric/entity-types", {"name": f"ty{t}"})
    c.call("entity type no name", "POST", "/_electric/entity-types", {"description": "x"})
    c.call("entity type", "POST", "/_electric/entity-types", {"name": f"ty{t}", "description": "a"})
    c.call(
        "entity type again",
        "POST",
        "/_electric/entity-types",
        {"name": f"ty{t}", "description": "b"},
    )
    c.call("spawn without policy", "PUT", f"/_electric/entities/ty{t}/x1", {})
    c.call("spawn duplicate", "PUT", f"/_electric/entities/ty{t}/x1", {})
    c.call("send without policy", "POST", f"/_electric/entities/ty{t}/x1/send", {"payload": 1})
    c.call("spawn reserved type", "PUT", "/_electric/entities/_ty/x1", {})
    c.call("list with trailing slash", "GET", "/_electric/runners/", principal=bob)
    c.call("list as bob", "GET", "/_electric/runners", principal=bob)
    c.call("list other owner", "GET", "/_electric/runners?owner_principal=" + bob)
    c.call("list bad owner", "GET", "/_electric/runners?owner_principal=bob")
    c.call("get", "GET", f"/_electric/runners/{r1}")
    c.call("get missing", "GET", f"/_electric/runners/missing-{t}")
    c.call("get as alice", "GET", f"/_electric/runners/{r1}", principal=alice)
    c.call("get invalid principal", "GET", f"/_electric/runners/{r1}", principal="agent:x/y")
    c.call("get bogus kind principal", "GET", f"/_electric/runners/{r1}", principal="robot:x")
    c.call(
        "get URL principal",
        "GET",
        f"/_electric/runners/{r1}",
        principal="/principal/system%3Adev-local",
    )
    c.call("DELETE runner", "DELETE", f"/_electric/runners/{r1}")
    c.call("PUT runner", "PUT", f"/_electric/runners/{r1}", {})
    c.call("GET claim", "GET", f"/_electric/runners/{r1}/claim")
    c.call("old complete route", "POST", f"/_electric/runners/{r1}/claims/w/complete", {})
    c.call("old wakes route", "POST", f"/_electric/runners/{r1}/wakes", {})
    c.call("disable", "POST", f"/_electric/runners/{r1}/disable")
    c.call("health disabled", "GET", f"/_electric/runners/{r1}/health")
    c.call("claim disabled", "POST", f"/_electric/runners/{r1}/claim", {})
    c.call("enable", "POST", f"/_electric/runners/{r1}/enable")
    c.call("enable missing", "POST", f"/_electric/runners/missing-{t}/enable")
    c.call("health never heartbeated", "GET", f"/_electric/runners/{r1}/health")
    hb = f"/_electric/runners/{r1}/heartbeat"
    c.call("heartbeat missing", "POST", f"/_electric/runners/missing-{t}/heartbeat", {})
    c.call("heartbeat empty", "POST", hb, raw=b"")
    c.call("heartbeat camel offset", "POST", hb, {"lease_ms": 5000, "wakeStreamOffset": "x"})
    c.call(
        "heartbeat both offsets",
        "POST",
        hb,
        {"wake_stream_offset": "snake", "wakeStreamOffset": "c"},
    )
    c.call("heartbeat lease string", "POST", hb, {"lease_ms": "5"})
    c.call("heartbeat lease 0", "POST", hb, {"lease_ms": 0})
    c.call("heartbeat lease fraction", "POST", hb, {"lease_ms": 4500.5})
    c.call("heartbeat lease negative", "POST", hb, {"lease_ms": -60000})
    c.call("health expired", "GET", f"/_electric/runners/{r1}/health")
    c.call("heartbeat liveness garbage", "POST", hb, {"liveness_lease_expires_at": "garbage"})
    c.call(
        "heartbeat liveness empty", "POST", hb, {"liveness_lease_expires_at": "", "lease_ms": 4000}
    )
    c.call("heartbeat offset number", "POST", hb, {"wake_stream_offset": 5})
    c.call("heartbeat diagnostics array", "POST", hb, {"diagnostics": []})
    c.call(
        "heartbeat diagnostics mixed",
        "POST",
        hb,
        {
            "diagnostics": {
                "status": "reconnecting",
                "running": True,
                "last_heartbeat_ok": False,
                "last_claim_result": "no_work",
                "last_error": "boom",
                "reconnect_count": 7,
                "claims_failed": 1.5,
                "claims_skipped": -1,
                "stream_connected": "yes",
            }
        },
    )
    c.call("health degraded", "GET", f"/_electric/runners/{r1}/health")
    c.call("heartbeat diagnostics invalid only", "POST", hb, {"diagnostics": {"status": "bogus"}})
    c.call("heartbeat diagnostics empty", "POST", hb, {"diagnostics": {}})
    c.call("health keeps previous", "GET", f"/_electric/runners/{r1}/health")
    c.call("heartbeat as alice", "POST", hb, {}, principal=alice)
    c.call(
        "heartbeat long lease",
        "POST",
        hb,
        {
            "lease_ms": 600000,
            "diagnostics": {
                "stream_connected": True,
                "last_heartbeat_ok": True,
                "reconnect_count": 0,
            },
        },
    )
    c.call("health healthy", "GET", f"/_electric/runners/{r1}/health")
    etype = f"probe{t}"
    c.call(
        "entity type", "POST", "/_electric/entity-types", {"name": etype, "description": "probe"}
    )
    policy = {"targets": [{"type": "runner", "runnerId": r1}]}
    c.call(
        "spawn unknown type", "PUT", f"/_electric/entities/nope{t}/e1", {"dispatch_policy": policy}
    )
    c.call(
        "spawn unknown runner",
        "PUT",
        f"/_electric/entities/{etype}/e0",
        {"dispatch_policy": {"targets": [{"type": "runner", "runnerId": f"missing-{t}"}]}},
    )
    c.call(
        "spawn other's runner",
        "PUT",
        f"/_electric/entities/{etype}/e0",
        {"dispatch_policy": {"targets": [{"type": "runner", "runnerId": ra}]}},
    )
    c.call(
        "spawn bad policy",
        "PUT",
        f"/_electric/entities/{etype}/e0",
        {"dispatch_policy": {"targets": []}},
    )
    c.call("spawn e1", "PUT", f"/_electric/entities/{etype}/e1", {"dispatch_policy": policy})
    wake = f"/runners/{r1}/wake"
    c.call(
        "wake stream empty",
        "GET",
        wake + "?offset=-1",
        keep_headers=("stream-next-offset", "stream-up-to-date", "etag"),
    )
    c.call("send e1", "POST", f"/_electric/entities/{etype}/e1/send", {"payload": "hi"})
    c.call(
        "send missing entity", "POST", f"/_electric/entities/{etype}/nope/send", {"payload": "hi"}
    )
    c.call("send bad mode", "POST", f"/_electric/entities/{etype}/e1/send", {"mode": "x"})
    event = c.call(
        "wake stream after send",
        "GET",
        wake + "?offset=-1",
        keep_headers=("stream-next-offset", "stream-up-to-date"),
    )
    first = event[0] if isinstance(event, list) and event else {}
    c.call("entity e1", "GET", f"/_electric/entities/{etype}/e1")
    cl = f"/_electric/runners/{r1}/claim"
    claim = c.call("claim", "POST", cl, first)
    c.call("claim held", "POST", cl, first)
    c.call("claim empty body", "POST", cl, raw=b"")
    c.call("claim unknown sub", "POST", cl, {"subscription_id": f"runner:{r1}:deadbeef"})
    c.call("claim other runner's sub", "POST", cl, {"subscription_id": "runner:zz:1"})
    c.call("claim generation string", "POST", cl, {"generation": "1"})
    c.call("claim as alice", "POST", cl, first, principal=alice)
    c.call("claim invalid JSON", "POST", cl, raw=b"{")
    c.call("health active claim", "GET", f"/_electric/runners/{r1}/health")
    c.call("entity running", "GET", f"/_electric/entities/{etype}/e1")
    if not isinstance(claim, dict) or "callback" not in claim:
        return
    cb, token, epoch = claim["callback"], claim["claimToken"], claim["epoch"]
    bearer = {"Authorization": f"Bearer {token}"}
    c.call(
        "cb claim-request",
        "POST",
        "",
        {"epoch": epoch, "wakeId": claim["wakeId"]},
        url=cb,
        headers=bearer,
    )
    c.call(
        "cb claim-request no token",
        "POST",
        "",
        {"epoch": epoch, "wake_id": claim["wakeId"]},
        url=cb,
    )
    c.call("cb heartbeat", "POST", "", {"epoch": epoch}, url=cb, headers=bearer)
    c.call(
        "cb heartbeat claim-token header",
        "POST",
        "",
        {"epoch": epoch},
        url=cb,
        headers={"electric-claim-token": token},
    )
    c.call("cb no token", "POST", "", {"epoch": epoch}, url=cb)
    c.call(
        "cb bad token",
        "POST",
        "",
        {"epoch": epoch},
        url=cb,
        headers={"Authorization": "Bearer x" + token},
    )
    c.call("cb wrong epoch", "POST", "", {"epoch": epoch + 5}, url=cb, headers=bearer)
    c.call("cb empty body", "POST", "", url=cb, raw=b"", headers=bearer)
    c.call(
        "cb invalid JSON text/plain",
        "POST",
        "",
        url=cb,
        raw=b"{",
        headers={**bearer, "Content-Type": "text/plain"},
    )
    c.call("cb invalid JSON", "POST", "", url=cb, raw=b"{", headers=bearer)
    c.call(
        "cb unknown consumer",
        "POST",
        "/_electric/wake-callbacks/w_000000000000000000000000",
        {"epoch": 1},
        headers=bearer,
    )
    c.call("cb schema", "POST", "", {"done": "yes"}, url=cb, headers=bearer)
    main = claim["streamPath"]
    c.call(
        "cb ack -1",
        "POST",
        "",
        {"epoch": epoch, "acks": [{"path": main, "offset": "-1"}]},
        url=cb,
        headers=bearer,
    )
    c.call(
        "cb ack beyond",
        "POST",
        "",
        {"epoch": epoch, "acks": [{"path": main, "offset": "0000000000000000_0000000009999999"}]},
        url=cb,
        headers=bearer,
    )
    c.call(
        "cb ack unknown stream",
        "POST",
        "",
        {"epoch": epoch, "acks": [{"path": "/x/y", "offset": "0000000000000000_0000000000000001"}]},
        url=cb,
        headers=bearer,
    )
    c.call(
        "send while claimed", "POST", f"/_electric/entities/{etype}/e1/send", {"payload": "second"}
    )
    c.call("wake stream no new event", "GET", wake + "?offset=-1")
    offset = claim["streams"][0]["offset"]
    c.call(
        "cb partial ack",
        "POST",
        "",
        {"epoch": epoch, "acks": [{"path": main, "offset": offset}]},
        url=cb,
        headers=bearer,
    )
    c.call("cb done next_wake", "POST", "", {"epoch": epoch, "done": True}, url=cb, headers=bearer)
    c.call("wake stream gen 2", "GET", wake + "?offset=-1")
    c.call("cb done again", "POST", "", {"epoch": epoch, "done": True}, url=cb, headers=bearer)
    c.call("health after done", "GET", f"/_electric/runners/{r1}/health")
    c.call("entity idle", "GET", f"/_electric/entities/{etype}/e1")
    claim2 = c.call("claim gen 2 with stale event", "POST", cl, first)
    if isinstance(claim2, dict) and "callback" in claim2:
        c.call(
            "cb done gen 2",
            "POST",
            "",
            {
                "epoch": claim2["epoch"],
                "acks": [{"path": claim2["streamPath"], "offset": claim2["streams"][0]["offset"]}],
                "done": True,
            },
            url=claim2["callback"],
            headers={"Authorization": f"Bearer {claim2['claimToken']}"},
        )
    c.call("claim nothing pending", "POST", cl, first)
    c.call(
        "signal SIGSTOP", "POST", f"/_electric/entities/{etype}/e1/signal", {"signal": "SIGSTOP"}
    )
    tail = c.call("wake stream after signal", "GET", wake + "?offset=-1")
    c.call("claim paused", "POST", cl, first)
    c.call("claim paused again", "POST", cl, first)
    c.call(
        "signal SIGCONT", "POST", f"/_electric/entities/{etype}/e1/signal", {"signal": "SIGCONT"}
    )
    _ = tail
    c.call("wake stream bad offset", "GET", wake + "?offset=abc")
    c.call("wake stream long-poll no offset", "GET", wake + "?live=long-poll")
    c.call("missing stream", "GET", f"/runners/missing-{t}/wake?offset=-1")
    c.call("ds subscription", "GET", "/__ds/subscriptions/" + first.get("subscription_id", "x"))
    spawn2 = {
        "dispatch_policy": policy,
        "args": {"a": 1},
        "tags": {"t": "v"},
        "initialMessage": "go",
    }
    c.call(
        "spawn e2 with args, tags, initialMessage", "PUT", f"/_electric/entities/{etype}/e2", spawn2
    )
    c.call("entity e2", "GET", f"/_electric/entities/{etype}/e2")
    events = c.call("wake stream after initialMessage", "GET", wake + "?offset=-1")
    e2 = events[-1] if isinstance(events, list) and events else {}
    c.call("claim e2", "POST", cl, e2)
    c.call("health with e2 claim", "GET", f"/_electric/runners/{r1}/health")
    c.call("spawn bad tags", "PUT", f"/_electric/entities/{etype}/e3", {"tags": {"t": 1}})
    c.call("signal bad", "POST", f"/_electric/entities/{etype}/e2/signal", {"signal": 5})


def expiry_script(c: Conversation) -> None:
    """A claim nobody acks: after the 30 s lease, generation 2, a stale health row, FENCED."""
    t = c.tag
    r = f"x{t}"
    c.call("register", "POST", "/_electric/runners", {"id": r, "label": "x"})
    c.call(
        "entity type", "POST", "/_electric/entity-types", {"name": f"probe{t}", "description": "p"}
    )
    policy = {"targets": [{"type": "runner", "runnerId": r}]}
    c.call("spawn", "PUT", f"/_electric/entities/probe{t}/e1", {"dispatch_policy": policy})
    c.call("send", "POST", f"/_electric/entities/probe{t}/e1/send", {"payload": 1})
    events = c.call("events", "GET", f"/runners/{r}/wake?offset=-1")
    claim = c.call("claim", "POST", f"/_electric/runners/{r}/claim", events[0])
    time.sleep(31.5)  # upstream's DS lease is 30 s from the claim
    c.call("events after expiry", "GET", f"/runners/{r}/wake?offset=-1")
    c.call("health after expiry", "GET", f"/_electric/runners/{r}/health")
    c.call("entity after expiry", "GET", f"/_electric/entities/probe{t}/e1")
    done = {
        "epoch": 1,
        "acks": [{"path": claim["streamPath"], "offset": claim["streams"][0]["offset"]}],
        "done": True,
    }
    bearer = {"Authorization": "Bearer " + claim["claimToken"]}
    c.call("late done", "POST", "", done, url=claim["callback"], headers=bearer)
    c.call("claim generation 2", "POST", f"/_electric/runners/{r}/claim", events[0])
    c.call("health after generation 2", "GET", f"/_electric/runners/{r}/health")


MATRIX_BODIES: list[bytes | None] = [
    None,
    b"",
    b"{}",
    b"[]",
    b'"x"',
    b"null",
    b'{"id":5}',
    b'{"lease_ms":"1","diagnostics":5}',
    b'{"payload":{"a":[1,2.0]},"type":7}',
    b'{"signal":"SIGX"}',
    b'{"done":1,"acks":[1]}',
    b"{bad",
    b'{"dispatch_policy":{"targets":[{"type":"runner"}]}}',
    b'{"tags":{"a":1},"args":[]}',
    b'{"subscription_id":"runner:zz","ts":true}',
    b'{"name":"","description":""}',
]


def matrix_script(c: Conversation) -> None:
    """Every route x odd bodies (GET without): statuses, error codes, Ajv details."""
    t = c.tag
    r, ty = f"r-{t}", f"probe{t}"
    c.call("setup register", "POST", "/_electric/runners", {"id": r, "label": "x"})
    c.call("setup type", "POST", "/_electric/entity-types", {"name": ty, "description": "d"})
    policy = {"targets": [{"type": "runner", "runnerId": r}]}
    c.call("setup spawn", "PUT", f"/_electric/entities/{ty}/e1", {"dispatch_policy": policy})
    paths = [
        f"/_electric/runners/{r}",
        f"/_electric/runners/{r}/heartbeat",
        f"/_electric/runners/{r}/claim",
        f"/_electric/runners/{r}/health",
        "/_electric/entity-types",
        f"/_electric/entities/{ty}/e1",
        f"/_electric/entities/{ty}/e1/send",
        f"/_electric/entities/{ty}/e1/signal",
        "/_electric/wake-callbacks/w_x",
    ]
    for method in ("GET", "POST", "PUT"):
        for path in paths:
            for body in MATRIX_BODIES if method != "GET" else [None]:
                name = f"{method} {path.replace(t, '<t>')} {body!r}"
                if (method, path) == ("GET", "/_electric/entity-types"):
                    continue  # the type list (not served by ours; upstream lists built-ins)
                c.call(name, method, path, raw=body)


SCRIPTS = {"main": script, "expiry": expiry_script, "matrix": matrix_script}


def run(base: str, step: Callable[[Conversation], None] = script) -> list[Record]:
    c = Conversation(base)
    step(c)
    return c.records


if __name__ == "__main__":
    json.dump(
        run(sys.argv[1], SCRIPTS[sys.argv[2] if len(sys.argv) > 2 else "main"]),
        sys.stdout,
        indent=1,
    )
    print()
