"""The "Pull-wake server" dashboard: the server's side of every runner.

Open streams, published wakes, heartbeats received, leases, and the one
signal the runner cannot fake: runners whose diagnostics claim a connected
stream while the server holds no open read of it.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common, stat
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import common as cm

from pullwake.core import catalog as c
from pullwake.core import http_semconv as hs
from pullwake.dashboards import queries as q
from pullwake.dashboards import recording
from pullwake.dashboards.config import Config
from pullwake.dashboards.panels import (
    nav_links,
    prom_datasource_variable,
    prom_ds,
    runner_list,
    target,
    threshold_line,
    thresholds,
    timeseries_panel,
)

TITLE = "Pull-wake server"
RATE = "$__rate_interval"
ROUTE = c.prom_label(hs.HTTP_ROUTE)  # a route template, never a raw path
TOP = 20  # per-runner panels draw this many runners at each step

# One line per runner is unreadable past a few dozen runners, and at 10,000 runners
# (bench/bench_fleet.py) the range queries took 3.5-4.5 s to send Grafana 10,000
# series; grouping by runner_id first cost 1.4-2 s of engine time alone.  topk/bottomk
# over the server's own series (one per runner; the server is one process) keeps
# the panels under 1 s and shows the runners that matter.
TOP_NOTE = (
    f" At each step only the {TOP} runners with the highest values are drawn"
    " (a runner leaves the panel when it drops out of them)."
)
BOTTOM_NOTE = f" At each step only the {TOP} runners with the least lease left are drawn."


def _top_rate(config: Config, metric: c.Metric) -> str:
    """The runners with the highest per-second rate of `metric` at each step."""
    return f"topk({TOP}, rate({q.series(config, metric)}[{RATE}]))"


def _top(config: Config, metric: c.Metric, k: str = "topk") -> str:
    return f"{k}({TOP}, {q.series(config, metric)})"


def _mismatch_stat(config: Config) -> stat.Panel:
    return (
        stat.Panel()
        .title("Client says connected, server sees no stream")
        .description(
            "Runners whose last diagnostics say stream_connected while the server has no open "
            "read of their wake stream (PullWakeServerSeesNoStream).  0 when healthy."
        )
        .datasource(prom_ds(config))
        .with_target(target(config, recording.recording_names(config)["server_mismatch_runners"]))
        .thresholds(thresholds((None, "green"), (1, "red")))
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.AREA)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
        .span(6)
        .height(6)
    )


def build(config: Config) -> db.Dashboard:
    return (
        db.Dashboard(TITLE)
        .uid(config.dashboard_uids.server)
        .tags(["pullwake"])
        .refresh(config.dashboard_refresh)
        .time("now-1h", "now")
        .timezone("utc")
        .link(nav_links())
        .with_variable(prom_datasource_variable(config))
        .with_row(db.Row("Streams"))
        .with_panel(_mismatch_stat(config))
        .with_panel(
            runner_list(
                config,
                "Runners the server sees no stream for",
                "Exactly the mismatching runners; empty when healthy.",
                q.server_sees_no_stream(config),
                "none: the server reads every stream its runners call connected",
                span=6,
                height=6,
            )
        )
        .with_panel(
            timeseries_panel(
                config,
                "Open streams by live mode",
                "Live reads of wake streams open right now.",
                [
                    target(
                        config,
                        f"sum by ({q.LIVE_MODE}) ({q.series(config, c.SERVER_STREAMS_OPEN)})",
                        "{{" + q.LIVE_MODE + "}}",
                    )
                ],
                span=12,
                height=6,
            )
        )
        .with_row(db.Row("Wakes, heartbeats, leases"))
        .with_panel(
            timeseries_panel(
                config,
                "Messages and wakes",
                "Messages sent to entities targeting each runner, and wake events announced"
                " on its wake stream (one per subscription generation), per second." + TOP_NOTE,
                [
                    target(
                        config,
                        _top_rate(config, c.SERVER_MESSAGES),
                        "messages {{" + q.RUNNER + "}}",
                    ),
                    target(
                        config,
                        _top_rate(config, c.SERVER_WAKES_ANNOUNCED),
                        "wakes {{" + q.RUNNER + "}}",
                    ),
                ],
                unit="ops",
                span=8,
            )
        )
        .with_panel(
            timeseries_panel(
                config,
                "Pending subscriptions, active claims",
                "Entity subscriptions with un-acked messages, and claims health lists as"
                " active (expired claims stay listed, as upstream), per runner." + TOP_NOTE,
                [
                    target(
                        config,
                        _top(config, c.SERVER_SUBSCRIPTIONS_PENDING),
                        "pending {{" + q.RUNNER + "}}",
                    ),
                    target(
                        config,
                        _top(config, c.SERVER_CLAIMS_ACTIVE),
                        "active claims {{" + q.RUNNER + "}}",
                    ),
                ],
                span=8,
            )
        )
        .with_panel(
            timeseries_panel(
                config,
                "Heartbeats received",
                "Heartbeats accepted per second, per runner." + TOP_NOTE,
                [
                    target(
                        config,
                        _top_rate(config, c.SERVER_HEARTBEATS),
                        "{{" + q.RUNNER + "}}",
                    )
                ],
                unit="ops",
                span=8,
            )
        )
        .with_panel(
            threshold_line(
                timeseries_panel(
                    config,
                    "Lease remaining",
                    "Seconds left on each runner's liveness lease; below 0 it has expired."
                    + BOTTOM_NOTE,
                    [
                        target(
                            config,
                            _top(config, c.SERVER_LEASE_REMAINING, "bottomk"),
                            "{{" + q.RUNNER + "}}",
                        )
                    ],
                    unit="s",
                ),
                (None, "red"),
                (0, "green"),
            )
        )
        .with_panel(
            timeseries_panel(
                config,
                "Claims and completions",
                "Claim answers and wake-callback acks per second, by outcome (fenced: a late"
                " ack of a lost claim).",
                [
                    target(
                        config,
                        q.rate_by(config, c.SERVER_CLAIMS, RATE, (q.OUTCOME,)),
                        "claim {{" + q.OUTCOME + "}}",
                    ),
                    target(
                        config,
                        q.rate_by(config, c.SERVER_COMPLETIONS, RATE, (q.OUTCOME,)),
                        "ack {{" + q.OUTCOME + "}}",
                    ),
                ],
                unit="ops",
            )
        )
        .with_panel(
            timeseries_panel(
                config,
                "Claim lease expiries",
                "Claims whose 30 s lease ran out without a done, per runner: the server"
                " announced the work again as a new generation (a runner that stopped"
                " heartbeating its claims, or never completes them)." + TOP_NOTE,
                [
                    target(
                        config,
                        _top_rate(config, c.SERVER_LEASE_EXPIRIES),
                        "{{" + q.RUNNER + "}}",
                    )
                ],
                unit="ops",
            )
        )
        .with_panel(
            timeseries_panel(
                config,
                "API request duration p99",
                "http.server.request.duration (OpenTelemetry semantic conventions) by route"
                " template; live reads are not timed.",
                [
                    target(
                        config,
                        q.quantile(config, 0.99, c.HTTP_SERVER_DURATION, RATE, by=(ROUTE,)),
                        "{{" + ROUTE + "}}",
                    )
                ],
                unit="s",
                span=12,
            )
        )
    )
