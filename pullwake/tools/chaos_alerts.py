"""Real Prometheus (+ Alertmanager) beside a chaos run: which alerts went pending,
firing and resolved, and when.

The project's own alert rules (`pullwake.dashboards.rules`) are written with
every `for:` scaled down (a run lasts minutes, the shipped `for:` are minutes),
Prometheus scrapes the runners' and the server's `/metrics` every second and
evaluates every second, and a thread polls `/api/v1/alerts`, turning changes
into `alert` events.  Used only when the binaries are on PATH.
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pullwake.tools.chaos_record import EventLog, iso_to_unix
from pullwake.tools.supervise import ChildSpec, HttpReady, Supervisor

FOR_SCALE = 1 / 20  # 1m -> 3s, 2m -> 6s, 5m -> 15s


def binaries() -> tuple[str, str | None] | None:
    """(prometheus, alertmanager or None) when Prometheus is installed."""
    prom = shutil.which("prometheus")
    if prom is None:
        return None
    return prom, shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def alert_changes(
    before: dict[tuple[str, str], str], alerts: Sequence[dict[str, Any]]
) -> tuple[dict[tuple[str, str], str], list[tuple[str, str, str, float | None]]]:
    """Pure diff of two `/api/v1/alerts` views -> (new view, [(alert, runner, state, t)]).

    A pending alert is dated by its `activeAt`; firing and resolved by the poll
    (t None: the caller stamps it).
    """
    now: dict[tuple[str, str], str] = {}
    active_at: dict[tuple[str, str], float | None] = {}
    for a in alerts:
        labels = a.get("labels") or {}
        key = (str(labels.get("alertname", "?")), str(labels.get("runner_id", "")))
        state = str(a.get("state", ""))
        if state in ("pending", "firing"):
            if now.get(key) != "firing":  # several series per key: firing wins
                now[key] = state
            active_at[key] = iso_to_unix(a.get("activeAt"))
    changes: list[tuple[str, str, str, float | None]] = []
    for key, state in now.items():
        old = before.get(key)
        if old == state:
            continue
        if old is None:
            changes.append((key[0], key[1], "pending", active_at.get(key)))
        if state == "firing":
            changes.append((key[0], key[1], "firing", None))
    for key in before:
        if key not in now:
            changes.append((key[0], key[1], "resolved", None))
    return now, changes


class AlertWatch(threading.Thread):
    """Starts Prometheus/Alertmanager under `sup`, then records alert changes."""

    def __init__(
        self,
        sup: Supervisor,
        log: EventLog,
        workdir: Path,
        targets: dict[str, list[str]],
        prometheus: str,
        alertmanager: str | None,
        ports: tuple[int, int],
    ) -> None:
        super().__init__(name="chaos-alerts", daemon=True)
        self.sup, self.log, self.workdir = sup, log, workdir
        self.targets, self.prometheus, self.alertmanager = targets, prometheus, alertmanager
        self.prom_port, self.am_port = ports
        self._halt = threading.Event()
        self.active = 0  # alerts pending or firing at the last poll

    def __repr__(self) -> str:
        return f"<AlertWatch prometheus=127.0.0.1:{self.prom_port}>"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"

    def prepare(self) -> None:
        from pullwake.dashboards.config import DEFAULT
        from pullwake.dashboards.rules import rule_files

        rules = self.workdir / "rules"
        rules.mkdir(parents=True, exist_ok=True)
        for name, content in rule_files(DEFAULT.scaled(FOR_SCALE)).items():
            (rules / name).write_text(yaml.safe_dump(content, sort_keys=False))
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": "1s",
                "evaluation_interval": "1s",
                "scrape_timeout": "900ms",
            },
            "rule_files": [str(rules / "*.yml")],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": t}]}
                for job, t in self.targets.items()
            ],
        }
        if self.alertmanager:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{self.am_port}"]}]}]
            }
            am = {
                "route": {
                    "receiver": "null",
                    "group_wait": "1s",
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                },
                "receivers": [{"name": "null"}],
            }
            (self.workdir / "alertmanager.yml").write_text(yaml.safe_dump(am))
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))

    def launch(self) -> None:
        self.prepare()
        w = self.workdir
        if self.alertmanager:
            am = self.sup.start(
                ChildSpec(
                    "alertmanager",
                    [
                        self.alertmanager,
                        f"--config.file={w / 'alertmanager.yml'}",
                        f"--storage.path={w / 'am-data'}",
                        f"--web.listen-address=127.0.0.1:{self.am_port}",
                        "--cluster.listen-address=",
                        "--log.level=warn",
                    ],
                    log=w / "alertmanager.log",
                    ready=HttpReady(f"http://127.0.0.1:{self.am_port}/-/ready"),
                ),
                timeout=30,
            )
            self.log.emit("process", name="alertmanager", pid=am.pid)
        prom = self.sup.start(
            ChildSpec(
                "prometheus",
                [
                    self.prometheus,
                    f"--config.file={w / 'prometheus.yml'}",
                    f"--storage.tsdb.path={w / 'prom-data'}",
                    f"--web.listen-address=127.0.0.1:{self.prom_port}",
                    "--log.level=warn",
                ],
                log=w / "prometheus.log",
                ready=HttpReady(f"{self.url}/-/ready"),
            ),
            timeout=30,
        )
        self.log.emit("process", name="prometheus", pid=prom.pid)

    def alerts(self) -> list[dict[str, Any]] | None:
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/alerts", timeout=2.0) as resp:
                body = json.loads(resp.read())
            return list(body["data"]["alerts"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def run(self) -> None:
        view: dict[tuple[str, str], str] = {}
        while not self._halt.wait(0.5):
            alerts = self.alerts()
            if alerts is None:
                continue
            view, changes = alert_changes(view, alerts)
            self.active = len(view)
            for name, runner, state, t in changes:
                self.log.emit("alert", t, alert=name, runner=runner or None, state=state)

    def stop(self) -> None:
        self._halt.set()
