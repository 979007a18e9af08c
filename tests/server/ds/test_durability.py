"""kill -9 of a real process mid-write loses nothing it acknowledged (appends, acks, wakes)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pullwake.server.ds.store import DSStore, format_body
from pullwake.server.ds.subscriptions import SubscriptionManager
from tests.support.procs import Proc, free_port, wait_until

CHILD = r"""
import asyncio, json, sys
from pullwake.server.ds.store import DSStore
from pullwake.server.ds.subscriptions import SubscriptionManager

async def main() -> None:
    s = DSStore(sys.argv[1])
    m = SubscriptionManager(s)
    await m.start()
    await s.create("w", content_type="application/json")
    await s.create("e", content_type="application/json")
    await m.put("sub", {"type": "pull-wake", "streams": ["e"], "wake_stream": "w"})
    i = 0
    while True:
        tail = await s.append_json("e", [i])
        print(json.dumps({"append": i, "tail": tail}), flush=True)
        if i % 5 == 4:
            c = await m.claim("sub", "x")
            t = c["streams"][0]["tail_offset"]
            req = {"wake_id": c["wake_id"], "generation": c["generation"], "done": True,
                   "acks": [{"path": "e", "offset": t}]}
            await m.ack("sub", c["token"], req)
            print(json.dumps({"acked": t, "gen": c["generation"]}), flush=True)
        i += 1

asyncio.run(main())
"""


def run_and_kill(db: Path) -> list[dict[str, object]]:
    """Run the writer child until 60 appends were acknowledged, then SIGKILL it."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True
    )
    lines: list[dict[str, object]] = []
    deadline = time.monotonic() + 60
    try:
        assert child.stdout is not None
        while sum("append" in x for x in lines) < 60:
            assert time.monotonic() < deadline, "child too slow"
            line = child.stdout.readline()
            assert line, "child exited"
            lines.append(json.loads(line))
        child.send_signal(signal.SIGKILL)  # mid-loop, no shutdown of any kind
    finally:
        child.kill()
        child.wait(10)
    return lines


async def test_kill9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "ds.db"
    lines = await asyncio.to_thread(run_and_kill, db)
    appended = [x["append"] for x in lines if "append" in x]
    acked = [x for x in lines if "acked" in x]
    store = DSStore(str(db))
    subs = SubscriptionManager(store)
    try:
        await subs.start()
        values = json.loads(format_body((await store.read("e")).messages, True))
        assert values[: len(appended)] == appended  # every acknowledged append is there
        st = subs.state("sub")
        assert st is not None
        assert st.generation >= int(str(acked[-1]["gen"]))
        assert st.streams[0].acked_offset >= str(acked[-1]["acked"])
        events = json.loads(format_body((await store.read("w")).messages, True))
        gens = [e["generation"] for e in events]
        assert gens == list(range(1, len(gens) + 1))  # one event per generation, none lost
        assert gens[-1] == st.generation  # the event is written with its generation
    finally:
        subs.shutdown()
        store.close()


def _http(method: str, url: str, body: object = None, token: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else dict(resp.headers))
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _ds_server(db: Path, port: int, log: Path) -> Proc:
    argv = [sys.executable, "-m", "pullwake.server.ds", "--port", str(port), "--db", str(db)]
    proc = Proc(argv, log)
    proc.start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _http("GET", f"{url}/v1/stream/__ds/jwks.json")[0] == 200, 20, what="up")
    return proc


