"""The "Pull-wake fleet" dashboard: every runner at once, and the seed's case first.

The top answers "which runner is lying?": a table of every runner's state
and stream/heartbeat signals side by side, then a table holding exactly the
runners whose stream is connected while their heartbeats fail (empty when
healthy).  Then the stream availability SLO (`slopanels`), fleet rates from
the recording rules, and the firing pullwake alerts straight from
Alertmanager.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import alertgroups, table
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from pullwake.core import catalog as c
from pullwake.dashboards import queries as q
from pullwake.dashboards import recording, slopanels
from pullwake.dashboards.config import Config
from pullwake.dashboards.panels import (
    REF_IDS,
    nav_links,
    prom_datasource_variable,
    runner_link,
    runner_list,
    table_panel,
    target,
    threshold_line,
    timeseries_panel,
    transformation,
    value_texts,
)
from pullwake.dashboards.rules import recording_names

TITLE = "Pull-wake fleet"


def _runner_table(config: Config) -> table.Panel:
    rec = recording_names(config)
    columns = [
        ("state", q.current_state(config)),
        ("stream connected", q.connected(config)),
        (
            "last heartbeat ok",
            f"{q.per_runner(config, c.HEARTBEAT_CONSECUTIVE_FAILURES)} == bool 0",
        ),
        ("since heartbeat success", rec["heartbeat_age"]),
        ("stream age", q.per_runner(config, c.STREAM_AGE)),
        ("reconnects 1h", f"round({rec['reconnects_1h']})"),
    ]
    targets = [
        target(config, expr, ref=REF_IDS[i], instant=True, table_format=True)
        for i, (_, expr) in enumerate(columns)
    ]
    rename = {f"Value #{REF_IDS[i]}": name for i, (name, _) in enumerate(columns)}
    p = table_panel(
        config,
        "Runners",
        "One row per runner: what it believes about its stream next to what its heartbeats "
        "say.  A runner that shows connected with heartbeats failing is the seed bug.",
        targets,
        height=9,
    )
    return (
        p.with_transformation(transformation("merge"))
        .with_transformation(
            transformation(
                "organize",
                {
                    "excludeByName": {"Time": True, "Value #A": True},
                    "renameByName": {k: v for k, v in rename.items() if k != "Value #A"},
                    "indexByName": {},
                },
            )
        )
        .override_by_name(
            "stream connected",
            [
                _mappings({"1": ("connected", "green"), "0": ("not connected", "orange")}),
                _color_text(),
            ],
        )
        .override_by_name(
            "last heartbeat ok",
            [_mappings({"1": ("ok", "green"), "0": ("failing", "red")}), _color_text()],
        )
        .override_by_name(
            "since heartbeat success", _seconds(config.thresholds.heartbeat_stale_seconds)
        )
        .override_by_name("stream age", _seconds(None))
        .override_by_name(q.RUNNER, [runner_link(config)])
    )


def _seconds(red_from: float | None) -> list[dm.DynamicConfigValue]:
    """Whole seconds; with `red_from`, the cell turns red where the alerts' threshold is."""
    out = [
        dm.DynamicConfigValue(id_val="unit", value="s"),
        dm.DynamicConfigValue(id_val="decimals", value=0),
    ]
    if red_from is not None:
        steps = [dm.Threshold(value=None, color="green"), dm.Threshold(value=red_from, color="red")]
        out += [
            dm.DynamicConfigValue(
                id_val="thresholds",
                value=dm.ThresholdsConfig(mode=dm.ThresholdsMode.ABSOLUTE, steps=steps),
            ),
            _color_text(),
        ]
    return out


def _color_text() -> dm.DynamicConfigValue:
    """Cells take the colour of their value mapping or threshold (tables default to none)."""
    return dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"})


def _mappings(mapping: dict[str, tuple[str, str]]) -> dm.DynamicConfigValue:
    return dm.DynamicConfigValue(id_val="mappings", value=value_texts(mapping))


