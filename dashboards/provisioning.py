"""Grafana provisioning: the three datasources with fixed uids, and the dashboards folder.

The Prometheus datasource links exemplars to the Tempo datasource by trace
id, which is how the runner dashboard goes from a session to its trace.
"""

from __future__ import annotations

from typing import Any

from pullwake.dashboards.config import Config


def datasources(config: Config) -> dict[str, Any]:
    ds = config.datasources
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "type": "prometheus",
                "uid": ds.prometheus,
                "access": "proxy",
                "url": ds.prometheus_url,
                "isDefault": True,
                "editable": False,
                "jsonData": {
                    "timeInterval": "15s",
                    "exemplarTraceIdDestinations": [
                        {"name": ds.exemplar_trace_id_label, "datasourceUid": ds.tempo}
                    ],
                },
            },
            {
                "name": "Tempo",
                "type": "tempo",
                "uid": ds.tempo,
                "access": "proxy",
                "url": ds.tempo_url,
                "editable": False,
                "jsonData": {
                    "tracesToMetrics": {"datasourceUid": ds.prometheus},
                    "serviceMap": {"datasourceUid": ds.prometheus},
                },
            },
            {
                "name": ds.alertmanager_name,
                "type": "alertmanager",
                "uid": ds.alertmanager,
                "access": "proxy",
                "url": ds.alertmanager_url,
                "editable": False,
                "jsonData": {"implementation": "prometheus", "handleGrafanaManagedAlerts": False},
            },
        ],
    }


def dashboard_provider(config: Config) -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "pullwake",
                "folder": "pullwake",
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 30,
                "options": {
                    "path": config.grafana_dashboards_path,
                    "foldersFromFilesStructure": False,
                },
            }
        ],
    }
