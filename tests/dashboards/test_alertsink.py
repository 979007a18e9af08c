"""`pullwake alerts sink`: parsing as pure functions, then the real process over HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pullwake.tools.alertsink import BadNotification, format_line, parse_notification
from tests.dashboards.promstack import SinkProcess
from tests.support.procs import http_json, running, wait_until


def notification(status: str = "firing", runner: str = "r1") -> dict[str, Any]:
    """The shape Alertmanager 0.25 POSTs to a webhook (version 4)."""
    return {
        "version": "4",
        "groupKey": '{}:{alertname="PullWakeHeartbeatsFailing"}',
        "status": status,
        "receiver": "pullwake-warning",
        "groupLabels": {"alertname": "PullWakeHeartbeatsFailing"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://am",
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": status,
                "labels": {
                    "alertname": "PullWakeHeartbeatsFailing",
                    "runner_id": runner,
                    "severity": "warning",
                },
                "annotations": {"summary": "A runner's heartbeats are failing."},
                "startsAt": "2026-01-01T00:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prom",
                "fingerprint": "abc",
            }
        ],
    }


def test_parse_and_format() -> None:
    [a] = parse_notification(notification(), "T")
    assert (a.status, a.alertname, a.receiver) == (
        "firing",
        "PullWakeHeartbeatsFailing",
        "pullwake-warning",
    )
    assert a.labels["runner_id"] == "r1"
    assert format_line(a) == (
        "T FIRING PullWakeHeartbeatsFailing runner_id=r1 severity=warning -> pullwake-warning: "
        "A runner's heartbeats are failing."
    )


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"alerts": "x"},
        {"alerts": [1]},
        {"alerts": [{"labels": {"a": 1}, "status": "firing"}]},
        {"alerts": [{"labels": {}, "status": "odd"}]},
    ],
)
def test_parse_rejects_what_is_not_a_notification(payload: Any) -> None:
    with pytest.raises(BadNotification):
        parse_notification(payload, "T")


def test_sink_prints_records_and_serves(tmp_path: Path) -> None:
    sink = SinkProcess(tmp_path).start()
    with running(sink):
        code, _, body = http_json("POST", sink.url, notification())
        assert (code, body) == (200, {"received": 1})
        code, _, _ = http_json("POST", sink.url + "any/path", notification("resolved", "r2"))
        assert code == 200
        code, _, body = http_json("POST", sink.url, "not a notification")
        assert code == 400 and "alerts" in body["error"]
        req = urllib.request.Request(sink.url, data=b"{", method="POST")  # not JSON at all
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 400
        assert [a["labels"]["runner_id"] for a in sink.received()] == ["r1", "r2"]
        assert [a["status"] for a in sink.received(status="resolved")] == ["resolved"]
        assert sink.received(alertname="Nope") == []
        recorded = sink.recorded()
        assert [(r["status"], r["alertname"]) for r in recorded] == [
            ("firing", "PullWakeHeartbeatsFailing"),
            ("resolved", "PullWakeHeartbeatsFailing"),
        ]
        wait_until(lambda: "RESOLVED PullWakeHeartbeatsFailing" in sink.output(), 5, what="print")
    out = sink.output()
    assert "FIRING PullWakeHeartbeatsFailing runner_id=r1 severity=warning" in out
    assert "Traceback" not in out
    json.dumps(recorded)


def test_sink_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    for args in (
        ["--listen", "nope"],
        ["--record", str(tmp_path / "missing/dir/f.jsonl"), "--listen", "127.0.0.1:0"],
    ):
        res = subprocess.run(
            [sys.executable, "-m", "pullwake", "alerts", "sink", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert res.returncode == 2, res.stderr
        assert res.stderr.startswith("pullwake: error:") and "Traceback" not in res.stderr


def test_sink_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    first = SinkProcess(tmp_path).start()
    with running(first):
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "pullwake",
                "alerts",
                "sink",
                "--listen",
                f"127.0.0.1:{first.port}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert res.returncode == 2
    assert res.stderr.startswith("pullwake: error: cannot listen on 127.0.0.1:")
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_sink_ctrl_c_exits_cleanly_keeping_the_record(tmp_path: Path) -> None:
    sink = SinkProcess(tmp_path).start()
    with running(sink):
        assert http_json("POST", sink.url, notification())[0] == 200
        sink.signal(signal.SIGINT)
        assert sink.wait(10) == 0
    assert "Traceback" not in sink.output()
    assert [r["alertname"] for r in sink.recorded()] == ["PullWakeHeartbeatsFailing"]