def _lying_runners(config: Config) -> table.Panel:
    return runner_list(
        config,
        "Stream connected while heartbeats fail",
        "Exactly the runners whose stream reports connected while their heartbeats keep "
        "failing (PullWakeStreamConnectedWhileHeartbeatsFailing).  Empty when healthy.",
        recording_names(config)["connected_while_failing"],
        "none: every connected runner's heartbeats succeed",
        height=6,
    )


def build(config: Config) -> db.Dashboard:
    rec = recording_names(config)
    fleet_rec = recording.recording_names(config)
    w = config.rate_window
    return (
        db.Dashboard(TITLE)
        .uid(config.dashboard_uids.fleet)
        .tags(["pullwake"])
        .refresh(config.dashboard_refresh)
        .time("now-1h", "now")
        .timezone("utc")
        .link(nav_links())
        .with_variable(prom_datasource_variable(config))
        .with_row(db.Row("Runners"))
        .with_panel(_runner_table(config))
        .with_panel(_lying_runners(config))
        .with_row(db.Row("Stream availability SLO"))
        .with_panel(slopanels.availability(config))
        .with_panel(slopanels.budget(config))
        .with_panel(slopanels.burning_runners(config))
        .with_panel(slopanels.sli(config))
        .with_panel(slopanels.burn_rates(config))
        .with_row(db.Row("Streams and heartbeats"))
        .with_panel(
            timeseries_panel(
                config,
                "Reconnect rate by reason",
                f"Reconnects per second across the fleet by the reason the previous session "
                f"ended ({w} rate).  `rotated` is the server's planned SSE rotation.",
                [target(config, rec["reconnect_rate"], "{{" + q.REASON + "}}")],
                unit="ops",
            )
        )
        .with_panel(
            timeseries_panel(
                config,
                "Heartbeat failure rate by error type",
                f"Failed heartbeats per second across the fleet ({w} rate).",
                [target(config, rec["heartbeat_failure_rate"], "{{" + q.ERROR_TYPE + "}}")],
                unit="ops",
            )
        )
        .with_row(db.Row("Wakes and claims"))
        .with_panel(
            threshold_line(
                timeseries_panel(
                    config,
                    "Wake latency p50 / p99",
                    "From a wake's publication to its handler starting, across the fleet.",
                    [target(config, rec["wake_latency_quantile"], "p{{quantile}}")],
                    unit="s",
                ),
                (None, "green"),
                (config.thresholds.wake_latency_p99_seconds, "red"),
            )
        )
        .with_panel(
            timeseries_panel(
                config,
                "Wakes by outcome",
                f"Wakes per second across the fleet, by final outcome ({w} rate).  "
                "fenced: the claim was lost (completion or lease heartbeat refused), the "
                "work is announced again.",
                [target(config, fleet_rec["wake_rate"], "{{" + q.OUTCOME + "}}")],
                unit="ops",
            )
        )
        .with_panel(
            runner_list(
                config,
                "Runners losing claims",
                "Runners whose claims were lost (completion or lease heartbeat refused as "
                f"fenced or rejected) within {config.thresholds.completions_fenced_window} "
                "(PullWakeCompletionsFenced once sustained): their handlers outlive the "
                "claim lease.  Empty when healthy.",
                q.guarded(
                    config,
                    f"{q.claims_lost(config, config.thresholds.completions_fenced_window)} > 0",
                ),
                "none: every claim held",
                height=8,
                span=12,
            )
        )
        .with_row(db.Row("Alerts"))
        .with_panel(
            alertgroups.Panel()
            .title("Firing pullwake alerts")
            .description("Alert groups from Alertmanager, pullwake alerts only.")
            .alertmanager(config.datasources.alertmanager_name)
            .labels('alertname=~"PullWake.*"')
            .expand_all(True)
            .span(24)
            .height(8)
        )
    )
