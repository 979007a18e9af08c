"""pullwake's Durable Streams server vs the reference (npm @durable-streams/server 0.3.7).

Starts each server itself (bench/ds_servers.py: pullwake's `python -m pullwake.server.ds`,
SQLite WAL synchronous=FULL; the reference through conformance/reference-server.mjs, its
file-backed store, which fdatasyncs each append's segment file before answering), on
loopback, one at a time, a fresh one for every phase; the same Python client drives both.
Runs are interleaved: for every repeat and phase, pullwake then the reference (the order
flips on odd repeats).  Phases:

- writes : append -> SSE delivery, 1 reader (one append at a time, from the POST's start
           to the item arriving on the reader); sequential appends/s on 1 stream; N clients
           on N streams, appends/s and per-append p99;
- fanout : R readers on R streams (the lean reader of ds_sse_client.py), rounds of one
           append per stream (16 appenders): delivery p99 and time to deliver a round;
           then the same readers idle: server CPU over --window seconds;
- idle   : I idle SSE readers on I streams held by a child process (so the bench's own
           client is not measured with them): server RSS, CPU, and the bytes/s the readers
           receive (keepalive comments and control events, chunk framing included).

Every append is accounted for: `refused` = answered non-2xx or failed; `lost` = answered
2xx but never delivered (fanout, latency: to its SSE reader within 5 s) or missing from a
catch-up read of its stream afterwards (sequential, concurrent).  The bench exits 1 if
pullwake refused or lost any.  Both servers use a 30 s long-poll timeout (each one's
default); pullwake's keepalive comment interval is its default 15 s.

    .venv/bin/python bench/bench_ds_sidebyside.py            # 3 repeats, full sizes (~25 min)
    .venv/bin/python bench/bench_ds_sidebyside.py --quick    # 1 repeat, smaller sizes
    .venv/bin/python bench/bench_ds_sidebyside.py --json out.json --servers pullwake

The table shows the median over repeats; `--json` has every run.  Client and servers share
this machine's cores: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.ds_servers import (
    NAMES,
    ServerProc,
    export_rev,
    install_cleanup,
    reference_available,
    stop_all,
)
from bench.ds_sse_client import LeanSSE, close_readers, open_readers

JSON_CT = {"content-type": "application/json"}
PREFIX = "/v1/stream/bench"
DELIVERY_TIMEOUT_S = 5.0
HERE = Path(__file__).resolve().parent


@dataclass
class Tally:
    """Appends of one phase on one server, summed over repeats."""

    sent: int = 0
    refused: int = 0
    lost: int = 0
    ghost: int = 0  # refused, yet delivered to a reader (seen on the reference)
    first_refusal: str | None = None


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str
    lower_is_better: bool
    phase: str


@dataclass
class Results:
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    tallies: dict[str, dict[str, Tally]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def put(self, key: str, server: str, value: float) -> None:
        self.values.setdefault(key, {}).setdefault(server, []).append(value)

    def tally(self, phase: str, server: str) -> Tally:
        return self.tallies.setdefault(phase, {}).setdefault(server, Tally())


def rows(a: argparse.Namespace) -> list[Row]:
    c, r, i = a.clients, f"{a.readers:,}", f"{a.idle_readers:,}"
    b = f"{a.connect_budget:g} s"
    return [
        Row("latency_p99", "append -> SSE delivery p99, 1 reader", "ms", True, "writes"),
        Row("sequential_rate", "sequential appends/s, 1 stream", "/s", False, "writes"),
        Row("concurrent_rate", f"{c} clients on {c} streams: appends/s", "/s", False, "writes"),
        Row("concurrent_p99", f"{c} clients on {c} streams: append p99", "ms", True, "writes"),
        Row("fanout_p99", f"{r} readers on {r} streams: delivery p99", "ms", True, "fanout"),
        Row("fanout_round", f"{r} readers: time to deliver a round", "s", True, "fanout"),
        Row("fanout_idle_cpu", f"{r} idle readers: server CPU", "%", True, "fanout"),
        Row("idle_connected", f"{i} idle SSE readers: connected in {b}", "", False, "idle"),
        Row("idle_rss", f"{i} idle SSE readers: server RSS", "MiB", True, "idle"),
        Row("idle_cpu", f"{i} idle SSE readers: server CPU", "%", True, "idle"),
        Row("idle_bytes", f"{i} idle SSE readers: keepalive bytes/s", "B/s", True, "idle"),
    ]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else 0.0


async def bounded(n: int, jobs: Iterable[Awaitable[None]]) -> None:
    """Await the jobs with at most `n` in flight."""
    gate = asyncio.Semaphore(n)

    async def one(job: Awaitable[None]) -> None:
        async with gate:
            await job

    await asyncio.gather(*(one(j) for j in jobs))


# --- the client --------------------------------------------------------------------------
class Client:
    """The same aiohttp client for both servers: create, append (tallied), catch-up read."""

    def __init__(self, http: aiohttp.ClientSession, srv: ServerProc, tally: Tally) -> None:
        self.http, self.srv, self.t = http, srv, tally

    async def create(self, path: str) -> None:
        async with self.http.put(self.srv.base + path, headers=JSON_CT) as r:
            if r.status not in (200, 201):
                raise RuntimeError(f"{self.srv.name}: create {path} answered {r.status}")

    async def create_many(self, paths: list[str], concurrency: int = 32) -> None:
        await bounded(concurrency, (self.create(p) for p in paths))

    async def append(self, path: str, item: dict[str, int]) -> bool:
        """POST one JSON item; True if acknowledged (2xx)."""
        self.t.sent += 1
        try:
            async with self.http.post(
                self.srv.base + path, data=json.dumps(item), headers=JSON_CT
            ) as r:
                body = await r.read()
                if 200 <= r.status < 300:
                    return True
                why = f"HTTP {r.status} {body[:60]!r}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        self.t.refused += 1
        self.t.first_refusal = self.t.first_refusal or why
        return False

    async def read_all(self, path: str) -> list[Any]:
        """Every item of the stream by catch-up reads."""
        items: list[Any] = []
        offset = "-1"
        for _ in range(10_000):
            async with self.http.get(f"{self.srv.base}{path}?offset={offset}") as r:
                if r.status != 200:
                    raise RuntimeError(f"{self.srv.name}: read {path} answered {r.status}")
                got = await r.json(content_type=None)
                items.extend(got)
                offset = r.headers["Stream-Next-Offset"]
                if r.headers.get("Stream-Up-To-Date") == "true" or not got:
                    return items
        raise RuntimeError(f"{self.srv.name}: read {path} never up to date")

    async def count_lost(self, path: str, accepted: set[int]) -> int:
        present = {item["i"] for item in await self.read_all(path) if isinstance(item, dict)}
        return len(accepted - present)


class Arrivals:
    """Arrival times of items on lean readers, keyed (stream, i); futures for waiters."""

    def __init__(self) -> None:
        self.at: dict[tuple[int, int], float] = {}
        self.waiting: dict[tuple[int, int], asyncio.Future[float]] = {}

    def on_items(self, reader: LeanSSE, items: list[Any], now: float) -> None:
        for item in items:
            if isinstance(item, dict) and "s" in item and "i" in item:
                key = (item["s"], item["i"])
                self.at.setdefault(key, now)
                fut = self.waiting.pop(key, None)
                if fut is not None and not fut.done():
                    fut.set_result(now)

    async def wait(self, key: tuple[int, int], timeout: float) -> float | None:
        if key in self.at:
            return self.at[key]
        fut = self.waiting.setdefault(key, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None


def lean(srv: ServerProc, path: str, arrivals: Arrivals, stream: int) -> LeanSSE:
    del stream  # items carry their stream index
    return LeanSSE("127.0.0.1", srv.port, path, on_items=arrivals.on_items)


# --- phases ------------------------------------------------------------------------------
async def phase_writes(
    a: argparse.Namespace, http: aiohttp.ClientSession, srv: ServerProc, res: Results
) -> None:
    c = Client(http, srv, res.tally("writes", srv.name))
    # 1. append -> SSE delivery, one reader
    path = f"{PREFIX}/latency"
    await c.create(path)
    arrivals = Arrivals()
    tasks = await open_readers([lean(srv, path, arrivals, 0)])
    delivery: list[float] = []
    try:
        for i in range(a.latency_count):
            t0 = time.perf_counter()
            if not await c.append(path, {"s": 0, "i": i}):
                continue
            at = await arrivals.wait((0, i), DELIVERY_TIMEOUT_S)
            if at is None:
                c.t.lost += 1
            else:
                delivery.append((at - t0) * 1000)
    finally:
        await close_readers(tasks)
    res.put("latency_p99", srv.name, pct(delivery, 99))
    # 2. sequential appends on one stream
    path = f"{PREFIX}/sequential"
    await c.create(path)
    accepted: set[int] = set()
    t0 = time.perf_counter()
    for i in range(a.sequential_count):
        if await c.append(path, {"s": 0, "i": i}):
            accepted.add(i)
    res.put("sequential_rate", srv.name, a.sequential_count / (time.perf_counter() - t0))
    c.t.lost += await c.count_lost(path, accepted)
    # 3. N clients, one stream each, appending as fast as they are answered
    paths = [f"{PREFIX}/concurrent-{k}" for k in range(a.clients)]
    await c.create_many(paths)
    lat: list[float] = []
    acc: list[set[int]] = [set() for _ in paths]

    async def client(k: int) -> None:
        for i in range(a.per_client):
            s = time.perf_counter()
            if await c.append(paths[k], {"s": k, "i": i}):
                acc[k].add(i)
                lat.append((time.perf_counter() - s) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(a.clients)))
    elapsed = time.perf_counter() - t0
    res.put("concurrent_rate", srv.name, a.clients * a.per_client / elapsed)
    res.put("concurrent_p99", srv.name, pct(lat, 99))
    for k, p in enumerate(paths):
        c.t.lost += await c.count_lost(p, acc[k])


async def phase_fanout(
    a: argparse.Namespace, http: aiohttp.ClientSession, srv: ServerProc, res: Results
) -> None:
    c = Client(http, srv, res.tally("fanout", srv.name))
    paths = [f"{PREFIX}/fanout-{k}" for k in range(a.readers)]
    await c.create_many(paths)
    arrivals = Arrivals()
    readers = [lean(srv, p, arrivals, k) for k, p in enumerate(paths)]
    t_connect = time.perf_counter()
    tasks = await open_readers(readers, budget=a.connect_budget)
    try:
        broken = [r.failed or "not connected" for r in readers if r.failed]
        if broken:
            raise RuntimeError(f"{len(broken)} of {a.readers} readers failed: {broken[0]}")
        res.notes.append(
            f"{srv.name}: {a.readers:,} fanout readers connected in "
            f"{time.perf_counter() - t_connect:.1f} s"
        )
        delivery: list[float] = []
        rounds: list[float] = []
        for rnd in range(a.rounds):
            sent_at: dict[int, float] = {}
            refused: set[int] = set()
            t_round = time.perf_counter()

            async def one(k: int, rnd: int, sent_at: dict[int, float], refused: set[int]) -> None:
                t0 = time.perf_counter()
                if await c.append(paths[k], {"s": k, "i": rnd}):
                    sent_at[k] = t0
                else:
                    refused.add(k)

            jobs = (one(k, rnd, sent_at, refused) for k in range(a.readers))
            await bounded(a.clients, jobs)
            deadline = time.perf_counter() + DELIVERY_TIMEOUT_S
            while time.perf_counter() < deadline and any(
                (k, rnd) not in arrivals.at for k in sent_at
            ):
                await asyncio.sleep(0.02)
            last = t_round
            for k, t0 in sent_at.items():
                at = arrivals.at.get((k, rnd))
                if at is None:
                    c.t.lost += 1
                else:
                    delivery.append((at - t0) * 1000)
                    last = max(last, at)
            c.t.ghost += sum(1 for k in refused if (k, rnd) in arrivals.at)
            rounds.append(last - t_round)
        res.put("fanout_p99", srv.name, pct(delivery, 99))
        res.put("fanout_round", srv.name, statistics.mean(rounds))
        await asyncio.sleep(2.0)  # settle: the last deliveries' reads are over
        cpu0, t0 = srv.cpu_seconds(), time.perf_counter()
        await asyncio.sleep(a.window)
        cpu = srv.cpu_seconds() - cpu0
        res.put("fanout_idle_cpu", srv.name, 100 * cpu / (time.perf_counter() - t0))
        dropped = sum(1 for r in readers if r.ended)
        if dropped:
            res.notes.append(f"{srv.name}: {dropped} of {a.readers} fanout readers ended early")
    finally:
        await close_readers(tasks)


async def phase_idle(
    a: argparse.Namespace, http: aiohttp.ClientSession, srv: ServerProc, res: Results
) -> None:
    c = Client(http, srv, res.tally("idle", srv.name))
    prefix = f"{PREFIX}/idle-"
    await c.create_many([f"{prefix}{k}" for k in range(a.idle_readers)])
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "ds_sse_client.py"),
        "--port", str(srv.port), "--prefix", prefix, "--count", str(a.idle_readers),
        "--connect-budget", f"{a.connect_budget:g}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    try:
        t_connect = time.perf_counter()
        line = await asyncio.wait_for(child.stdout.readline(), a.connect_budget + 60)
        ready = json.loads(line)
        res.put("idle_connected", srv.name, ready["ready"])
        if ready["failed"]:
            res.notes.append(
                f"{srv.name}: {ready['failed']:,} of {a.idle_readers:,} idle readers not "
                f"connected ({ready['first_error']}); this run's RSS/CPU/bytes are left out "
                f"of the table"
            )
        else:
            res.notes.append(
                f"{srv.name}: {a.idle_readers:,} idle readers connected in "
                f"{time.perf_counter() - t_connect:.1f} s"
            )
        await asyncio.sleep(2.0)
        child.stdin.write(b"window\n")
        await child.stdin.drain()
        cpu0, t0 = srv.cpu_seconds(), time.perf_counter()
        await asyncio.sleep(a.window)
        child.stdin.write(b"report\n")
        await child.stdin.drain()
        cpu = srv.cpu_seconds() - cpu0
        wall = time.perf_counter() - t0
        rss = srv.rss_mib()
        rep = json.loads(await asyncio.wait_for(child.stdout.readline(), 60))
        figures = {
            "idle_rss": rss,
            "idle_cpu": 100 * cpu / wall,
            "idle_bytes": rep["bytes"] / rep["seconds"],
        }
        if ready["failed"]:  # not comparable with full runs: kept out of the medians
            shown = ", ".join(f"{k} {v:,.1f}" for k, v in figures.items())
            res.notes.append(f"{srv.name}: with {ready['ready']:,} idle readers: {shown}")
        else:
            for k, v in figures.items():
                res.put(k, srv.name, v)
        if rep["alive"] != ready["ready"]:
            res.notes.append(
                f"{srv.name}: {ready['ready'] - rep['alive']} idle readers ended in the window"
            )
    except BaseException:
        child.kill()  # interrupted or failed: do not wait for its readers to close
        raise
    finally:
        with contextlib.suppress(Exception):
            child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), 30)
        except TimeoutError:
            child.kill()
            await child.wait()


PHASES = {"writes": phase_writes, "fanout": phase_fanout, "idle": phase_idle}


# --- driver ------------------------------------------------------------------------------
def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def bench(a: argparse.Namespace) -> Results:
    res = Results()
    tmp = Path(tempfile.mkdtemp(prefix="pullwake-ds-sidebyside-"))
    source = export_rev(a.pullwake_rev, tmp / "src") if a.pullwake_rev else None
    try:
        for rep in range(a.repeats):
            order = a.servers if rep % 2 == 0 else list(reversed(a.servers))
            for phase in a.phases:
                for name in order:
                    srv = ServerProc(name, tmp / f"{name}-{rep}-{phase}", source=source)
                    srv.keepalive_s = a.pullwake_keepalive
                    t0 = time.monotonic()
                    srv.start()
                    conn = aiohttp.TCPConnector(limit=64)
                    timeout = aiohttp.ClientTimeout(total=30)
                    try:
                        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:
                            await PHASES[phase](a, http, srv, res)
                    except Exception as exc:  # one server failing a phase: note it, go on
                        res.notes.append(f"{name} {phase} (repeat {rep + 1}) failed: {exc!r}")
                    finally:
                        srv.stop()
                        shutil.rmtree(srv.data_dir, ignore_errors=True)
                    t = res.tally(phase, name)
                    print(
                        f"  repeat {rep + 1}/{a.repeats} {phase:<7} {name:<9} "
                        f"{time.monotonic() - t0:5.1f} s  (so far: {t.sent} appends, "
                        f"{t.refused} refused, {t.lost} lost)  load {load()}",
                        flush=True,
                    )
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v:.2f} s"
    if unit == "%":
        return f"{v:.1f} %"
    if unit == "ms":
        return f"{v:.1f} ms"
    if unit == "MiB":
        return f"{v:.0f} MiB"
    if unit == "":
        return f"{v:,.0f}"
    return f"{v:,.0f}" if unit == "/s" else f"{v:,.0f} B/s"


def table(a: argparse.Namespace, res: Results) -> str:
    names = a.servers
    head = ["measure", *names]
    if len(names) == 2:
        head += ["ratio", "ahead"]
    head += [f"refused/lost {n}" for n in names]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows(a):
        if row.phase not in a.phases:
            continue
        med = {
            n: statistics.median(v) if (v := res.values.get(row.key, {}).get(n)) else None
            for n in names
        }
        cells = [row.label, *(fmt(med[n], row.unit) for n in names)]
        if len(names) == 2:
            x, y = med[names[0]], med[names[1]]
            if x is not None and y:
                ratio = x / y
                ahead = ratio <= 1 if row.lower_is_better else ratio >= 1
                cells += [f"{ratio:.2f}", "yes" if ahead else "**no**"]
            else:
                cells += ["-", "-"]
        for n in names:
            t = res.tally(row.phase, n)
            cells.append(f"{t.refused}/{t.lost}" + (f" (+{t.ghost} ghost)" if t.ghost else ""))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 repeat and smaller sizes")
    p.add_argument("--repeats", type=int)
    p.add_argument("--servers", default=",".join(NAMES), help="comma list of: " + ",".join(NAMES))
    p.add_argument("--phases", default=",".join(PHASES), help="comma list of: " + ",".join(PHASES))
    p.add_argument("--latency-count", type=int, help="appends measured for delivery (200)")
    p.add_argument("--sequential-count", type=int, help="appends on one stream (500)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients/appenders (16)")
    p.add_argument("--per-client", type=int, help="appends per concurrent client (150)")
    p.add_argument("--readers", type=int, help="fanout readers and streams (1000)")
    p.add_argument("--rounds", type=int, help="fanout rounds (3)")
    p.add_argument("--idle-readers", type=int, help="idle SSE readers and streams (10000)")
    p.add_argument(
        "--window",
        type=float,
        default=30.0,
        help="idle seconds measured (30: one long-poll period)",
    )
    p.add_argument(
        "--connect-budget",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="time allowed to connect all fanout/idle readers (180)",
    )
    p.add_argument(
        "--pullwake-keepalive",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="pullwake's SSE keepalive comment interval (its default 15; 0 = none, like the "
        "reference, which sends only the control event at each 30 s long-poll timeout)",
    )
    p.add_argument("--json", type=Path, help="write every run's figures here")
    p.add_argument(
        "--pullwake-rev",
        metavar="REV",
        help="run pullwake's server from this commit (git archive) instead of the working tree",
    )
    a = p.parse_args(argv)
    full = {"repeats": 3, "latency_count": 200, "sequential_count": 500, "per_client": 150,
            "readers": 1000, "rounds": 3, "idle_readers": 10000}  # fmt: skip
    quick = {"repeats": 1, "latency_count": 50, "sequential_count": 150, "per_client": 40,
             "readers": 300, "rounds": 1, "idle_readers": 2000}  # fmt: skip
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.servers = [s for s in a.servers.split(",") if s]
    a.phases = [s for s in a.phases.split(",") if s]
    if bad := [s for s in a.servers if s not in NAMES] + [s for s in a.phases if s not in PHASES]:
        p.error(f"unknown: {', '.join(bad)}")
    if "reference" in a.servers and (why := reference_available()):
        p.error(why)
    return a


def resolve_rev(rev: str | None) -> tuple[str | None, str]:
    """(full sha of `rev` or None for the working tree, a label for the header): resolved
    once, before the run, as HEAD may move under it."""
    sha = subprocess.run(
        ["git", "-C", str(HERE.parent), "rev-parse", rev or "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if rev:
        return sha, f"{rev} ({sha[:7]})"
    return None, f"the working tree (HEAD {sha[:7]} + uncommitted edits)"


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    install_cleanup()
    before = load()
    a.pullwake_rev, source_label = resolve_rev(a.pullwake_rev)
    print(
        f"{os.cpu_count()} cores, load average {before}; servers: {', '.join(a.servers)}; "
        f"{a.repeats} repeat(s), phases {', '.join(a.phases)}; client on this machine; "
        f"pullwake from {source_label}, SSE keepalive comments every "
        f"{a.pullwake_keepalive:g} s (0 = none); long-poll timeout 30 s on both",
        flush=True,
    )
    try:
        res = asyncio.run(bench(a))
    except KeyboardInterrupt:
        stop_all()
        print("interrupted: servers stopped", file=sys.stderr)
        return 130
    after = load()
    print(f"\nmedian of {a.repeats} repeat(s); load average before {before}, after {after}")
    print(table(a, res))
    for n in res.notes:
        print(f"note: {n}")
    for phase, per in res.tallies.items():
        for name, t in per.items():
            if t.first_refusal:
                print(f"note: {name} {phase}: first refusal {t.first_refusal}")
    if a.json:
        a.json.write_text(
            json.dumps(
                {
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                    "pullwake_from": source_label,
                    "load_before": before,
                    "load_after": after,
                    "rows": [asdict(r) for r in rows(a)],
                    "values": res.values,
                    "tallies": {
                        p: {n: asdict(t) for n, t in d.items()} for p, d in res.tallies.items()
                    },
                    "notes": res.notes,
                },
                indent=2,
            )
        )
    pw = [t for per in res.tallies.values() for n, t in per.items() if n == "pullwake"]
    return 1 if any(t.refused or t.lost for t in pw) else 0


if __name__ == "__main__":
    sys.exit(main())
