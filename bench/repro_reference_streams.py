"""Reproduce the reference Durable Streams server's failure above 100 streams.

npm `@durable-streams/server` 0.3.7 (file-backed store) keeps at most 100 segment files
open (a SIEVE cache of write streams, `maxFileHandles ?? 100`).  An append writes its frame
through the cached handle, then awaits; another stream's append can evict (and close) that
handle before the first one asks for its fdatasync, which then fails with "handle not
found", and the server answers 404 "Stream not found" - after the frame is already in the
segment file.  The stream's recorded tail (LMDB) and its file disagree from then on.  See
docs/ds-reference.md.

For each stream count this starts a fresh server, creates the streams, holds one SSE
reader on each (the lean reader of ds_sse_client.py), sends `--rounds` rounds of one JSON
append per stream from `--clients` concurrent appenders, waits 5 s for deliveries, then
reads every stream back (catch-up) and prints per server and stream count:

- refused: appends answered non-2xx (the reference: 404 "Stream not found");
- accepted, not delivered live: answered 2xx, not seen by the stream's SSE reader within
  5 s of the last append (the reader stays open the whole time);
- refused, delivered live / in catch-up read: answered 404, yet served to readers (the
  frame had reached the segment file before the failed flush);
- accepted, missing from catch-up: answered 2xx, absent from a catch-up read afterwards.

Then (unless --no-store-probe) it runs conformance/reference-handle-probe.mjs: the same
appends on the reference's FileBackedStreamStore without HTTP, once with its default file
handle limit and once with 2 x streams, printing the error the store raised for each
refused append ("[FileHandlePool] Cannot fsync: handle not found") and the frames in the
segment files.

    .venv/bin/python bench/repro_reference_streams.py                       # 100 and 1,000
    .venv/bin/python bench/repro_reference_streams.py --streams 50,100,101,200,1000 \\
        --servers reference,pullwake --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_ds_sidebyside import (
    DELIVERY_TIMEOUT_S,
    PREFIX,
    Arrivals,
    Client,
    Tally,
    bounded,
    lean,
    load,
)
from bench.ds_servers import (
    CONFORMANCE,
    NAMES,
    ServerProc,
    export_rev,
    install_cleanup,
    reference_available,
    stop_all,
)
from bench.ds_sse_client import close_readers, open_readers


@dataclass
class Outcome:
    server: str
    streams: int
    appends: int
    refused: int
    never_delivered: int
    ghost: int
    refused_stored: int
    catchup_missing: int
    first_refusal: str | None

    def row(self) -> str:
        def share(n: int, of: int) -> str:
            return f"{n} ({100 * n / of:.1f} %)" if of else str(n)

        accepted = self.appends - self.refused
        return (
            f"| {self.server} | {self.streams:,} | {self.appends:,} | "
            f"{share(self.refused, self.appends)} | {share(self.never_delivered, accepted)} | "
            f"{self.ghost} | {self.refused_stored} | {share(self.catchup_missing, accepted)} |"
        )


HEADER = (
    "| server | streams | appends | refused | accepted, not delivered live | refused, delivered "
    "live | refused, in catch-up read | accepted, missing from catch-up |\n"
    "|---|---|---|---|---|---|---|---|"
)


async def one_run(
    a: argparse.Namespace, name: str, streams: int, tmp: Path, source: Path | None
) -> Outcome:
    srv = ServerProc(name, tmp / f"{name}-{streams}", source=source)
    srv.start()
    tally = Tally()
    try:
        conn = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(
            connector=conn, timeout=aiohttp.ClientTimeout(total=30)
        ) as http:
            c = Client(http, srv, tally)
            paths = [f"{PREFIX}/repro-{k}" for k in range(streams)]
            await c.create_many(paths)
            arrivals = Arrivals()
            readers = [lean(srv, p, arrivals, k) for k, p in enumerate(paths)]
            tasks = await open_readers(readers)
            accepted: list[set[int]] = [set() for _ in paths]
            refused: list[set[int]] = [set() for _ in paths]
            try:

                async def one(k: int, rnd: int) -> None:
                    if await c.append(paths[k], {"s": k, "i": rnd}):
                        accepted[k].add(rnd)
                    else:
                        refused[k].add(rnd)

                for rnd in range(a.rounds):
                    await bounded(a.clients, (one(k, rnd) for k in range(streams)))
                deadline = time.perf_counter() + DELIVERY_TIMEOUT_S
                while time.perf_counter() < deadline and any(
                    (k, i) not in arrivals.at for k in range(streams) for i in accepted[k]
                ):
                    await asyncio.sleep(0.05)
            finally:
                await close_readers(tasks)
            never = sum(1 for k in range(streams) for i in accepted[k] if (k, i) not in arrivals.at)
            ghost = sum(1 for k in range(streams) for i in refused[k] if (k, i) in arrivals.at)
            missing = stored = 0
            for k, p in enumerate(paths):
                present = {x["i"] for x in await c.read_all(p) if isinstance(x, dict)}
                missing += len(accepted[k] - present)
                stored += len(refused[k] & present)
    finally:
        srv.stop()
        shutil.rmtree(srv.data_dir, ignore_errors=True)
    return Outcome(
        name,
        streams,
        tally.sent,
        tally.refused,
        never,
        ghost,
        stored,
        missing,
        tally.first_refusal,
    )


def store_probe(streams: int, handles: int | None, a: argparse.Namespace) -> dict[str, Any]:
    """conformance/reference-handle-probe.mjs: the reference's store without HTTP, so the
    error behind each 404 is seen as the store raised it."""
    cmd = ["node", str(CONFORMANCE / "reference-handle-probe.mjs"), str(streams)]
    cmd += [str(handles) if handles else "default", str(a.clients), str(a.rounds)]
    out = subprocess.run(cmd, cwd=CONFORMANCE, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"probe failed: {out.stderr[-500:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def probe_table(a: argparse.Namespace) -> list[dict[str, Any]]:
    print(
        "\nthe reference's store alone (no HTTP), same appends:\n"
        "| streams | maxFileHandles | appends | accepted | frames in the segment files | "
        "failures |\n|---|---|---|---|---|---|",
        flush=True,
    )
    results = []
    for streams in a.streams:
        for handles in (None, 2 * streams):
            r = store_probe(streams, handles, a)
            fails = "; ".join(f"{n} x {msg}" for msg, n in r["failures"].items()) or "none"
            print(
                f"| {streams:,} | {r['maxFileHandles']} | {r['appends']:,} | {r['accepted']:,} | "
                f"{r['onDisk']:,} | {fails} |",
                flush=True,
            )
            results.append(r)
    return results


async def run(a: argparse.Namespace) -> list[Outcome]:
    tmp = Path(tempfile.mkdtemp(prefix="pullwake-repro-"))
    out: list[Outcome] = []
    source = export_rev(a.pullwake_rev, tmp / "src") if a.pullwake_rev else None
    try:
        for streams in a.streams:
            for name in a.servers:
                o = await one_run(a, name, streams, tmp, source)
                print(o.row(), flush=True)
                out.append(o)
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--streams", default="100,1000", help="comma list of stream counts")
    p.add_argument("--servers", default="reference", help="comma list of: " + ",".join(NAMES))
    p.add_argument("--rounds", type=int, default=3, help="appends per stream (3)")
    p.add_argument("--clients", type=int, default=16, help="concurrent appenders (16)")
    p.add_argument("--json", type=Path, help="write the outcomes here")
    p.add_argument("--pullwake-rev", metavar="REV", help="run pullwake from this commit")
    p.add_argument(
        "--no-store-probe",
        action="store_true",
        help="skip the reference store's own run (default and 2x-streams file handles)",
    )
    a = p.parse_args(argv)
    a.streams = [int(s) for s in a.streams.split(",") if s]
    a.servers = [s for s in a.servers.split(",") if s]
    if bad := [s for s in a.servers if s not in NAMES]:
        p.error(f"unknown server: {', '.join(bad)}")
    if "reference" in a.servers and (why := reference_available()):
        p.error(why)
    install_cleanup()
    print(f"load average {load()}; {a.rounds} append(s) per stream, {a.clients} appenders")
    print(HEADER, flush=True)
    try:
        outcomes = asyncio.run(run(a))
    except KeyboardInterrupt:
        stop_all()
        return 130
    for o in outcomes:
        if o.first_refusal:
            print(f"{o.server} at {o.streams:,} streams: first refusal {o.first_refusal}")
    probes = [] if a.no_store_probe or "reference" not in a.servers else probe_table(a)
    if a.json:
        a.json.write_text(
            json.dumps({"http": [o.__dict__ for o in outcomes], "store": probes}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
