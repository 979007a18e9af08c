"""The series budget, measured: a real runner through real faults, both export paths.

A runner process behind the fault proxy, against the real server, exporting
OTLP to the in-process receiver every 0.3 s, goes through: SSE rotations, a
handled and a failed wake, RST, FIN, a black hole (idle timeout, heartbeat
timeouts), refused connects, a gateway answering 503 and one answering 404
(stream `http_error`, heartbeats `http_5xx` / `http_4xx`), a forced reconnect
(SIGHUP), and a kill -9 of the server.  Then its `/metrics` series and its OTLP
data points (every attribute set seen in any export) are counted per metric:
each within its catalog budget, and at most 40 per runner on each path with
`target_info`.  The table is printed (`pytest -s`).
"""

from __future__ import annotations

import os
import re
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pullwake.core import catalog as c
from pullwake.core.catalog import CATALOG, Component
from pullwake.tools.faultproxy import ThreadedFaultProxy
from tests.runner.harness import Handled, publish, start_runner, wait_state, wait_streaming
from tests.support.fakeserver import FakeServer, answering
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.procs import RunnerProcess, ServerProcess, http_json, running, wait_until
from tests.support.series import report_table, scrape_counts

pytestmark = pytest.mark.slow

RID = "budget-1"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


def _otlp_sets(rx: OtlpReceiver) -> Counter[str]:
    """Distinct attribute sets per metric over every export of the runner so far (= series)."""
    seen: dict[str, set[frozenset[tuple[str, Any]]]] = {}
    for m in CATALOG:
        if m.component is not Component.RUNNER:
            continue
        for p in rx.points(m.name, runner__id=RID):
            seen.setdefault(m.name, set()).add(frozenset(p.attributes.items()))
    return Counter({name: len(sets) for name, sets in seen.items()})


def _fault(r: RunnerProcess, what: str, apply: Callable[[], None], heal: Callable[[], None],
           until: Callable[[dict[str, Any]], bool] | None = None) -> None:  # fmt: skip
    """Apply a fault, wait until the runner reconnected for it (and `until`), heal it."""
    base = wait_streaming(r, 30)["diagnostics"]["reconnect_count"]
    apply()
    try:
        wait_state(
            r,
            lambda s: s["diagnostics"]["reconnect_count"] > base and (until is None or until(s)),
            30,
            what,
        )
    finally:
        heal()
    wait_streaming(r, 30)


