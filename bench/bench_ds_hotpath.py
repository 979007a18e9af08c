"""Quick hot-path bench of the Durable Streams server alone (issue 14): concurrent appends
and 1,000-reader fan-out against a real `python -m pullwake.server.ds` subprocess.

1. appends: `--clients` clients, each on its own JSON stream, POST one small message at
   a time for `--seconds`; appends/s and ack latency p50/p99 (each 2xx is on disk);
2. fan-out: `--readers` SSE readers, one per stream, waiting at the tail; one round
   appends one message to every stream (`--writers` concurrent POSTs) and times each
   message from the start of its POST to its `event: data` at the reader: p50/p99, and
   the round time (first POST -> last delivery).  Every message must arrive exactly once.

`--profile FILE` runs the server under yappi (CPU clock, all threads; needs yappi
importable, e.g. `pip install --target /tmp/prof yappi` and `--pythonpath /tmp/prof`)
and writes the top functions by own time to FILE.  The client shares the cores with
the server, so figures are conservative and noisy on a busy box; the first line
prints the load average.

    .venv/bin/python bench/bench_ds_hotpath.py [--quick] [--profile out.txt]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.procs import free_port  # noqa: E402

PROFILER = r"""
import atexit, runpy, sys, yappi
out = sys.argv.pop(1)
yappi.set_clock_type("cpu")
yappi.start()
def dump() -> None:
    yappi.stop()
    with open(out, "w") as f:
        st = yappi.get_func_stats()
        st.sort("tsub")
        st.print_all(out=f, columns={0: ("name", 90), 1: ("ncall", 9), 2: ("tsub", 8),
                                     3: ("ttot", 8)})
        yappi.get_thread_stats().print_all(out=f)
atexit.register(dump)
sys.argv[0] = "pullwake.server.ds"
runpy.run_module("pullwake.server.ds", run_name="__main__", alter_sys=True)
"""


def cpu_seconds(pid: int) -> float:
    """The process's user+system CPU so far (robust to a busy box, unlike rates)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def create_streams(http: aiohttp.ClientSession, base: str, prefix: str, n: int) -> None:
    """PUT `n` JSON streams `bench/<prefix><i>`, 64 at a time."""
    sem = asyncio.Semaphore(64)

    async def create(i: int) -> None:
        url = f"{base}/v1/stream/bench/{prefix}{i}"
        async with sem, http.put(url, headers={"content-type": "application/json"}) as r:
            assert r.status in (200, 201), r.status

    await asyncio.gather(*(create(i) for i in range(n)))


async def idle(base: str, pid: int, readers: int, hold: float) -> str:
    """`readers` idle SSE readers, one per stream: server RSS and CPU while they wait."""
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    rss0 = rss_mib(pid)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:
        await create_streams(http, base, "idle", readers)
        sem = asyncio.Semaphore(64)
        connected = 0

        async def reader(i: int) -> None:
            nonlocal connected
            async with sem:
                resp = await http.get(f"{base}/v1/stream/bench/idle{i}?offset=now&live=sse")
            assert resp.status == 200
            connected += 1
            async for _ in resp.content:
                pass

        tasks = [asyncio.create_task(reader(i)) for i in range(readers)]
        deadline = time.monotonic() + 120
        while connected < readers and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(hold)
        cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100
        rss = rss_mib(pid)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return (
        f"idle: {connected}/{readers} SSE readers open: server RSS {rss:.0f} MiB "
        f"(before them {rss0:.0f} MiB), CPU {cpu:.1f} % over {hold:.0f} s"
    )


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p / 100))] if s else float("nan")


