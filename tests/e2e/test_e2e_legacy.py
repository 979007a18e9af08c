"""The seed's picture, from metrics alone: the legacy profile during an outage.

`--profile legacy` reproduces the original runner (long-poll reads whose
failures are retried inside the stream layer and never reported).  With the
server killed, a real Prometheus scraping the runner must show what the seed
report needed curl and log archaeology for: `pullwake_stream_connected` 1 and
`pullwake_stream_age_seconds` still growing while
`pullwake_heartbeat_consecutive_failures` climbs.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from pullwake.core import catalog as c
from tests.support.procs import RunnerProcess, ServerProcess, running, wait_until
from tests.support.prometheus import PrometheusProcess, needs_prometheus

pytestmark = [pytest.mark.slow, needs_prometheus]

RID = "tel-legacy"


def test_legacy_profile_lies_and_the_metrics_show_it(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, keepalive=0.5, long_poll_timeout=1.0)
    runner = RunnerProcess(
        tmp_path,
        server.url,
        RID,
        extra=["--profile", "legacy", "--heartbeat-interval", "0.5"],
        env={"OTEL_SDK_DISABLED": "false"},
    )
    prom = PrometheusProcess(
        tmp_path, scrape={"pullwake-runner": [f"127.0.0.1:{runner.status_port}"]}
    )
    sel = f'{{runner_id="{RID}"}}'
    with running(prom, server, runner):
        server.start()
        prom.start()
        runner.start()
        wait_until(lambda: runner.status()["state"] == "running.streaming", 15, what="streaming")
        wait_until(
            lambda: prom.value(f"{c.STREAM_CONNECTED.prom_name}{sel}") == 1,
            20,
            interval=0.2,
            what="connected in Prometheus",
        )
        server.stop(signal.SIGKILL)
        q_cf = f"{c.HEARTBEAT_CONSECUTIVE_FAILURES.prom_name}{sel}"
        wait_until(lambda: (prom.value(q_cf) or 0) >= 2, 20, interval=0.2, what="failures >= 2")
        age_1 = prom.value(f"{c.STREAM_AGE.prom_name}{sel}")
        failures_1 = prom.value(q_cf)
        assert age_1 is not None and failures_1 is not None
        # a few scrapes later: still "connected", older, and more failures
        wait_until(
            lambda: (prom.value(q_cf) or 0) >= failures_1 + 2,
            20,
            interval=0.2,
            what="consecutive failures climbing",
        )
        assert prom.value(f"{c.STREAM_CONNECTED.prom_name}{sel}") == 1
        age_2 = prom.value(f"{c.STREAM_AGE.prom_name}{sel}")
        assert age_2 is not None and age_2 > age_1 + 0.5, (age_1, age_2)
        assert (
            prom.value(f'{c.RUNNER_STATE.prom_name}{{runner_id="{RID}",state="running.streaming"}}')
            == 1
        )
        # the stream never reported the outage: no reconnect of any failure kind
        failed = prom.value(
            f'sum({c.STREAM_RECONNECTS.prom_name}{{runner_id="{RID}",reason!="rotated"}})'
        )
        assert not failed, failed
        # the lie, in one PromQL expression an alert can use
        lie = prom.vector(
            f"{c.STREAM_CONNECTED.prom_name}{sel} == 1 and on(runner_id) "
            f"{c.HEARTBEAT_CONSECUTIVE_FAILURES.prom_name}{sel} >= 3"
        )
        assert len(lie) == 1
