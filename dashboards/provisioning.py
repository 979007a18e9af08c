"""Grafana provisioning: the datasources with fixed uids, and the dashboards folder.

The datasources link to each other by trace id, both ways:
- Prometheus exemplars -> Tempo (a session's duration dot opens its trace);
- Loki log lines -> Tempo (OTLP logs keep `trace_id` as structured metadata);
- Tempo spans -> Loki (the logs of the span's service within the span's time,
  filtered by its trace id) and -> Prometheus (the service map and span metrics
  Tempo's metrics generator remote-writes there).

Grafana expands `$NAME` / `${NAME}` in provisioning files from its environment,
so a literal `$` (Grafana's own `${__value.raw}` macros) is written `$$`.
"""

from __future__ import annotations

from typing import Any

from pullwake.dashboards.config import Config

# Loki's OTLP ingest keeps these, as structured metadata or index labels.
LOKI_TRACE_ID = "trace_id"
LOKI_SERVICE_LABEL = "service_name"  # from the resource attribute service.name


def literal(text: str) -> str:
    """`text` with every `$` escaped from Grafana's environment expansion."""
    return text.replace("$", "$$")


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
                    "tracesToMetrics": traces_to_metrics(config),
                    "serviceMap": {"datasourceUid": ds.prometheus},
                    "nodeGraph": {"enabled": True},
                    "search": {"hide": False},
                    "lokiSearch": {"datasourceUid": ds.loki},
                    "tracesToLogsV2": {
                        "datasourceUid": ds.loki,
                        "spanStartTimeShift": "-1m",
                        "spanEndTimeShift": "1m",
                        "tags": [{"key": "service.name", "value": LOKI_SERVICE_LABEL}],
                        "filterByTraceID": True,
                        "filterBySpanID": False,
                        "customQuery": True,
                        "query": literal(
                            "{${__tags}} | " + LOKI_TRACE_ID + ' = "${__trace.traceId}"'
                        ),
                    },
                },
            },
            {
                "name": "Loki",
                "type": "loki",
                "uid": ds.loki,
                "access": "proxy",
                "url": ds.loki_url,
                "editable": False,
                "jsonData": {
                    "maxLines": 1000,
                    "derivedFields": [
                        {
                            "name": "Trace",
                            "matcherType": "label",
                            "matcherRegex": LOKI_TRACE_ID,
                            "datasourceUid": ds.tempo,
                            "url": literal("${__value.raw}"),
                            "urlDisplayLabel": "Open trace in Tempo",
                        }
                    ],
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


# What Tempo's span-metrics processor writes (its `service` label is service.name).
SPAN_CALLS = "traces_spanmetrics_calls_total"
SPAN_LATENCY = "traces_spanmetrics_latency_bucket"


def traces_to_metrics(config: Config) -> dict[str, Any]:
    """A span's "Related metrics": its service's RED from Tempo's span metrics."""
    sel = "{$__tags}"
    err = '{$__tags, status_code="STATUS_CODE_ERROR"}'
    queries = [
        ("Request rate", f"sum(rate({SPAN_CALLS}{sel}[5m]))"),
        ("Error rate", f"sum(rate({SPAN_CALLS}{err}[5m]))"),
        ("p90 latency", f"histogram_quantile(0.9, sum by (le) (rate({SPAN_LATENCY}{sel}[5m])))"),
    ]
    return {
        "datasourceUid": config.datasources.prometheus,
        "spanStartTimeShift": "-5m",
        "spanEndTimeShift": "5m",
        "tags": [{"key": "service.name", "value": "service"}],
        "queries": [{"name": name, "query": literal(q)} for name, q in queries],
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