async def wait_up(base: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit("server exited")
            try:
                async with http.get(f"{base}/v1/stream/__ds/jwks.json") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("server did not come up")


async def appends(base: str, clients: int, seconds: float) -> tuple[float, list[float]]:
    conn = aiohttp.TCPConnector(limit=0)
    lat: list[float] = []
    async with aiohttp.ClientSession(connector=conn) as http:
        for i in range(clients):
            async with http.put(
                f"{base}/v1/stream/bench/a{i}", headers={"content-type": "application/json"}
            ) as r:
                assert r.status in (200, 201), r.status
        stop = time.perf_counter() + seconds

        async def client(i: int) -> int:
            n = 0
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                async with http.post(
                    f"{base}/v1/stream/bench/a{i}",
                    data=json.dumps({"i": n, "pad": "x" * 100}),
                    headers={"content-type": "application/json"},
                ) as r:
                    assert r.status == 204, r.status
                lat.append((time.perf_counter() - t0) * 1000)
                n += 1
            return n

        t0 = time.perf_counter()
        total = sum(await asyncio.gather(*(client(i) for i in range(clients))))
        return total / (time.perf_counter() - t0), lat


async def fanout(base: str, readers: int, writers: int, rounds: int) -> list[str]:
    conn = aiohttp.TCPConnector(limit=0)
    out = []
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:
        await create_streams(http, base, "f", readers)
        arrivals: dict[tuple[int, int], float] = {}
        dupes = 0
        connected = 0
        stop = asyncio.Event()

        async def reader(i: int) -> None:
            nonlocal dupes, connected
            url = f"{base}/v1/stream/bench/f{i}?offset=now&live=sse"
            async with http.get(url) as resp:
                assert resp.status == 200
                connected += 1
                event = None
                async for raw in resp.content:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "data":
                        now = time.perf_counter()
                        for item in json.loads(line[5:]):
                            k = (i, item["r"])
                            if k in arrivals:
                                dupes += 1
                            arrivals[k] = now
                    if stop.is_set():
                        return

        tasks = [asyncio.create_task(reader(i)) for i in range(readers)]
        deadline = time.monotonic() + 60
        while connected < readers and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        for rnd in range(rounds):
            starts: dict[int, float] = {}
            q: asyncio.Queue[int] = asyncio.Queue()
            for i in range(readers):
                q.put_nowait(i)

            async def writer(q: asyncio.Queue[int], starts: dict[int, float], rnd: int) -> None:
                while not q.empty():
                    i = q.get_nowait()
                    starts[i] = time.perf_counter()
                    async with http.post(
                        f"{base}/v1/stream/bench/f{i}",
                        data=json.dumps({"r": rnd}),
                        headers={"content-type": "application/json"},
                    ) as r:
                        assert r.status == 204

            t0 = time.perf_counter()
            await asyncio.gather(*(writer(q, starts, rnd) for _ in range(writers)))
            deadline = time.monotonic() + 30
            while (
                sum((i, rnd) in arrivals for i in range(readers)) < readers
                and time.monotonic() < deadline
            ):
                await asyncio.sleep(0.02)
            got = [arrivals[(i, rnd)] - starts[i] for i in range(readers) if (i, rnd) in arrivals]
            last = max(arrivals[(i, rnd)] for i in range(readers) if (i, rnd) in arrivals)
            ms = [x * 1000 for x in got]
            out.append(
                f"fan-out round {rnd}: {len(got)}/{readers} delivered, dupes {dupes}, "
                f"p50 {pct(ms, 50):.1f} ms p99 {pct(ms, 99):.1f} ms, "
                f"round {last - t0:.2f} s"
            )
            await asyncio.sleep(0.5)
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return out


def start_server(
    port: int, profile: str | None, pythonpath: str
) -> tuple[subprocess.Popen[bytes], Any]:
    """The server in a fresh directory (so `--pythonpath` can put another checkout first)."""
    tmp = tempfile.mkdtemp(prefix="dsbench-")
    args = ["--port", str(port), "--db", f"{tmp}/ds.db"]
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    if profile:
        argv = [sys.executable, "-c", PROFILER, str(Path(profile).resolve()), *args]
    else:
        argv = [sys.executable, "-m", "pullwake.server.ds", *args]
    log = open(f"{tmp}/server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    return proc, log


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--readers", type=int, default=1000)
    ap.add_argument("--writers", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="4 s of appends, 2 rounds")
    ap.add_argument("--profile", metavar="FILE")
    ap.add_argument("--pythonpath", default="", help="extra PYTHONPATH for the server")
    ap.add_argument("--skip", choices=["appends", "fanout"], default=None)
    ap.add_argument("--idle", type=int, default=0, help="then N idle SSE readers: RSS, CPU")
    ap.add_argument("--hold", type=float, default=10.0, help="s to watch the idle readers")
    a = ap.parse_args()
    if a.quick:
        a.seconds, a.rounds = 4.0, 2
    print(f"load average: {os.getloadavg()}", flush=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc, log = start_server(port, a.profile, a.pythonpath)
    try:
        await wait_up(base, proc)
        if a.skip != "appends":
            cpu0 = cpu_seconds(proc.pid)
            rate, lat = await appends(base, a.clients, a.seconds)
            cpu = cpu_seconds(proc.pid) - cpu0
            print(
                f"appends: {a.clients} clients on {a.clients} streams: {rate:.0f}/s, "
                f"ack p50 {pct(lat, 50):.1f} ms p99 {pct(lat, 99):.1f} ms, "
                f"server CPU {cpu * 1000 / max(1, len(lat)):.2f} ms/append",
                flush=True,
            )
        if a.skip != "fanout":
            cpu0 = cpu_seconds(proc.pid)
            for line in await fanout(base, a.readers, a.writers, a.rounds):
                print(line, flush=True)
            print(f"fan-out: server CPU {cpu_seconds(proc.pid) - cpu0:.2f} s in all", flush=True)
        if a.idle:
            print(await idle(base, proc.pid, a.idle, a.hold), flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


if __name__ == "__main__":
    asyncio.run(main())
