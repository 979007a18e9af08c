"""The fleet dashboard's SLO row: availability, error budget left, burn rates.

Every expression reads the SLO recording rules (`dashboards.slo`), so the
panels are cheap on a 28-day range and show exactly what the alerts see.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common, stat, table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from pullwake.dashboards import queries as q
from pullwake.dashboards import slo
from pullwake.dashboards.config import Config
from pullwake.dashboards.panels import (
    prom_ds,
    runner_link,
    table_panel,
    target,
    threshold_line,
    thresholds,
    timeseries_panel,
    transformation,
)

AVAILABILITY = "Stream availability (SLO period)"
BUDGET = "Error budget remaining (SLO period)"
SLI = "Stream availability SLI"
BURN = "Error budget burn rate"
BURNING = "Runners burning their error budget fast"


def _stat(config: Config, title: str, description: str, expr: str) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(prom_ds(config))
        .with_target(target(config, expr))
        .unit("percentunit")
        .decimals(2)
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.AREA)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
        .span(6)
        .height(8)
    )


def availability(config: Config) -> stat.Panel:
    s = config.slo
    return _stat(
        config,
        AVAILABILITY,
        f"Share of the fleet's running time spent streaming over the last {s.period} "
        f"(objective {s.objective * 100:g}%).  Mean of the recorded "
        f"{s.windows[0]} error ratio: see docs/slo.md.",
        f"1 - {slo.period_error_ratio(config)}",
    ).thresholds(thresholds((None, "red"), (s.objective, "green")))


def budget(config: Config) -> stat.Panel:
    s = config.slo
    return _stat(
        config,
        BUDGET,
        f"How much of the {s.period} error budget ({s.budget * 100:.3g}% of running time "
        "not streaming) is left: 100% untouched, 0 spent, negative overspent.",
        slo.budget_remaining(config),
    ).thresholds(thresholds((None, "red"), (0, "orange"), (0.25, "green")))


def sli(config: Config) -> timeseries.Panel:
    s = config.slo
    windows = [b.long for b in s.burn_windows][:2]
    targets = [
        target(config, f"1 - {slo.record_name('fleet', w)}", w, ref="AB"[i])
        for i, w in enumerate(windows)
    ]
    p = timeseries_panel(
        config,
        SLI,
        "Share of the fleet's running time spent streaming, over the alerts' windows; the "
        "dashed line is the objective.",
        targets,
        unit="percentunit",
    )
    return threshold_line(p, (None, "red"), (s.objective, "green"))


def burn_rates(config: Config) -> timeseries.Panel:
    """The long window of every pair: the alerts fire when it and its short window cross."""
    s = config.slo
    refs = "ABCDEFGH"
    targets = [
        target(config, slo.burn_rate(config, "fleet", b.long), b.long, ref=refs[i])
        for i, b in enumerate(s.burn_windows)
    ]
    factors = sorted({b.factor for b in s.burn_windows})
    colours = ["yellow", "orange", "red", "dark-red", "purple"]
    steps: list[tuple[float | None, str]] = [(None, "green")]
    steps += [(f, colours[min(i, len(colours) - 1)]) for i, f in enumerate(factors)]
    p = timeseries_panel(
        config,
        BURN,
        "How fast the fleet spends its error budget (1 = exactly on budget over the period), "
        "per alert window; dashed lines at each alert's factor: "
        + ", ".join(f"{b.factor:g}x over {b.long}/{b.short}" for b in s.burn_windows)
        + ".",
        targets,
    )
    return threshold_line(p, *steps)


def burning_runners(config: Config) -> table.Panel:
    """Runners spending their budget faster than it lasts, on the first pair's long window."""
    first = config.slo.burn_windows[0]
    column = f"burn rate {first.long}"
    expr = f"sort_desc({slo.burn_rate(config, 'runner', first.long)} > 1)"
    return (
        table_panel(
            config,
            BURNING,
            f"Runners whose {first.long} burn rate is above 1 (spending their budget faster "
            f"than it lasts), highest first; {first.factor:g} with its {first.short} window "
            "pages (PullWakeRunnerStreamBudgetBurn).  Empty when every runner is within "
            "its budget.",
            [target(config, expr, ref="A", instant=True, table_format=True)],
            span=12,
            height=8,
        )
        .override_by_name(q.RUNNER, [runner_link(config)])
        .with_transformation(
            transformation(
                "organize",
                {"excludeByName": {"Time": True}, "renameByName": {"Value": column}},
            )
        )
        .override_by_name(column, [dm.DynamicConfigValue(id_val="decimals", value=1)])
        .no_value("none: every runner within its error budget")
    )
