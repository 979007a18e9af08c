"""Telemetry never hurts: the OTLP collector black-holed, the runner still on time.

The runner exports to a fault proxy in `blackhole` mode (connections accepted,
nothing ever answered) in front of the OTLP receiver.  Every export hangs
until its timeout, yet wakes are handled at once, memory stays bounded while
spans pile up, a frozen server is detected
by the idle watchdog within its bound, the runner recovers when the server
thaws, and SIGTERM still exits within a bounded time.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pullwake.tools.faultproxy import Mode, ThreadedFaultProxy
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.procs import RunnerProcess, ServerProcess, running, wait_until

pytestmark = [pytest.mark.slow]

RID = "tel-blackhole"
KEEPALIVE = 0.5  # the runner's idle timeout defaults to 3 x this
IDLE_TIMEOUT = 3 * KEEPALIVE
MARGIN = 2.5  # two shared cores, six engineers' test runs


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def blackholed_collector() -> Iterator[tuple[ThreadedFaultProxy, OtlpReceiver]]:
    with OtlpReceiver() as rx, ThreadedFaultProxy(("127.0.0.1", rx.port), mode=Mode.BLACKHOLE) as p:
        yield p, rx


def test_runner_unharmed_by_a_blackholed_collector(
    tmp_path: Path, blackholed_collector: tuple[ThreadedFaultProxy, OtlpReceiver]
) -> None:
    proxy, rx = blackholed_collector
    server = ServerProcess(tmp_path, keepalive=KEEPALIVE)
    runner = RunnerProcess(
        tmp_path,
        server.url,
        RID,
        # heartbeats slow enough that the idle watchdog, not the bridge, fires first
        extra=["--heartbeat-interval", "2", "--backoff-max", "1", "--connect-timeout", "2"],
        env={
            "OTEL_SDK_DISABLED": "false",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{proxy.port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "10000",
            "OTEL_METRIC_EXPORT_INTERVAL": "200",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    with running(server, runner):
        server.start()
        runner.start()
        wait_until(lambda: runner.status()["state"] == "running.streaming", 15, what="streaming")
        wait_until(lambda: proxy.accepted >= 1, 10, what="exporter connected to the black hole")

        # wake latency: handled at once while every export hangs
        for _ in range(3):
            before = runner.status()["diagnostics"]["claims_succeeded"]
            started = time.monotonic()
            server.publish(RID)
            wait_until(
                lambda b=before: runner.status()["diagnostics"]["claims_succeeded"] > b,
                MARGIN,
                what="wake claimed",
            )
            assert time.monotonic() - started < MARGIN

        # memory stays bounded while spans pile up for a collector that never answers
        rss_before = rss_mib(runner.pid)
        claimed = runner.status()["diagnostics"]["claims_succeeded"]
        for _ in range(400):  # ~1600 spans, near the bounded span queue (2048)
            server.publish(RID)
        wait_until(
            lambda: runner.status()["diagnostics"]["claims_succeeded"] >= claimed + 400,
            30,
            what="burst claimed",
        )
        grown = rss_mib(runner.pid) - rss_before
        assert grown < 40, f"RSS grew {grown:.1f} MiB"

        # detection: a frozen server is caught by the idle watchdog on time
        server.signal(signal.SIGSTOP)
        frozen = time.monotonic()
        wait_until(
            lambda: runner.status()["diagnostics"]["stream_connected"] is False,
            IDLE_TIMEOUT + MARGIN,
            what="idle watchdog fired",
        )
        detected = time.monotonic() - frozen
        assert detected >= IDLE_TIMEOUT * 0.8, detected  # the watchdog, not something else
        reasons = [r["reason"] for r in runner.status()["reconnects"]]
        assert "idle_timeout" in reasons, reasons

        # recovery once the server thaws
        server.signal(signal.SIGCONT)
        thawed = time.monotonic()
        wait_until(
            lambda: runner.status()["state"] == "running.streaming",
            1.0 + 2.0 + 2 * MARGIN,  # backoff cap + connect timeout + margin
            what="recovered",
        )
        assert time.monotonic() - thawed < 1.0 + 2.0 + 2 * MARGIN

        # clean shutdown flushes within its bound even though nothing can be sent
        stopping = time.monotonic()
        runner.signal(signal.SIGTERM)
        code = runner.wait(timeout=3.0 + 5.0)  # telemetry's 3 s flush bound + margin
        took = time.monotonic() - stopping
        assert code == 0, runner.output()
        assert took < 3.0 + 5.0, took
    assert rx.requests == 0  # nothing got through the black hole
    assert "Traceback" not in runner.output()
