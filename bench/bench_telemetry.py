"""Benchmark telemetry overhead: runner CPU and RSS, idle and at N wakes/s.

Runs a real `pullwake server` and two real `pullwake run` subprocesses side
by side (the same machine load for both): one with `OTEL_SDK_DISABLED=true`
(telemetry off) and one with telemetry on as an operator would run it
(Prometheus `/metrics` scraped every 5 s by this script, OTLP/gRPC traces and
metrics pushed to an in-process receiver every 5 s).  For each it measures
the runner's CPU (utime + stime from /proc, as % of one core) and RSS over an
idle window and over a window at `--rate` wakes/s (each wake: claim, handle,
complete, and its spans).

The publisher and the receiver run in this process on the same two cores,
and other test runs may share the machine: run it on a quiet machine and
read the figures as indicative.  On a busy machine the publishers fall short
of `--rate`; each window therefore counts the wakes claimed inside it and the
"per wake" line projects the CPU difference per wake to the asked rate.
Goals: telemetry adds < 5 % CPU (points of one core), idle CPU < 1 %.

    .venv/bin/python bench/bench_telemetry.py [--rate 100] [--seconds 15] [--rounds 2]

Knobs worth trying on "on" (BENCH_OTEL_ENV='{...}'): PULLWAKE_OTEL_WAKE_STEPS=events
(one span per wake), OTEL_TRACES_SAMPLER=parentbased_traceidratio with
OTEL_TRACES_SAMPLER_ARG=0.1 (sessions and heartbeats are always kept).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pullwake.server.publish import Publisher as WakePublisher
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.procs import RunnerProcess, ServerProcess, wait_until

CLK_TCK = os.sysconf("SC_CLK_TCK")
RID = "bench-telemetry"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Window:
    cpu_pct: float
    rss_mib: float
    wakes: int  # claimed inside the measured window
    seconds: float

    @property
    def rate(self) -> float:
        return self.wakes / self.seconds if self.seconds else 0.0


class Publisher(threading.Thread):
    """POSTs wakes at `rate`/s on one keep-alive connection, paced by the clock."""

    def __init__(self, port: int, runner_id: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.port, self.runner_id, self.rate = port, runner_id, rate
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        # One fresh entity per wake (spawn + send), so every publish is its own
        # wake, as `pullwake publish` does it.
        pub = WakePublisher(f"http://127.0.0.1:{self.port}", principal="system:dev-local")
        prefix = uuid.uuid4().hex[:8]
        start = time.monotonic()
        while self.rate > 0 and not self.stop.is_set():
            due = start + self.sent / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
                continue
            pub.send(self.runner_id, f"/pullwake/{prefix}-{self.sent}", {"seq": self.sent})
            self.sent += 1


def measure(pid: int, seconds: float, scrape: str | None) -> tuple[float, float]:
    """CPU % of one core and peak RSS over `seconds`; scrapes /metrics every 5 s if given."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    peak = rss_mib(pid)
    next_scrape = t0
    while (now := time.monotonic()) < t0 + seconds:
        if scrape and now >= next_scrape:
            with contextlib.suppress(OSError), urllib.request.urlopen(scrape, timeout=5) as r:
                r.read()  # a 404 (telemetry disabled by BENCH_OTEL_ENV) is fine too
            next_scrape = now + 5
        peak = max(peak, rss_mib(pid))
        time.sleep(0.25)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    return 100 * (c1 - c0) / (t1 - t0), peak


def claims(runner: RunnerProcess) -> int:
    return int(runner.status()["diagnostics"]["claims_succeeded"])


MODES: dict[str, dict[str, str]] = {
    "off": {"OTEL_SDK_DISABLED": "true"},
    "on": {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
    },
}


