"""DS HTTP routes on a real socket: mounts, headers and texts, long-poll, SSE idle modes."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pullwake.server.ds.http import DSConfig, DSServer, add_routes

Factory = Callable[..., Awaitable["Env"]]


@dataclass
class Recorder:
    calls: list[tuple[str, str]] = field(default_factory=list)

    def live_opened(self, path: str, mode: str) -> None:
        self.calls.append(("opened", f"{path}:{mode}"))

    def live_closed(self, path: str, mode: str) -> None:
        self.calls.append(("closed", f"{path}:{mode}"))

    def live_touched(self, path: str) -> None:
        self.calls.append(("touched", path))

    def caught_up(self, path: str) -> None:
        self.calls.append(("caught_up", path))


@dataclass
class Env:
    url: str
    http: aiohttp.ClientSession
    ds: DSServer
    seen: Recorder


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Factory]:
    made: list[tuple[TestServer, aiohttp.ClientSession]] = []

    async def factory(**cfg: float | bool) -> Env:
        ds = DSServer.open(str(tmp_path / f"ds{len(made)}.db"), DSConfig(**cfg))  # type: ignore[arg-type]
        seen = Recorder()
        ds.observer = seen
        app = web.Application()

        async def electric(request: web.Request) -> web.Response:
            return web.json_response({"route": "electric"})

        app.router.add_get("/_electric/health", electric)
        add_routes(app, ds)
        srv = TestServer(app, host="127.0.0.1")
        await srv.start_server()
        http = aiohttp.ClientSession(auto_decompress=False)
        made.append((srv, http))
        return Env(str(srv.make_url("")).rstrip("/"), http, ds, seen)

    try:
        yield factory
    finally:
        for srv, http in made:
            await http.close()
            await srv.close()


async def test_both_mounts_name_one_stream(make: Factory) -> None:
    e = await make()
    async with e.http.put(f"{e.url}/probe/e1/main", headers={"content-type": "application/json"}):
        pass
    async with e.http.post(
        f"{e.url}/v1/stream/probe/e1/main",
        data=b'{"a":1}',
        headers={"content-type": "application/json"},
    ) as r:
        assert r.status == 204
        tail = r.headers["Stream-Next-Offset"]
    assert tail == "0000000000000000_0000000000000013"
    async with e.http.get(f"{e.url}/probe/e1/main?offset=-1") as r:
        assert r.status == 200 and await r.json() == [{"a": 1}]
        assert r.headers["access-control-expose-headers"] == "*"  # the proxy's headers
        etag = r.headers["etag"]
    path_b64 = base64.b64encode(b"/v1/stream/probe/e1/main").decode()
    assert etag == f'"{path_b64}:-1:{tail}"'
    async with e.http.get(f"{e.url}/probe/e1/main?offset=-1", headers={"If-None-Match": etag}) as r:
        assert r.status == 304
    async with e.http.get(f"{e.url}/_electric/health") as r:
        assert await r.json() == {"route": "electric"}  # not a stream
    async with e.http.get(f"{e.url}/nope/wake") as r:
        assert (r.status, await r.text()) == (404, "Stream not found")
        assert r.headers["content-type"] == "text/plain"
    async with e.http.get(f"{e.url}/probe/e1/main?offset=bad") as r:
        assert (r.status, await r.text()) == (400, "Invalid offset format")
    async with e.http.get(f"{e.url}/probe/e1/main?offset=-1&live=long-poll&offset=-1") as r:
        assert (r.status, await r.text()) == (400, "Multiple offset parameters not allowed")


async def test_compression_only_at_the_ds_origin(make: Factory) -> None:
    e = await make()
    big = b'"' + b"x" * 2000 + b'"'
    h = {"content-type": "application/json"}
    async with e.http.put(f"{e.url}/v1/stream/big", data=big, headers=h):
        pass
    gz = {"accept-encoding": "gzip"}
    async with e.http.get(f"{e.url}/v1/stream/big", headers=gz) as r:
        assert r.headers.get("content-encoding") == "gzip"
    async with e.http.get(f"{e.url}/big", headers=gz) as r:
        assert "content-encoding" not in r.headers


async def test_long_poll_timeout_answers_204(make: Factory) -> None:
    e = await make(long_poll_timeout=0.3)
    async with e.http.put(f"{e.url}/runners/rq/wake", headers={"content-type": "application/json"}):
        pass
    t0 = time.monotonic()
    zero = "0000000000000000_0000000000000000"
    async with e.http.get(f"{e.url}/runners/rq/wake?offset={zero}&live=long-poll&cursor=1") as r:
        assert r.status == 204
        assert r.headers["stream-next-offset"] == zero
        assert r.headers["stream-up-to-date"] == "true"
        assert r.headers["stream-cursor"].isdigit()
    assert time.monotonic() - t0 >= 0.29
    assert ("opened", "runners/rq/wake:long-poll") in e.seen.calls
    assert ("closed", "runners/rq/wake:long-poll") in e.seen.calls


async def test_long_poll_wakes_on_append(make: Factory) -> None:
    e = await make(long_poll_timeout=10)
    h = {"content-type": "application/json"}
    async with e.http.put(f"{e.url}/s", headers=h):
        pass

    async def poll() -> tuple[int, object]:
        async with e.http.get(f"{e.url}/s?offset=now&live=long-poll") as r:
            return r.status, await r.json()

    task = asyncio.create_task(poll())
    await asyncio.sleep(0.1)
    async with e.http.post(f"{e.url}/s", data=b"[1,2]", headers=h):
        pass
    assert await asyncio.wait_for(task, 5) == (200, [1, 2])


async def read_sse(resp: aiohttp.ClientResponse, events: int, timeout: float) -> list[str]:
    """Raw SSE blocks (comments included) until `events` event blocks arrived."""
    buf = b""
    deadline = time.monotonic() + timeout
    while buf.count(b"event:") < events:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only got {buf!r}"
        chunk = await asyncio.wait_for(resp.content.readany(), remaining)
        assert chunk, "stream ended"
        buf += chunk
    return [b.decode() for b in buf.split(b"\n\n") if b]


async def test_sse_compat_upstream_idle(make: Factory) -> None:
    """No comments, no keepalive header; a pair of control events every long-poll timeout."""
    e = await make(long_poll_timeout=0.2, compat_upstream=True)
    async with e.http.put(f"{e.url}/runners/rq/wake", headers={"content-type": "application/json"}):
        pass
    async with e.http.get(f"{e.url}/runners/rq/wake?offset=-1&live=sse") as r:
        assert r.headers["content-type"] == "text/event-stream"
        assert "Stream-Keepalive-Interval" not in r.headers
        blocks = await read_sse(r, 5, 10)
    assert all(b.startswith("event: control\ndata:{") for b in blocks), blocks
    assert all('"upToDate":true' in b for b in blocks)


async def test_sse_pullwake_keepalive(make: Factory) -> None:
    e = await make(long_poll_timeout=30, keepalive_interval=0.1)
    h = {"content-type": "application/json"}
    async with e.http.put(f"{e.url}/w", data=b'[{"n":1},{"n":2}]', headers=h):
        pass
    async with e.http.post(f"{e.url}/w", data=b'{"n":3}', headers=h):
        pass
    async with e.http.get(f"{e.url}/w?offset=-1&live=sse") as r:
        assert r.headers["Stream-Keepalive-Interval"] == "0.1"
        blocks = await read_sse(r, 4, 10)
        while not any(b.startswith(": keepalive") for b in blocks):
            blocks += [b.decode() for b in (await r.content.readany()).split(b"\n\n") if b]
    events = [b for b in blocks if b.startswith("event:")]
    assert events[0] == 'event: data\ndata:[{"n":1},{"n":2}]'
    assert events[1].startswith('event: control\ndata:{"streamNextOffset"')
    assert '"upToDate"' not in events[1]  # a control after every data event (protocol 5.8)
    assert events[2] == 'event: data\ndata:[{"n":3}]'
    assert '"upToDate":true' in events[3]


async def test_sse_pullwake_idle_sends_one_control_per_timeout(make: Factory) -> None:
    """Idle in pullwake mode: keepalive comments, and ONE control event per long-poll
    timeout (upstream's pair halves the idle bytes' biggest part)."""
    e = await make(long_poll_timeout=0.6, keepalive_interval=0.25)
    async with e.http.put(f"{e.url}/idle", headers={"content-type": "application/json"}):
        pass
    async with e.http.get(f"{e.url}/idle?offset=now&live=sse") as r:
        blocks = await read_sse(r, 12, 10)
    assert blocks[0].startswith("event: control")  # the initial up-to-date control
    kinds = ["c" if b.startswith("event: control") else b for b in blocks[1:]]
    assert set(kinds) <= {"c", ": keepalive"}, kinds
    assert "c,c" not in ",".join(kinds), kinds  # never two controls in a row: no pair
    assert kinds.count("c") >= 2 and kinds.count(": keepalive") >= 2, kinds


async def test_subscription_routes_and_wake_event(make: Factory) -> None:
    e = await make()
    h = {"content-type": "application/json"}
    for p in ("runners/r1/wake", "probe/e1/main"):
        async with e.http.put(f"{e.url}/{p}", headers=h):
            pass
    sid = "runner:r1:23c1232b5a83aee4"
    spec = {"type": "pull-wake", "streams": ["probe/e1/main"], "wake_stream": "runners/r1/wake"}
    async with e.http.put(f"{e.url}/__ds/subscriptions/{sid}", json=spec) as r:
        assert r.status == 201
    async with e.http.put(f"{e.url}/v1/stream/__ds/subscriptions/{sid}", json=spec) as r:
        assert r.status == 200
    async with e.http.post(f"{e.url}/probe/e1/main", data=b'{"m":1}', headers=h):
        pass
    async with e.http.get(f"{e.url}/runners/r1/wake?offset=-1") as r:
        (ev,) = await r.json()
    assert ev["subscription_id"] == sid and ev["stream"] == "probe/e1/main"
    assert ev["generation"] == 1 and isinstance(ev["ts"], int)
    async with e.http.post(f"{e.url}/__ds/subscriptions/{sid}/claim", json={"worker": ""}) as r:
        assert r.status == 400
    async with e.http.post(f"{e.url}/__ds/subscriptions/{sid}/claim", json={"worker": "r1"}) as r:
        claim = await r.json()
    async with e.http.post(f"{e.url}/__ds/subscriptions/{sid}/claim", json={"worker": "r2"}) as r:
        assert r.status == 409
        assert await r.json() == {
            "error": {"code": "ALREADY_CLAIMED", "current_holder": "r1", "generation": 1}
        }
    auth = {"Authorization": f"Bearer {claim['token']}"}
    body = {"wake_id": claim["wake_id"], "generation": 1, "done": True}
    body["acks"] = [{"path": "/probe/e1/main", "offset": claim["streams"][0]["tail_offset"]}]
    async with e.http.post(f"{e.url}/__ds/subscriptions/{sid}/ack", json=body, headers=auth) as r:
        assert await r.json() == {"ok": True, "next_wake": False}
    async with e.http.post(f"{e.url}/__ds/subscriptions/{sid}/ack", json=body, headers=auth) as r:
        assert r.status == 409
        assert await r.json() == {
            "error": {"code": "FENCED", "message": "Wake generation is stale"}
        }
    async with e.http.get(f"{e.url}/__ds/nothing") as r:
        assert r.status == 404


async def test_shutdown_ends_live_reads_at_once(make: Factory) -> None:
    e = await make(long_poll_timeout=30, keepalive_interval=30)
    async with e.http.put(f"{e.url}/w", headers={"content-type": "application/json"}):
        pass
    async with e.http.get(f"{e.url}/w?offset=-1&live=sse") as r:
        await read_sse(r, 1, 5)
        t0 = time.monotonic()
        await e.ds.shutdown()
        rest = await asyncio.wait_for(r.content.read(), 5)
    assert rest == b"" and time.monotonic() - t0 < 2


async def test_sse_rotation_ends_with_a_rotate_comment(make: Factory) -> None:
    e = await make(long_poll_timeout=30, keepalive_interval=0.1, sse_rotate_seconds=0.3)
    async with e.http.put(f"{e.url}/w", headers={"content-type": "application/json"}):
        pass
    async with e.http.get(f"{e.url}/w?offset=-1&live=sse") as r:
        raw = await asyncio.wait_for(r.content.read(), 5)
    assert raw.endswith(b": rotate\n\n") and raw.startswith(b"event: control\n")


# --- read-time headers.offset on JSON state events (upstream 0.3.7 formatJsonMessages) ---
STATE_1 = (
    b'{"type":"inbox","key":"k","value":{"x":1.5,"s":"\xc3\xa9"},'
    b'"headers":{"txid":"7","operation":"insert"}}'
)
PLAIN = b'{"n":1,"headers":{"operation":1}}'  # non-string operation: untouched
CONTROL = b'{"headers":{"control":"snapshot-end","offset":"stale"}}'  # offset replaced in place
OTHERS = b'{"headers":[1]},{"headers":null},[{"headers":{"operation":"x"}}],"headers"'


def _ends(*stored: bytes) -> list[str]:
    """Each message's end offset: 5 bytes of framing plus its stored bytes (the store's rule)."""
    ends: list[str] = []
    pos = 0
    for data in stored:
        pos += 5 + len(data)
        ends.append(f"0000000000000000_{pos:016d}")
    return ends


async def _append(e: Env, path: str, items: bytes) -> str:
    h = {"content-type": "application/json"}
    async with e.http.post(f"{e.url}/{path}", data=b"[" + items + b"]", headers=h) as r:
        assert r.status == 204, await r.text()
        return r.headers["Stream-Next-Offset"]


async def test_state_events_read_with_their_offset(make: Factory) -> None:
    """Catch-up at both mounts: state events get `headers.offset`; stored bytes do not."""
    e = await make()
    async with e.http.put(f"{e.url}/probe/e1/main", headers={"content-type": "application/json"}):
        pass
    first = await _append(e, "v1/stream/probe/e1/main", STATE_1 + b"," + PLAIN)
    second = await _append(e, "probe/e1/main", CONTROL)
    third = await _append(e, "probe/e1/main", OTHERS)
    # offsets count the stored bytes exactly as appended (no offset in them)
    stored_bytes = [STATE_1 + b"," + PLAIN + b",", CONTROL + b",", OTHERS + b","]
    assert [first, second, third] == _ends(*stored_bytes)
    stored = await e.ds.store.read("probe/e1/main")
    assert [m.data for m in stored.messages] == stored_bytes
    state_1 = STATE_1[:-2] + f',"offset":"{first}"}}}}'.encode()
    control = f'{{"headers":{{"control":"snapshot-end","offset":"{second}"}}}}'.encode()
    expected = b"[" + b",".join([state_1, PLAIN, control, OTHERS]) + b"]"
    for mount in ("v1/stream/probe/e1/main", "probe/e1/main"):
        async with e.http.get(f"{e.url}/{mount}?offset=-1") as r:
            assert r.status == 200 and await r.read() == expected, mount
            assert r.headers["Stream-Next-Offset"] == third
        async with e.http.get(f"{e.url}/{mount}?offset={first}") as r:
            assert await r.read() == b"[" + control + b"," + OTHERS + b"]"
    # the stored bytes (and so every offset) are still as appended
    again = await e.ds.store.read("probe/e1/main")
    assert again.messages == stored.messages and again.tail == third


async def test_state_events_offset_in_long_poll_and_sse(make: Factory) -> None:
    e = await make(long_poll_timeout=10, compat_upstream=True)
    h = {"content-type": "application/json"}
    async with e.http.put(f"{e.url}/v1/stream/probe/e2/main", headers=h):
        pass
    first = await _append(e, "probe/e2/main", STATE_1)
    state_1 = STATE_1[:-2] + f',"offset":"{first}"}}}}'.encode()

    async def poll(mount: str) -> bytes:
        url = f"{e.url}/{mount}?offset={first}&live=long-poll"
        async with e.http.get(url) as r:
            assert r.status == 200
            return await r.read()

    polls = [asyncio.create_task(poll(m)) for m in ("v1/stream/probe/e2/main", "probe/e2/main")]
    deadline = time.monotonic() + 5
    while sum(c == ("opened", "probe/e2/main:long-poll") for c in e.seen.calls) < 2:
        assert time.monotonic() < deadline, e.seen.calls
        await asyncio.sleep(0.01)
    second = await _append(e, "probe/e2/main", CONTROL + b"," + PLAIN)
    control = f'{{"headers":{{"control":"snapshot-end","offset":"{second}"}}}}'.encode()
    for got in await asyncio.wait_for(asyncio.gather(*polls), 5):
        assert got == b"[" + control + b"," + PLAIN + b"]"

    for mount in ("v1/stream/probe/e2/main", "probe/e2/main"):
        async with e.http.get(f"{e.url}/{mount}?offset=-1&live=sse") as r:
            blocks = await read_sse(r, 3, 10)
        data = [b for b in blocks if b.startswith("event: data\n")]
        assert data == [
            "event: data\ndata:[" + state_1.decode() + "]",
            "event: data\ndata:[" + control.decode() + "," + PLAIN.decode() + "]",
        ], mount
