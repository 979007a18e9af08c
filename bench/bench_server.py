"""Benchmark the pull-wake server: publish -> SSE delivery latency and SSE capacity.

Starts a real `pullwake server` subprocess on loopback (file-backed SQLite,
WAL, synchronous=FULL), then:

1. latency: one SSE reader, messages sent one at a time, each to its own
   entity targeting the runner (spawned beforehand, untimed), so each makes
   one wake; the time from starting the `send` POST to the wake's `event:
   data` arriving (so it includes the fsync before the 200), p50/p99;
2. capacity: opens SSE readers in steps (one runner each) up to
   `--readers`; at each step it checks that keepalives keep flowing on every
   reader (no reader silent for more than 3 keepalive intervals) and measures
   delivery latency again while all readers are open.  Readers reconnect
   after each planned SSE rotation (`--rotate`, the server's default 60 s;
   a short one, e.g. 5, puts rotation storms inside the measured windows),
   and each step reports how many rotations happened in it.

The client runs in this process on the same cores as the server, so the
figures are conservative.  Everything is bounded by `--budget` seconds; the
script always stops the server and exits by itself.

    .venv/bin/python bench/bench_server.py [--readers 1000] [--rotate 60] [--budget 150]

The first line printed names the machine's load, so figures from a busy
machine can be told apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.procs import ServerProcess

H = {"electric-principal": "system:dev-local"}
P = "/_electric/runners"


@dataclass
class Reader:
    runner_id: str
    last_byte: float = 0.0
    max_gap: float = 0.0  # longest silence since `reset_gaps`
    keepalives: int = 0
    rotations: int = 0  # clean ends of the body (planned rotations) since `reset_gaps`
    connected: bool = False
    failed: str | None = None
    arrivals: dict[str, float] = field(default_factory=dict)  # subscription_id -> arrival

    def reset_gaps(self) -> None:
        self.max_gap = 0.0
        self.rotations = 0
        self.last_byte = time.perf_counter()


async def read_sse(http: aiohttp.ClientSession, base: str, r: Reader, stop: asyncio.Event) -> None:
    """Hold one SSE read open, reconnecting after each planned rotation."""
    offset = "now"
    while not stop.is_set():
        try:
            url = f"{base}/runners/{r.runner_id}/wake?offset={offset}&live=sse"
            async with http.get(url, headers=H) as resp:
                if resp.status != 200:
                    r.failed = f"HTTP {resp.status}"
                    return
                if not r.connected:  # after a rotation the reconnect gap counts as silence
                    r.last_byte = time.perf_counter()
                r.connected = True
                event = None
                async for raw in resp.content:
                    now = time.perf_counter()
                    r.max_gap = max(r.max_gap, now - r.last_byte)
                    r.last_byte = now
                    line = raw.decode().rstrip("\n")
                    if line.startswith(":"):
                        r.keepalives += 1
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "data":
                        for wake in json.loads(line[5:]):
                            r.arrivals.setdefault(wake["subscription_id"], now)
                    elif line.startswith("data:") and event == "control":
                        offset = json.loads(line[5:])["streamNextOffset"]
            r.rotations += 1  # the body ended cleanly: reconnect from `offset`
        except (aiohttp.ClientError, TimeoutError) as exc:
            if not stop.is_set():
                r.failed = f"{type(exc).__name__}: {exc}"
            return


@dataclass
class Latencies:
    """Per wake, in ms from the start of its send: delivery, and the 200 (its fsync)."""

    delivery: list[float]
    ack: list[float]

    def line(self) -> str:
        d, a = self.delivery, self.ack
        return (
            f"delivery p50 {pct(d, 50):.1f} ms  p99 {pct(d, 99):.1f} ms  max {max(d):.1f} ms "
            f"(of which the 200: p50 {pct(a, 50):.1f} ms  p99 {pct(a, 99):.1f} ms)"
        )


async def publish_and_measure(
    http: aiohttp.ClientSession, base: str, readers: list[Reader], count: int, seq0: int
) -> Latencies:
    """Send `count` messages round-robin over `readers`, one at a time, each to a fresh
    entity targeting the reader's runner (so each makes its own wake)."""
    sent: list[tuple[Reader, str, float]] = []
    acks: list[float] = []
    for i in range(count):
        r = readers[i % len(readers)]
        seq = seq0 + i
        entity = f"/bench/{r.runner_id}-{seq}"
        policy = {"targets": [{"type": "runner", "runnerId": r.runner_id}]}
        async with http.put(
            f"{base}/_electric/entities{entity}", json={"dispatch_policy": policy}, headers=H
        ) as resp:
            if resp.status != 201:
                raise RuntimeError(f"spawn answered {resp.status}")
        sub = f"runner:{r.runner_id}:{hashlib.sha256(entity.encode()).hexdigest()[:16]}"
        t0 = time.perf_counter()
        async with http.post(
            f"{base}/_electric/entities{entity}/send", json={"payload": {"seq": seq}}, headers=H
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"send answered {resp.status}")
        acks.append((time.perf_counter() - t0) * 1000)
        sent.append((r, sub, t0))
        await asyncio.sleep(0.01)
    deadline = time.perf_counter() + 5
    while time.perf_counter() < deadline and any(sub not in r.arrivals for r, sub, _ in sent):
        await asyncio.sleep(0.01)
    lost = sum(1 for r, sub, _ in sent if sub not in r.arrivals)
    if lost:
        raise RuntimeError(f"{lost} of {count} wakes not delivered within 5 s")
    return Latencies([(r.arrivals[sub] - t0) * 1000 for r, sub, t0 in sent], acks)