def test_http_kill9_keeps_acknowledged_appends_and_claims(tmp_path: Path) -> None:
    """Over HTTP: every 204'd append and the claim (token included) survive kill -9."""
    db, port = tmp_path / "ds.db", free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _ds_server(db, port, tmp_path / "a.log")
    try:
        for p in ("runners/r1/wake", "probe/e1/main"):
            assert _http("PUT", f"{url}/{p}")[0] == 201
        sid = "runner:r1:23c1232b5a83aee4"
        spec = {"type": "pull-wake", "streams": ["probe/e1/main"], "wake_stream": "runners/r1/wake"}
        assert _http("PUT", f"{url}/__ds/subscriptions/{sid}", spec)[0] == 201
        acked = []
        for i in range(30):
            status, headers = _http("POST", f"{url}/probe/e1/main", {"i": i})
            assert status == 204
            acked.append(headers["Stream-Next-Offset"])
        status, claim = _http("POST", f"{url}/__ds/subscriptions/{sid}/claim", {"worker": "r1"})
        assert status == 200 and claim["generation"] == 1
        proc.signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.stop()

    proc = _ds_server(db, port, tmp_path / "b.log")
    try:
        status, items = _http("GET", f"{url}/probe/e1/main?offset=-1")
        assert status == 200 and items == [{"i": i} for i in range(30)]
        status, sub = _http("GET", f"{url}/__ds/subscriptions/{sid}")
        assert status == 200 and sub["streams"][0]["path"] == "probe/e1/main"
        status, again = _http("POST", f"{url}/__ds/subscriptions/{sid}/claim", {"worker": "r2"})
        assert status == 409 and json.loads(again)["error"]["current_holder"] == "r1"
        done = {
            "wake_id": claim["wake_id"],
            "generation": 1,
            "acks": [{"path": "probe/e1/main", "offset": acked[-1]}],
            "done": True,
        }
        status, res = _http("POST", f"{url}/__ds/subscriptions/{sid}/ack", done, claim["token"])
        assert (status, res) == (200, {"ok": True, "next_wake": False})
        status, events = _http("GET", f"{url}/runners/r1/wake?offset=-1")
        assert [e["generation"] for e in events] == [1]
    finally:
        proc.stop()


async def test_kill9_during_concurrent_appends_loses_no_acknowledged_one(tmp_path: Path) -> None:
    """Group commit: 16 clients append at once (their appends share commits); kill -9
    mid-stream; after a restart every append that got its 204 is there, in order, at
    the offset it was given."""
    import aiohttp

    db, port = tmp_path / "ds.db", free_port()
    url = f"http://127.0.0.1:{port}/v1/stream"
    proc = await asyncio.to_thread(_ds_server, db, port, tmp_path / "a.log")
    clients = 16
    acked: list[list[tuple[int, str]]] = [[] for _ in range(clients)]
    killed = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as http:
            for c in range(clients):
                async with http.put(f"{url}/k/{c}", headers={"content-type": "application/json"}):
                    pass

            async def client(c: int) -> None:
                n = 0
                while not killed.is_set():
                    try:
                        async with http.post(
                            f"{url}/k/{c}",
                            data=json.dumps({"n": n}),
                            headers={"content-type": "application/json"},
                        ) as r:
                            if r.status != 204:
                                return
                            acked[c].append((n, r.headers["Stream-Next-Offset"]))
                    except aiohttp.ClientError:
                        return  # the server died under this request: not acknowledged
                    n += 1

            async def killer() -> None:
                while sum(map(len, acked)) < 400:
                    await asyncio.sleep(0.01)
                proc.signal(signal.SIGKILL)
                killed.set()

            await asyncio.wait_for(
                asyncio.gather(killer(), *(client(c) for c in range(clients))), 60
            )
        proc.wait(10)
    finally:
        proc.stop()
    proc = await asyncio.to_thread(_ds_server, db, port, tmp_path / "b.log")
    try:
        for c in range(clients):
            status, items = await asyncio.to_thread(_http, "GET", f"{url}/k/{c}?offset=-1")
            assert status == 200
            values = [x["n"] for x in items]
            mine = [n for n, _ in acked[c]]
            assert values[: len(mine)] == mine, c  # every 204'd append, in order
            assert len(values) <= len(mine) + 1  # at most the one in flight beyond them
            if acked[c]:
                n, offset = acked[c][-1]
                status, rest = await asyncio.to_thread(_http, "GET", f"{url}/k/{c}?offset={offset}")
                assert [x["n"] for x in rest] == values[n + 1 :]  # its offset is its place
    finally:
        proc.stop()
