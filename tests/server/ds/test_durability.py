"""kill -9 of a real process mid-write loses nothing it acknowledged (appends, acks, wakes)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from pullwake.server.ds.store import DSStore, format_body
from pullwake.server.ds.subscriptions import SubscriptionManager

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
