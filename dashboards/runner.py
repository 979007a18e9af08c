"""The "Pull-wake runner" dashboard: one runner (variable `runner_id`) in depth.

Its centre is the seed's picture: stream age climbing next to seconds since
the last successful heartbeat.  A healthy runner shows both small (the age
resets at every rotation); the seed bug shows the age climbing steadily while
the heartbeat age climbs too.  Sessions link to their traces through
exemplars (Prometheus datasource -> Tempo) and a TraceQL table.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common, statetimeline, table
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from pullwake.core import catalog as c
from pullwake.core.protocol import RunnerState
from pullwake.dashboards import queries as q
from pullwake.dashboards.config import Config
from pullwake.dashboards.panels import (
    nav_links,
    prom_datasource_variable,
    prom_ds,
    target,
    tempo_datasource_variable,
    tempo_ds,
    timeseries_panel,
    traceql,
    value_texts,
)

TITLE = "Pull-wake runner"
STATE_COLORS = {
    RunnerState.STOPPED: "#8e8e8e",
    RunnerState.CONNECTING: "yellow",
    RunnerState.STREAMING: "green",
    RunnerState.RECONNECTING: "orange",
    RunnerState.STOPPING: "purple",
}
VAR = q.RUNNER
RATE = "$__rate_interval"
METHOD, STATUS = q.METHOD, q.STATUS


def _m() -> str:
    return f'{q.RUNNER}="${VAR}"'


def _state_timeline(config: Config) -> statetimeline.Panel:
    return (
        statetimeline.Panel()
        .title("State")
        .description(
            "The runner's state machine over time: green streaming, yellow connecting, "
            "orange reconnecting."
        )
        .datasource(prom_ds(config))
        .with_target(target(config, q.state_code(config, _m()), "state"))
        .mappings(
            value_texts(
                {
                    str(q.STATE_CODES[state.value]): (state.value, STATE_COLORS[state])
                    for state in RunnerState
                }
            )
        )
        .show_value(cm.VisibilityMode.AUTO)
        .merge_values(True)
        .line_width(0)
        .fill_opacity(70)
        .legend(common.VizLegendOptions().show_legend(False))
        .span(24)
        .height(6)
    )


def _sessions_table(config: Config) -> table.Panel:
    return (
        table.Panel()
        .title("Recent sessions (traces)")
        .description(
            "Stream session traces of this runner in Tempo (failed connect attempts too, "
            "with their backoff); click one to open it."
        )
        .datasource(tempo_ds(config))
        .with_target(
            traceql(
                config,
                f'{{ .{c.RUNNER_ID} = "${VAR}" && '
                f'(name = "{c.SPAN_SESSION}" || name = "{c.SPAN_CONNECT}") }}',
            )
        )
        .span(12)
        .height(8)
        .show_header(True)
    )


def build(config: Config) -> db.Dashboard:
    m = _m()
    return (
        db.Dashboard(TITLE)
        .uid(config.dashboard_uids.runner)
        .tags(["pullwake"])
        .refresh(config.dashboard_refresh)
        .time("now-1h", "now")
        .timezone("utc")
        .link(nav_links())
        .with_variable(prom_datasource_variable(config))
        .with_variable(tempo_datasource_variable(config))
        .with_variable(
            db.QueryVariable(VAR)
            .label("runner")
            .datasource(prom_ds(config))
            .query(f"label_values({c.RUNNER_STATE.prom_name}, {q.RUNNER})")
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        )
        .with_row(db.Row("Stream"))
        .with_panel(_state_timeline(config))
        .with_panel(
            timeseries_panel(
                config,
                "Stream age vs seconds since heartbeat success",
                "The seed's picture: stream age climbing while the last successful "
                "heartbeat falls further behind means the stream is dead but believed alive.",
                [
                    target(config, q.per_runner(config, c.STREAM_AGE, m), "stream age", ref="A"),
                    target(
                        config,
                        q.seconds_since_heartbeat_success(config, m),
                        "since heartbeat success",
                        ref="B",
                    ),
                ],
                unit="s",
            )
        )
        .with_panel(
            timeseries_panel(
                config,
                "Idle vs idle timeout",
                "Seconds since the last byte read, against the watchdog's limit "
                "(0 = watchdog off).",
                [
                    target(config, q.per_runner(config, c.STREAM_IDLE, m), "idle", ref="A"),
                    target(
                        config,
                        q.per_runner(config, c.STREAM_IDLE_TIMEOUT, m),
                        "idle timeout",
                        ref="B",
                    ),
                ],
                unit="s",
            )
        )
        .with_panel(
            timeseries_panel(
                config,
                "Reconnects by reason",
                "Reconnects per interval by the reason the previous session ended.",
                [
                    target(
                        config,
                        q.increase_by(config, c.STREAM_RECONNECTS, RATE, (q.REASON,), m),
                        "{{" + q.REASON + "}}",
                    )
                ],
            )
        )
        .with_panel(
            timeseries_panel(
                config,
                "Wake latency p50 / p99 (exemplars -> traces)",
                "From a wake's publication to its handler starting; exemplar dots open the "
                "wake's trace.  Session lifetimes and end reasons: the sessions table.",
                [
                    target(
                        config,
                        q.quantile(config, quant, c.WAKE_LATENCY, RATE, m),
                        f"p{quant:g}",
                        ref=ref,
                        exemplar=True,
                    )
                    for ref, quant in (("A", 0.5), ("B", 0.99))
                ],
                unit="s",
            )
        )
        .with_panel(_sessions_table(config))
        .with_row(db.Row("Heartbeats and wakes"))
        .with_panel(
            timeseries_panel(
                config,
                "HTTP request duration p50 / p99 (OTLP)",
                "The runner's requests (stream connect, heartbeats, claims, callbacks) by "
                "method, from http.client.request.duration - exported over OTLP only.",
                [
                    target(
                        config,
                        q.quantile(config, quant, c.HTTP_CLIENT_DURATION, RATE, m, by=(METHOD,)),
                        f"p{quant:g} {{{{{METHOD}}}}}",
                        ref=ref,
                        exemplar=True,
                    )
                    for ref, quant in (("A", 0.5), ("B", 0.99))
                ],
                unit="s",
            )
        )
        .with_panel(
            timeseries_panel(
                config,
                "Wakes by outcome",
                "Wakes of this runner per second, by final outcome (skipped: the claim "
                "found nothing for us; fenced: the claim was lost - completion or lease "
                "heartbeat refused - and the server announces the work again).",
                [
                    target(
                        config,
                        q.rate_by(config, c.WAKES, RATE, (q.OUTCOME,), m),
                        "{{" + q.OUTCOME + "}}",
                    )
                ],
                unit="ops",
            )
        )
        .with_panel(
            timeseries_panel(
                config,
                "HTTP requests by status (OTLP)",
                "The runner's requests per second by answer (status code, or the error "
                "when none came): claims (200/204/409), callbacks (502 = refused), "
                "heartbeats.  Exported over OTLP only.",
                [
                    target(
                        config,
                        q.count_rate_by(
                            config, c.HTTP_CLIENT_DURATION, RATE, (STATUS, q.ERROR_TYPE), m
                        ),
                        f"{{{{{STATUS}}}}} {{{{{q.ERROR_TYPE}}}}}",
                    )
                ],
                unit="reqps",
            )
        )
    )
