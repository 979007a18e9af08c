"""Alertmanager config: group per alert and runner, route by severity, one webhook.

Both severities go to the same webhook (`Config.alertmanager_webhook_url`,
the `pullwake alerts sink` in the demo stack) through separate receivers, so
a deployment can point critical alerts at a pager without touching routing.
Resolved notifications are sent: the sink, and the end-to-end test, see an
alert end as well as begin.  The critical "connected while heartbeats fail"
alert inhibits the plain heartbeat warning for the same runner.
"""

from __future__ import annotations

from typing import Any

from pullwake.dashboards import queries as q
from pullwake.dashboards.config import Config

RECEIVER_CRITICAL = "pullwake-critical"
RECEIVER_WARNING = "pullwake-warning"


def _webhook(name: str, config: Config) -> dict[str, Any]:
    return {
        "name": name,
        "webhook_configs": [{"url": config.alertmanager_webhook_url, "send_resolved": True}],
    }


def alertmanager_config(config: Config) -> dict[str, Any]:
    t = config.alertmanager
    return {
        "global": {"resolve_timeout": t.resolve_timeout},
        "route": {
            "receiver": RECEIVER_WARNING,
            "group_by": ["alertname", q.RUNNER],
            "group_wait": t.group_wait,
            "group_interval": t.group_interval,
            "repeat_interval": t.repeat_interval,
            "routes": [
                {"receiver": RECEIVER_CRITICAL, "matchers": ['severity="critical"']},
                {"receiver": RECEIVER_WARNING, "matchers": ['severity="warning"']},
            ],
        },
        "inhibit_rules": [
            {
                "source_matchers": ['alertname="PullWakeStreamConnectedWhileHeartbeatsFailing"'],
                "target_matchers": ['alertname="PullWakeHeartbeatsFailing"'],
                "equal": [q.RUNNER],
            }
        ],
        "receivers": [_webhook(RECEIVER_CRITICAL, config), _webhook(RECEIVER_WARNING, config)],
    }