def test_a_fault_run_stays_within_the_series_budget(tmp_path: Path, receiver: OtlpReceiver) -> None:
    env = {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
    }
    server = ServerProcess(tmp_path, keepalive=0.5, extra=["--sse-rotate-seconds", "2"])
    fail_flag = tmp_path / "fail-handlers"
    handled = Handled(tmp_path)
    handled.command = f"test ! -e {fail_flag} && {{ {handled.command}; }}"
    gateway_503 = FakeServer(answering(503), heartbeat_status=lambda: 503)
    gateway_404 = FakeServer(answering(404), heartbeat_status=lambda: 404)
    with (
        running(server),
        gateway_503.in_thread() as url_503,
        gateway_404.in_thread() as url_404,
    ):
        server.start()
        upstream = ("127.0.0.1", server.port)
        with ThreadedFaultProxy(upstream=upstream) as proxy:
            r = start_runner(tmp_path, proxy.url, RID, handled, env=env)
            with running(r):
                wait_streaming(r)
                wait_until(  # the server's planned SSE rotation, every 2 s here
                    lambda: 'reason="rotated"' in _metrics(r, c.STREAM_RECONNECTS.prom_name),
                    20,
                    what="a rotation",
                )
                ok = publish(server, RID, 2)
                handled.wait_for(ok, 20)
                last = receiver.requests
                wait_until(lambda: receiver.requests >= last + 2, 10, what="two more exports")
                steady = (scrape_counts(_metrics(r, "")), _otlp_sets(receiver))
                fail_flag.touch()  # a failing handler: the wake ends `failed`
                publish(server, RID, 1)
                wait_until(
                    lambda: "failed" in _metrics(r, c.WAKES.prom_name), 20, what="failed wake"
                )
                fail_flag.unlink()

                def mode(m: str) -> Callable[[], None]:
                    return lambda: proxy.set_mode(m)

                def failing_heartbeats(s: dict[str, Any]) -> bool:
                    return int(s["diagnostics"]["consecutive_heartbeat_failures"]) >= 1

                def heartbeat_error(kind: str) -> Callable[[dict[str, Any]], bool]:
                    name = c.HEARTBEAT_FAILURES.prom_name
                    return lambda _s: f'error_type="{kind}"' in _metrics(r, name)

                def to(url: str) -> Callable[[], None]:
                    port = int(url.rsplit(":", 1)[1])

                    def go() -> None:
                        proxy.set_upstream(("127.0.0.1", port))
                        proxy.set_mode("close")  # cut what is open: new connections go there
                        proxy.set_mode("pass")

                    return go

                def back() -> None:
                    proxy.set_upstream(upstream)
                    proxy.set_mode("close")
                    proxy.set_mode("pass")

                _fault(r, "RST", mode("reset"), mode("pass"))
                _fault(r, "FIN", mode("close"), mode("pass"))
                _fault(r, "black hole", mode("blackhole"), mode("pass"), heartbeat_error("timeout"))
                _fault(r, "refused", mode("refuse"), mode("pass"), heartbeat_error("connect"))
                _fault(r, "gateway 503", to(url_503), back, heartbeat_error("http_5xx"))
                _fault(r, "gateway 404", to(url_404), back, heartbeat_error("http_4xx"))
                _fault(r, "SIGHUP", lambda: os.kill(r.pid, signal.SIGHUP), lambda: None)
                _fault(
                    r,
                    "server kill -9",
                    lambda: server.stop(signal.SIGKILL),
                    server.start,
                    failing_heartbeats,
                )
                more = publish(server, RID, 2)
                handled.wait_for(more, 30)
                status = r.status()
                last = receiver.requests
                wait_until(lambda: receiver.requests >= last + 2, 10, what="two more exports")
                text = http_json("GET", r.status_url + "/metrics")[2]
    assert isinstance(text, str)
    scrape = scrape_counts(text)
    otlp = _otlp_sets(receiver)
    report = report_table(scrape, otlp)
    reasons = sorted({e["reason"] for e in status["reconnects"]})
    print(f"\nsteady state (healthy, wakes handled):\n{report_table(*steady)}")
    print(f"\nafter the faults, reconnect reasons realised: {reasons}\n{report}")
    failures = _lines(text, c.HEARTBEAT_FAILURES.prom_name)
    errors = {m[1] for x in failures if (m := re.search(r'error_type="([^"]+)"', x))}
    print("\n".join(failures))
    # a fault run worth the name
    assert len(reasons) >= 6 and {"forced", "http_error", "idle_timeout"} <= set(reasons), reasons
    assert {"http_5xx", "http_4xx", "connect", "timeout"} <= errors, errors
    for m in CATALOG:
        if m.component is Component.RUNNER:
            assert m.budget is not None
            assert scrape.get(m.name, 0) <= m.budget.scrape, report
            assert otlp.get(m.name, 0) <= m.budget.otlp, report
    for counts in (steady[0], scrape):
        assert sum(counts.values()) <= c.SERIES_BUDGET, report  # target_info included
    assert sum(steady[1].values()) + c.TARGET_INFO_SERIES <= c.SERIES_BUDGET
    assert sum(otlp.values()) + c.TARGET_INFO_SERIES <= c.SERIES_BUDGET, report


def _lines(text: str, part: str) -> list[str]:
    return [x for x in text.splitlines() if part in x and not x.startswith("#")]


def _metrics(r: RunnerProcess, name: str) -> str:
    """The runner's `/metrics` sample lines containing `name` (all of them for "")."""
    body = http_json("GET", r.status_url + "/metrics")[2]
    return "\n".join(_lines(str(body), name))