def run_all(
    tmp: Path, rate: float, seconds: float, rx: OtlpReceiver, order: tuple[str, ...]
) -> dict[str, dict[str, Window]]:
    """Both runners at once against one server: the same machine load for both.

    `order` is the start order (of runners and publishers); rounds alternate it
    so neither slot's bias favours one mode.
    """
    server = ServerProcess(tmp, keepalive=5.0)
    runners: dict[str, RunnerProcess] = {}
    # e.g. BENCH_OTEL_ENV='{"OTEL_TRACES_EXPORTER": "none"}' to try a variant of "on"
    extra_env = json.loads(os.environ.get("BENCH_OTEL_ENV", "{}"))
    for mode in order:
        env = dict(MODES[mode])
        if mode != "off":
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = rx.endpoint
            env.update(extra_env)
        runners[mode] = RunnerProcess(
            tmp,
            server.url,
            f"{RID}-{mode}",
            extra=["--log-level", "warning", "--heartbeat-interval", "10", "--concurrency", "8"],
            env=env,
        )
    out: dict[str, dict[str, Window]] = {mode: {} for mode in runners}
    try:
        server.start()
        for r in runners.values():
            r.start()
        for r in runners.values():
            wait_until(lambda r=r: r.status()["state"] == "running.streaming", 20, what="streaming")
        time.sleep(3)  # settle: imports, first exports
        for window, wake_rate in (("idle", 0.0), (f"{rate:g}/s", rate)):
            pubs = {m: Publisher(server.port, f"{RID}-{m}", wake_rate) for m in runners}
            before = {m: claims(r) for m, r in runners.items()}
            for p in pubs.values():
                p.start()
            if wake_rate:
                time.sleep(2)  # reach steady state before measuring
            results: dict[str, Window] = {}

            def sample(m: str, r: RunnerProcess, into: dict[str, Window]) -> None:
                # wakes claimed inside the window: the publisher may fall short of
                # the rate on a busy machine, and CPU per wake must say so
                c0, t0 = claims(r), time.monotonic()
                cpu, rss = measure(
                    r.pid, seconds, None if m == "off" else f"{r.status_url}/metrics"
                )
                into[m] = Window(cpu, rss, claims(r) - c0, time.monotonic() - t0)

            threads = [
                threading.Thread(target=sample, args=(m, r, results)) for m, r in runners.items()
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for p in pubs.values():
                p.stop.set()
                p.join(10)
            for m, r in runners.items():
                sent = pubs[m].sent
                wait_until(lambda r=r, b=before[m], n=sent: claims(r) - b >= n, 30, what="claimed")
                out[m][window] = results[m]
    finally:
        for r in runners.values():
            r.stop()
        server.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=100, help="wakes per second (default: 100)")
    ap.add_argument("--seconds", type=float, default=15, help="length of each window (default: 15)")
    ap.add_argument(
        "--rounds", type=int, default=2, help="rounds, alternating start order (default: 2)"
    )
    args = ap.parse_args()
    rounds: list[dict[str, dict[str, Window]]] = []
    with tempfile.TemporaryDirectory() as d, OtlpReceiver() as rx:
        for i in range(args.rounds):
            tmp = Path(d) / f"round{i}"
            tmp.mkdir()
            order = ("off", "on") if i % 2 == 0 else ("on", "off")
            rounds.append(run_all(tmp, args.rate, args.seconds, rx, order))
        spans = len(rx.spans())
    results = {
        mode: {
            w: Window(
                sum(r[mode][w].cpu_pct for r in rounds) / len(rounds),
                max(r[mode][w].rss_mib for r in rounds),
                sum(r[mode][w].wakes for r in rounds),
                sum(r[mode][w].seconds for r in rounds),
            )
            for w in rounds[0][mode]
        }
        for mode in MODES
    }
    print(
        f"runner telemetry overhead ({args.rounds} x {args.seconds:g} s windows,"
        " CPU as % of one core, mean; RSS peak)"
    )
    print(
        f"{'window':>10} {'telemetry':>9} {'CPU %':>7} {'RSS MiB':>8} {'wakes':>6}"
        f" {'wakes/s':>8} {'CPU us/wake':>11}"
    )
    for window in results["off"]:
        for name in ("off", "on"):
            w = results[name][window]
            per = f"{w.cpu_pct * 1e4 / w.rate:11.0f}" if w.wakes else f"{'-':>11}"
            print(
                f"{window:>10} {name:>9} {w.cpu_pct:7.2f} {w.rss_mib:8.1f} {w.wakes:6d}"
                f" {w.rate:8.1f} {per}"
            )
        off_w, on_w = results["off"][window], results["on"][window]
        off, on = off_w.cpu_pct, on_w.cpu_pct
        rel = f"{100 * (on - off) / off:+.0f} % relative" if off > 0.05 else "n/a relative"
        print(f"{'':>10} {'delta':>9} {on - off:+7.2f} points of one core ({rel})")
        if off_w.wakes and on_w.wakes:
            # per-wake cost difference, scaled to the asked rate: honest when the
            # publisher fell short of it
            extra_us = on * 1e4 / on_w.rate - off * 1e4 / off_w.rate
            print(
                f"{'':>10} {'per wake':>9} {extra_us:+7.0f} us of CPU a wake ->"
                f" {extra_us * args.rate / 1e4:+.2f} points of one core at {args.rate:g} wakes/s"
            )
    print(f"OTLP receiver got {spans} spans from the 'on' run")
    print(
        json.dumps([{k: {w: vars(v) for w, v in r.items()} for k, r in x.items()} for x in rounds])
    )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
