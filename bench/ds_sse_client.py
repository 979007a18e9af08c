"""A lean Durable Streams SSE reader on raw asyncio streams, for thousands of readers.

aiohttp costs too much client CPU and memory per connection when 10,000 readers share two
cores with the server under test; this reader speaks just enough HTTP/1.1 (one GET,
chunked or identity body) and SSE (`event:`/`data:` lines) for the benches, and counts the
bytes it reads off the socket (chunk framing included: what the server sends).

Run as a script it is the idle-reader child process of bench_ds_sidebyside.py:

    python bench/ds_sse_client.py --port P --prefix /v1/stream/idle/ --count 10000

opens `--count` readers on PREFIX0..PREFIX{count-1}, prints one JSON line when every
reader is connected (or failed), then answers lines on stdin: `window` zeroes the byte
counter, `report` prints {"bytes", "seconds", "alive", "failed"}; EOF on stdin ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

ItemsCallback = Callable[["LeanSSE", list[Any], float], None]


class LeanSSE:
    """One live SSE read of one stream; reconnects from the last offset if the body ends."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        *,
        offset: str = "-1",
        on_items: ItemsCallback | None = None,
        parse: bool = True,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.offset = offset
        self.on_items = on_items
        self.parse = parse  # False: count bytes only (idle readers)
        self.bytes = 0
        self.connected = asyncio.Event()  # response headers and the first body bytes seen
        self.failed: str | None = None
        self.ended = False
        self._event = ""
        self._data: list[str] = []
        self._buf = b""
        self._writer: asyncio.StreamWriter | None = None

    async def run(self) -> None:
        try:
            while True:
                await self._once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure ends this reader; the bench counts it
            self.failed = self.failed or f"{type(exc).__name__}: {exc}"
            self.connected.set()
        finally:
            self.ended = True
            if self._writer is not None:
                self._writer.close()

    async def _once(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        self._writer = writer
        writer.write(
            f"GET {self.path}?offset={self.offset}&live=sse HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        chunked = b"transfer-encoding: chunked" in head.lower()
        if chunked:
            while True:
                size_line = await reader.readline()
                if not size_line:
                    raise ConnectionError("closed mid-body")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                data = await reader.readexactly(size + 2)
                self._got(data[:-2], len(size_line) + size + 2)
        else:
            while data := await reader.read(65536):
                self._got(data, len(data))
        writer.close()
        self._writer = None
        self._buf = b""  # a clean end (a planned rotation): read on from the last offset

    def _got(self, data: bytes, wire_bytes: int) -> None:
        self.bytes += wire_bytes
        self.connected.set()
        if not self.parse:
            return
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if not line:
                self._dispatch()
            elif line.startswith("event:"):
                self._event = line[6:].strip()
            elif line.startswith("data:"):
                self._data.append(line[5:].removeprefix(" "))

    def _dispatch(self) -> None:
        event, data = self._event, "\n".join(self._data)
        self._event, self._data = "", []
        if event == "data" and self.on_items is not None:
            self.on_items(self, json.loads(data), time.perf_counter())
        elif event == "control":
            self.offset = json.loads(data).get("streamNextOffset", self.offset)


async def open_readers(
    readers: list[LeanSSE], *, connect_concurrency: int = 200, budget: float = 180.0
) -> list[asyncio.Task[None]]:
    """Start every reader (at most `connect_concurrency` connecting at once) and wait until
    each is connected or failed, for at most `budget` seconds in all: a reader not
    connected by then is stopped and marked failed.  Returns the tasks of the others."""
    tasks: dict[LeanSSE, asyncio.Task[None]] = {}
    gate = asyncio.Semaphore(connect_concurrency)
    deadline = time.monotonic() + budget

    async def start(r: LeanSSE) -> None:
        async with gate:
            left = deadline - time.monotonic()
            if left <= 0:
                r.failed = f"not connected within {budget:g} s"
                return
            tasks[r] = asyncio.create_task(r.run())
            try:
                await asyncio.wait_for(r.connected.wait(), left)
            except TimeoutError:
                r.failed = f"not connected within {budget:g} s"
                t = tasks.pop(r)
                t.cancel()
                await asyncio.gather(t, return_exceptions=True)

    await asyncio.gather(*(start(r) for r in readers))
    return list(tasks.values())


async def close_readers(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _child(args: argparse.Namespace) -> None:
    readers = [
        LeanSSE(args.host, args.port, f"{args.prefix}{i}", parse=False) for i in range(args.count)
    ]
    tasks = await open_readers(readers, budget=args.connect_budget)
    failed = [r.failed for r in readers if r.failed]
    ready = sum(1 for r in readers if r.connected.is_set() and not r.failed)
    print(json.dumps({"ready": ready, "failed": len(readers) - ready,
                      "first_error": failed[0] if failed else None}), flush=True)  # fmt: skip
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    t0 = time.perf_counter()
    base = 0
    while line := (await stdin.readline()).strip():
        total = sum(r.bytes for r in readers)
        if line == b"window":
            t0, base = time.perf_counter(), total
        elif line == b"report":
            alive = sum(1 for r in readers if not r.ended and not r.failed)
            print(json.dumps({"bytes": total - base, "seconds": time.perf_counter() - t0,
                              "alive": alive, "failed": sum(1 for r in readers if r.failed)}),
                  flush=True)  # fmt: skip
    await close_readers(tasks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--prefix", required=True, help="stream path prefix; reader i reads PREFIXi")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--connect-budget", type=float, default=180.0, metavar="SECONDS")
    asyncio.run(_child(p.parse_args()))


if __name__ == "__main__":
    main()
