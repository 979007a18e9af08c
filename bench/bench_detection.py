"""How fast does each profile notice a dead stream, and how fast is it back?

For every fault x profile: a real server subprocess, the fault proxy in front,
a real runner subprocess (`pullwake run --profile P`).  Detection = time from
the fault to the runner leaving `running.streaming` (taken from the runner's
own reconnect record, cross-checked by polling /status).  Recovery = time from
healing to streaming again with a new `stream_connected_since` (for legacy,
which never leaves streaming: until a wake published after healing is
handled).  "-" means not detected within the cap: the runner lied.

    .venv/bin/python bench/bench_detection.py [--cap 15] [--heartbeat-interval 2]
        [--chart bench/results/detection.png]

Besides the table it draws the figures (medians) as a chart, PNG and SVG, and
keeps them as JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pullwake.tools.faultproxy import ThreadedFaultProxy
from tests.support.procs import RunnerProcess, ServerProcess, running, wait_until

STREAMING = "running.streaming"
FAULTS = ("sigint", "sigterm", "sigkill", "sigstop", "half_open", "blackhole")
PROFILES = ("default", "upstream", "legacy")


def unix(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def one(
    tmp: Path, profile: str, fault: str, cap: float, hb: float, keepalive: float
) -> tuple[float | None, float | None]:
    server = ServerProcess(tmp, keepalive=keepalive).start()
    handled = tmp / "handled.txt"
    handled.touch()
    with running(server), ThreadedFaultProxy(upstream=("127.0.0.1", server.port)) as proxy:
        server.register("bench")
        cmd = f'cat >/dev/null; echo "$PULLWAKE_WAKE_ID ${{PULLWAKE_STREAM_PATH:-}}" >> {handled}'
        r = RunnerProcess(
            tmp,
            proxy.url,
            "bench",
            extra=[
                "--profile",
                profile,
                "--heartbeat-interval",
                str(hb),
                "--handler",
                cmd,
                "--log-level",
                "warning",
            ],
        )
        r.start()
        with running(r):
            before = wait_until(
                lambda: (s := r.status())["state"] == STREAMING and s, 20, what="streaming"
            )
            time.sleep(0.5)
            fault_at = time.time()
            heal = inject(server, proxy, fault)
            detected: float | None = None
            deadline = time.monotonic() + cap
            while time.monotonic() < deadline:
                s = r.status()
                if s["state"] != STREAMING:
                    ends = [e for e in s["reconnects"] if unix(e["at"]) >= fault_at - 0.05]
                    detected = (unix(ends[0]["at"]) if ends else time.time()) - fault_at
                    break
                time.sleep(0.02)
            healed_at = time.time()
            server = heal() or server
            recovered: float | None = None
            since0 = before["diagnostics"]["stream_connected_since"]
            try:
                if detected is not None:
                    wait_until(
                        lambda: (
                            (s := r.status())["state"] == STREAMING
                            and s["diagnostics"]["stream_connected_since"] != since0
                        ),
                        cap + 30,
                        what="recovered",
                    )
                else:
                    answer = server.publish("bench")
                    # the wake id (old server) or the message's stream (upstream protocol:
                    # the claim names the entity stream, its wake id is the server's own)
                    keys = [
                        str(answer[k]).lstrip("/") for k in ("wake_id", "stream") if answer.get(k)
                    ]
                    wait_until(
                        lambda: any(k in handled.read_text() for k in keys), cap + 60, what="wake"
                    )
                recovered = time.time() - healed_at
            except AssertionError:
                recovered = None
            server.stop()
    return detected, recovered


def inject(server: ServerProcess, proxy: ThreadedFaultProxy, fault: str) -> Callable[[], Any]:
    """Start the fault; return the function that heals it (maybe returning a new server)."""
    signals = {"sigint": signal.SIGINT, "sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL}
    if fault in signals:
        server.signal(signals[fault])
        server.wait(10)

        def restart() -> ServerProcess:
            return ServerProcess(
                server.log_path.parent,
                port=server.port,
                db=server.db,
                keepalive=float(server.argv[server.argv.index("--keepalive-interval") + 1]),
            ).start()

        return restart
    if fault == "sigstop":
        os.kill(server.pid, signal.SIGSTOP)
        return lambda: os.kill(server.pid, signal.SIGCONT)
    proxy.set_mode(fault)
    return lambda: proxy.set_mode("pass")


def fmt(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "-"
    text = f"{statistics.median(got):7.3f}s"
    if len(got) < len(values):
        text += f" ({len(values) - len(got)} missed)"
    return text


def median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return round(statistics.median(got), 3) if got else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cap", type=float, default=15.0, help="give up detecting after (s)")
    ap.add_argument("--heartbeat-interval", type=float, default=2.0)
    ap.add_argument("--keepalive", type=float, default=1.0, help="server SSE keepalive (s)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument(
        "--chart",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "detection.png",
        help="where the chart goes (.png, and .svg beside it); '' = none",
    )
    args = ap.parse_args()
    results: list[dict[str, Any]] = []
    print(
        f"heartbeat {args.heartbeat_interval}s, server keepalive {args.keepalive}s "
        f"(default idle timeout {3 * args.keepalive:g}s), detection cap {args.cap}s"
    )
    print(f"{'fault':<10} {'profile':<9} {'detection':>18} {'recovery':>18}")
    for fault in args.faults.split(","):
        for profile in args.profiles.split(","):
            det: list[float | None] = []
            rec: list[float | None] = []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    d, r = one(
                        Path(tmp),
                        profile,
                        fault,
                        args.cap,
                        args.heartbeat_interval,
                        args.keepalive,
                    )
                det.append(d)
                rec.append(r)
            print(f"{fault:<10} {profile:<9} {fmt(det):>18} {fmt(rec):>18}", flush=True)
            results.append(
                {
                    "fault": fault,
                    "profile": profile,
                    "detection_s": median(det),
                    "recovery_s": median(rec),
                }
            )
    if str(args.chart) not in ("", "."):
        from pullwake.tools.chaos_plot import draw_detection_chart

        args.chart.parent.mkdir(parents=True, exist_ok=True)
        title = (
            f"pullwake detection and recovery per fault and profile (heartbeat "
            f"{args.heartbeat_interval:g}s, keepalive {args.keepalive:g}s, median of {args.repeat})"
        )
        draw_detection_chart(results, args.cap, title, args.chart, args.chart.with_suffix(".svg"))
        data = {"title": title, "cap": args.cap, "results": results}
        args.chart.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
        print(f"chart: {args.chart} (+ .svg, and the figures in .json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