def rss_mib(pid: int) -> float:
    """Resident memory of the server process (Linux /proc), 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def bench(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.budget
    tmp = Path(tempfile.mkdtemp(prefix="pullwake-bench-"))
    srv = ServerProcess(
        tmp,
        keepalive=args.keepalive,
        long_poll_timeout=20,
        extra=["--sse-rotate-seconds", f"{args.rotate:g}"],
    )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{os.cpu_count()} cores, load average {load}; server keepalive {args.keepalive:g} s, "
        f"SSE rotation {args.rotate:g} s, client and server on this machine",
        flush=True,
    )
    srv.start()
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    readers: list[Reader] = []
    seq = 0
    held = 0
    try:
        conn = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=args.keepalive * 5)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:

            async def add_readers(n: int) -> None:
                start = len(readers)
                for i in range(start, start + n):
                    rid = f"bench-{i}"
                    reg = {"id": rid, "label": rid}
                    async with http.post(f"{srv.url}{P}", json=reg, headers=H) as resp:
                        assert resp.status in (200, 201), resp.status
                    r = Reader(rid)
                    readers.append(r)
                    tasks.append(asyncio.create_task(read_sse(http, srv.url, r, stop)))
                t_end = time.perf_counter() + 20
                while time.perf_counter() < t_end and not all(r.connected for r in readers):
                    await asyncio.sleep(0.05)

            # 1. latency with a single reader
            etype = {"name": "bench", "description": "bench_server"}
            async with http.post(
                f"{srv.url}/_electric/entity-types", json=etype, headers=H
            ) as resp:
                assert resp.status == 201, resp.status
            await add_readers(1)
            await publish_and_measure(http, srv.url, readers, 20, seq)  # warm-up
            seq += 20
            lat = await publish_and_measure(http, srv.url, readers, args.samples, seq)
            seq += args.samples
            print(f"publish->SSE, 1 reader, {len(lat.ack)} wakes: {lat.line()}", flush=True)

            # 2. capacity, in steps
            step = max(1, args.readers // 4)
            while len(readers) < args.readers and time.monotonic() < deadline - 15:
                t0 = time.perf_counter()
                await add_readers(min(step, args.readers - len(readers)))
                opened = time.perf_counter() - t0
                for r in readers:
                    r.reset_gaps()
                window = max(3 * args.keepalive, 3.0)
                await asyncio.sleep(window)  # let keepalives flow on every reader
                failed = [r for r in readers if r.failed]
                silent = [
                    r
                    for r in readers
                    if r.max_gap > 3 * args.keepalive
                    or time.perf_counter() - r.last_byte > 3 * args.keepalive
                ]
                sample = readers[:: max(1, len(readers) // 100)]
                lat = await publish_and_measure(http, srv.url, sample, args.samples, seq)
                seq += args.samples
                worst_gap = max(r.max_gap for r in readers)
                rotations = sum(r.rotations for r in readers)
                ok = not failed and not silent and pct(lat.delivery, 99) < args.p99_ms
                print(
                    f"{len(readers):5d} SSE readers (opened in {opened:.1f} s): "
                    f"failed {len(failed)}, silent {len(silent)}, "
                    f"worst keepalive gap {worst_gap:.2f} s (interval {args.keepalive:g} s), "
                    f"{rotations} rotations; {lat.line()}; "
                    f"server RSS {rss_mib(srv.pid):.0f} MiB"
                    f"{'' if ok else '  <- goal missed'}",
                    flush=True,
                )
                if failed:
                    print(f"   first failure: {failed[0].failed}")
                if not ok:
                    break
                held = len(readers)
            print(
                f"held {held} concurrent SSE readers with keepalives flowing and "
                f"p99 delivery < {args.p99_ms:g} ms (goal {args.readers})",
                flush=True,
            )
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if held >= args.readers else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=1000, help="SSE readers goal (default 1000)")
    parser.add_argument("--samples", type=int, default=200, help="wakes per latency run (200)")
    parser.add_argument("--keepalive", type=float, default=1.0, help="server keepalive s (1.0)")
    parser.add_argument(
        "--rotate", type=float, default=60.0, help="server SSE rotation s (60, its default)"
    )
    parser.add_argument("--p99-ms", type=float, default=100.0, help="p99 delivery goal (100)")
    parser.add_argument("--budget", type=float, default=150.0, help="time limit, s (150)")
    args = parser.parse_args()
    try:
        return asyncio.run(asyncio.wait_for(bench(args), args.budget + 30))
    except TimeoutError:
        print("benchmark ran out of time", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
