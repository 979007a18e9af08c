"""What the SLO rules cost on a real Prometheus holding three days of runner states.

Three days (the longest window) of 15 s scrapes of the state gauge for a
fleet of runners are backfilled with `promtool tsdb create-blocks-from
openmetrics`; Prometheus then loads the generated rules and evaluates them
every second.  The test asserts the recorded values are right for a runner
whose history is known, and that one evaluation of the whole SLO group stays
far below the 15 s rule interval.  Run with `-s` to see the figures (quoted in
docs/slo.md).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pullwake.core import catalog as c
from pullwake.core.protocol import RunnerState
from pullwake.dashboards import slo
from pullwake.dashboards.config import DEFAULT
from tests.dashboards.promstack import write_deploy
from tests.support.procs import http_json, running, wait_until
from tests.support.prometheus import PROMTOOL, PrometheusProcess, needs_prometheus

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, needs_prometheus]

RUNNERS = 10
STEP_S = 15
DAYS = 3
# r0 is caught reconnecting once every 40 scrapes (2.5 %); the others stream throughout.
BAD_EVERY = 40


def _openmetrics(path: Path, end: int) -> None:
    """The state gauge of RUNNERS runners, one sample every STEP_S, ending at `end`."""
    name = c.RUNNER_STATE.prom_name
    start = end - DAYS * 86400
    with path.open("w") as f:
        f.write(f"# TYPE {name} gauge\n")
        for t in range(start, end + 1, STEP_S):
            i = (t - start) // STEP_S
            for r in range(RUNNERS):
                now = (
                    RunnerState.RECONNECTING
                    if r == 0 and i % BAD_EVERY == BAD_EVERY - 1
                    else RunnerState.STREAMING
                )
                for state in RunnerState:
                    v = 1 if state is now else 0
                    f.write(f'{name}{{runner_id="r{r}",state="{state.value}"}} {v} {t}\n')
        # The 5-minute buckets the long windows add up (slo.bucket_rules), as Prometheus
        # would have recorded them over these 3 days: at each multiple of 300 s, the
        # samples of the 5 minutes up to it.
        per = slo.BUCKET_S // STEP_S
        for kind in ("bad", "good"):
            bucket = slo.bucket_name(kind)
            f.write(f"# TYPE {bucket} gauge\n")
            for b in range(-(-(start + 1) // slo.BUCKET_S) * slo.BUCKET_S, end + 1, slo.BUCKET_S):
                first = max((b - start) // STEP_S - per + 1, 0)
                idx = range(first, (b - start) // STEP_S + 1)
                for r in range(RUNNERS):
                    bad = sum(1 for i in idx if r == 0 and i % BAD_EVERY == BAD_EVERY - 1)
                    v = bad if kind == "bad" else len(idx) - bad
                    f.write(f'{bucket}{{runner_id="r{r}"}} {v} {b}\n')
        f.write("# EOF\n")


def _groups(prom: PrometheusProcess) -> list[dict[str, Any]]:
    _, _, body = http_json("GET", f"{prom.url}/api/v1/rules", timeout=10.0)
    return list(body["data"]["groups"])


def test_slo_rules_on_three_days_of_a_fleet(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    deploy = write_deploy(tmp_path, DEFAULT)
    rules = tmp_path / "slo-rules"
    rules.mkdir()
    (rules / "slo.yml").write_text((deploy / "prometheus/rules/pullwake-slo.yml").read_text())
    prom = PrometheusProcess(tmp_path, rules_dir=rules)
    # Backfilled blocks must end before "now" minus the head's range; an hour back is safe.
    end = int(time.time()) // STEP_S * STEP_S - 3600
    om = tmp_path / "states.om"
    _openmetrics(om, end)
    data = tmp_path / f"prom-data-{prom.port}"
    res = subprocess.run(
        [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    om.unlink()
    with running(prom.start(timeout=120)):

        def evaluated() -> bool:
            return all(g["lastEvaluation"][:4] != "0001" for g in _groups(prom))

        wait_until(evaluated, 60, interval=1.0, what="the SLO group evaluated")
        # Several evaluations: report the slowest seen.
        worst: dict[str, float] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            groups = _groups(prom)  # one per window, one per window pair (slo.rule_file)
            assert sorted(g["name"] for g in groups) == sorted(slo.group_order(DEFAULT))
            for group in groups:
                worst["group"] = max(worst.get("group", 0.0), group["evaluationTime"])
                for r in group["rules"]:
                    key = r["name"] + ("" if r["type"] == "recording" else str(r["labels"]))
                    worst[key] = max(worst.get(key, 0.0), r["evaluationTime"])
            time.sleep(1.0)
        # The windows end an hour before now (the data does): values of runner r0 over
        # the 3d window are its share of bad samples, within one sample.
        ratio = prom.value(f'{slo.record_name("runner", "3d")}{{runner_id="r0"}}')
        assert ratio is not None and abs(ratio - 1 / BAD_EVERY) < 1e-3, ratio
        fleet = prom.value(slo.record_name("fleet", "3d"))
        assert fleet is not None and abs(fleet - 1 / BAD_EVERY / RUNNERS) < 1e-3, fleet
        samples = RUNNERS * len(RunnerState) * DAYS * 86400 // STEP_S
        slowest = sorted(((v, k) for k, v in worst.items() if k != "group"), reverse=True)[:3]
        print(
            f"\nSLO rule group over {RUNNERS} runners x {DAYS}d of {STEP_S}s scrapes "
            f"({samples:,} samples): slowest group {worst['group'] * 1000:.0f} ms per evaluation; "
            "slowest rules: " + ", ".join(f"{k} {v * 1000:.0f} ms" for v, k in slowest)
        )
        assert worst["group"] < 5.0  # far below the 15 s evaluation interval
