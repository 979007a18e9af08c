"""Small helpers shared by the three dashboards: datasource refs, targets, panels.

Layout only; every expression comes from `dashboards.queries` or a recording
rule name from `dashboards.rules`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from grafana_foundation_sdk.builders import common, prometheus, table, tempo, timeseries
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from pullwake.core import catalog as c
from pullwake.dashboards.config import Config

REF_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# Dashboard variables naming the datasources: every panel and query refers to them,
# so a dashboard imported into a Grafana whose datasources have other uids works once
# the variables are picked (the provisioned uids are their defaults).
PROM_VAR = "datasource"
TEMPO_VAR = "traces_datasource"


def prom_ds(config: Config) -> dm.DataSourceRef:
    """The Prometheus datasource, through the `datasource` variable."""
    return dm.DataSourceRef(type_val="prometheus", uid="${" + PROM_VAR + "}")


def tempo_ds(config: Config) -> dm.DataSourceRef:
    """The Tempo datasource, through the `traces_datasource` variable."""
    return dm.DataSourceRef(type_val="tempo", uid="${" + TEMPO_VAR + "}")


def _datasource_variable(name: str, label: str, kind: str, uid: str) -> db.DatasourceVariable:
    return (
        db.DatasourceVariable(name)
        .label(label)
        .type(kind)
        .current(dm.VariableOption(selected=True, text=uid, value=uid))
    )


def prom_datasource_variable(config: Config) -> db.DatasourceVariable:
    """`$datasource`: any Prometheus datasource, the provisioned one by default."""
    return _datasource_variable(PROM_VAR, "Prometheus", "prometheus", config.datasources.prometheus)


def tempo_datasource_variable(config: Config) -> db.DatasourceVariable:
    """`$traces_datasource`: any Tempo datasource, the provisioned one by default."""
    return _datasource_variable(TEMPO_VAR, "Tempo", "tempo", config.datasources.tempo)


def target(
    config: Config,
    expr: str,
    legend: str = "",
    *,
    ref: str = "A",
    instant: bool = False,
    table_format: bool = False,
    exemplar: bool = False,
) -> prometheus.Dataquery:
    t = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(prom_ds(config))
    if legend:
        t = t.legend_format(legend)
    t = t.instant() if instant else t.range()
    if table_format:
        t = t.format(pm.PromQueryFormat.TABLE)
    if exemplar:
        t = t.exemplar(True)
    return t


def traceql(config: Config, query: str, limit: int = 20) -> tempo.TempoQuery:
    return (
        tempo.TempoQuery()
        .ref_id("A")
        .datasource(tempo_ds(config))
        .query_type("traceql")
        .query(query)
        .limit(limit)
    )


def timeseries_panel(
    config: Config,
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    unit: str = "short",
    span: int = 12,
    height: int = 8,
) -> timeseries.Panel:
    p = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(prom_ds(config))
        .unit(unit)
        .span(span)
        .height(height)
        .legend(legend())
        .line_width(1)
        .fill_opacity(10)
        .span_nulls(False)
        .tooltip(
            common.VizTooltipOptions()
            .mode(cm.TooltipDisplayMode.MULTI)
            .sort(cm.SortOrder.DESCENDING)
        )
    )
    for t in targets:
        p = p.with_target(t)
    return p


def legend() -> common.VizLegendOptions:
    return (
        common.VizLegendOptions()
        .show_legend(True)
        .display_mode(cm.LegendDisplayMode.LIST)
        .placement(cm.LegendPlacement.BOTTOM)
    )


def table_panel(
    config: Config,
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    span: int = 24,
    height: int = 8,
) -> table.Panel:
    p = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(prom_ds(config))
        .span(span)
        .height(height)
        .show_header(True)
        .cell_height(cm.TableCellHeight.SM)
    )
    for t in targets:
        p = p.with_target(t)
    return p


def transformation(id_: str, options: dict[str, Any] | None = None) -> dm.DataTransformerConfig:
    return dm.DataTransformerConfig(id_val=id_, options=options or {})


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


def threshold_line(p: timeseries.Panel, *steps: tuple[float | None, str]) -> timeseries.Panel:
    """Thresholds drawn as a dashed line: a graph shows none unless told to."""
    style = common.GraphThresholdsStyleConfig().mode(cm.GraphTresholdsStyleMode.DASHED)
    return p.thresholds(thresholds(*steps)).thresholds_style(style)


def value_texts(mapping: dict[str, tuple[str, str]]) -> list[dm.ValueMapping]:
    """Value -> (text, color) mappings (e.g. 1 -> "connected", green)."""
    return [
        dm.ValueMap(
            options={
                k: dm.ValueMappingResult(text=text, color=color, index=i)
                for i, (k, (text, color)) in enumerate(mapping.items())
            }
        )
    ]


def render(builder: cogbuilder.Builder[dm.Dashboard]) -> str:
    """Build, number the panels (ids must be unique and stable), serialise."""
    model = builder.build()
    next_id = 1
    for panel in model.panels or []:
        panel.id_val = next_id
        next_id += 1
        for inner in getattr(panel, "panels", None) or []:
            inner.id_val = next_id
            next_id += 1
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def nav_links() -> db.DashboardLink:
    """A dashboard-level dropdown to the other pullwake dashboards (by tag)."""
    return (
        db.DashboardLink("pullwake")
        .type(dm.DashboardLinkType.DASHBOARDS)
        .tags(["pullwake"])
        .as_dropdown(True)
        .include_vars(False)
        .keep_time(True)
        .target_blank(False)
        .icon("external link")
        .tooltip("")
        .url("")
    )


def link_to(title: str, url: str) -> dm.DynamicConfigValue:
    """A field override value making each cell a link (e.g. runner -> its dashboard)."""
    return dm.DynamicConfigValue(id_val="links", value=[{"title": title, "url": url}])


def runner_link(config: Config) -> dm.DynamicConfigValue:
    """Each `runner_id` cell opens that runner's dashboard, keeping the time range."""
    label = c.prom_label(c.RUNNER_ID)
    uid = config.dashboard_uids.runner
    field = "${__data.fields." + label + "}"
    return link_to("Runner dashboard", f"/d/{uid}?var-{label}={field}&${{__url_time_range}}")


def runner_list(
    config: Config,
    title: str,
    description: str,
    expr: str,
    no_value: str,
    *,
    height: int,
    span: int = 24,
) -> table.Panel:
    """A table of exactly the runners `expr` returns (one column, linked), empty when none."""
    return (
        table_panel(
            config,
            title,
            description,
            [target(config, expr, ref="A", instant=True, table_format=True)],
            height=height,
            span=span,
        )
        .override_by_name(c.prom_label(c.RUNNER_ID), [runner_link(config)])
        .with_transformation(
            transformation("organize", {"excludeByName": {"Time": True, "Value": True}})
        )
        .no_value(no_value)
    )
