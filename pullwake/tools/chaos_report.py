"""The chaos outputs: summary.json, timeline.png/.svg and a self-contained report.html.

All four come from `events.jsonl` through `chaos_summary.summarize`; the HTML
is rendered from that same summary (each figure's raw value is also in the
cell's `data-value`, so a test can hold the table against the JSON), and the
timeline is embedded as a data: URI so the page opens offline, alone.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from pullwake.tools.chaos_record import read_events
from pullwake.tools.chaos_summary import summarize

# (key in a fault row, column header) of the main table, in order.
FAULT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("state_at_fault", "state at fault"),
    ("detected_s", "detected after (s)"),
    ("reason", "session end reason"),
    ("back_streaming_s", "streaming again after heal (s)"),
    ("first_delivery_s", "first delivery after heal (s)"),
    ("lied_s", "said streaming, heartbeats failing (s)"),
    ("published", "published"),
    ("lost", "lost"),
    ("handled_twice", "handled twice"),
    ("alerts_fired", "alerts that fired (s after the fault)"),
)
RUNNER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("outages_noticed", "outages noticed"),
    ("outages", "outages"),
    ("published", "published"),
    ("handled", "handled"),
    ("lost", "lost"),
    ("handled_twice", "handled twice"),
    ("heartbeats_ok", "heartbeats ok"),
    ("heartbeats_failed", "heartbeats failed"),
    ("lied_s", "said streaming, heartbeats failing (s)"),
    ("session_ends", "session ends by reason"),
)
ALERT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("alert", "alert"),
    ("runner", "runner"),
    ("pending_at", "pending at (s)"),
    ("firing_at", "firing at (s)"),
    ("resolved_at", "resolved at (s)"),
)


def cell_text(key: str, value: Any, outage: bool = True) -> str:
    """How a figure reads in the table (tests use this too)."""
    if value is None:
        if key == "detected_s":
            return "never" if outage else "n/a"
        if key in ("back_streaming_s", "first_delivery_s"):
            return "-" if outage else "n/a"
        if key == "resolved_at":
            return "still active"
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    if key == "alerts_fired" and isinstance(value, list):
        return (
            "; ".join(
                f"{str(a['alert']).removeprefix('PullWake')} {a['after_s']:.1f}" for a in value
            )
            or "none"
        )
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
    if key == "state_at_fault" and isinstance(value, str):
        return value.removeprefix("running.")
    return str(value)


def _td(key: str, value: Any, outage: bool = True) -> str:
    bad = (key == "detected_s" and value is None and outage) or (
        key in ("lost", "handled_twice") and isinstance(value, int) and value > 0
    )
    css = ' class="bad"' if bad else ""
    raw = html.escape(json.dumps(value), quote=True)
    text = html.escape(cell_text(key, value, outage))
    return f'<td data-key="{key}" data-value="{raw}"{css}>{text}</td>'


def render_html(summary: dict[str, Any], png: bytes) -> str:
    cfg = summary.get("run", {}).get("config", {})
    rows: list[str] = []
    for f in summary.get("faults", []):
        outage = bool(f.get("outage", True))
        for rid, row in f.get("rows", {}).items():
            cells = "".join(_td(k, row.get(k), outage) for k, _ in FAULT_COLUMNS)
            rows.append(
                f'<tr data-fault="{html.escape(f["fault"])}" data-runner="{html.escape(rid)}">'
                f"<td>{html.escape(f['label'])}</td><td>{html.escape(str(row['profile']))}</td>"
                f"{cells}</tr>"
            )
    runner_rows = [
        f'<tr data-runner="{html.escape(rid)}"><td>{html.escape(rid)}</td>'
        f"<td>{html.escape(str(r['profile']))}</td>"
        + "".join(_td(k, r.get(k)) for k, _ in RUNNER_COLUMNS)
        + "</tr>"
        for rid, r in summary.get("runners", {}).items()
    ]
    alert_rows = [
        "<tr>" + "".join(_td(k, a.get(k)) for k, _ in ALERT_COLUMNS) + "</tr>"
        for a in summary.get("alerts", [])
    ]
    totals = summary.get("totals", {})
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in summary.get("notes", []))
    interrupted = summary.get("run", {}).get("interrupted")
    img = base64.b64encode(png).decode("ascii")

    def head(cols: tuple[tuple[str, str], ...], first: list[str]) -> str:
        return "".join(f"<th>{html.escape(h)}</th>" for h in [*first, *(c for _, c in cols)])

    alerts_html = (
        f'<table id="alerts"><thead><tr>{head(ALERT_COLUMNS, [])}</tr></thead>'
        f"<tbody>{''.join(alert_rows)}</tbody></table>"
        if alert_rows
        else f"<p>{html.escape(str(cfg.get('alerts_note') or 'No alert went pending.'))}</p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pullwake chaos report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #212121; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #cfd8dc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #eceff1; }}
td:first-child, td:nth-child(2) {{ text-align: left; }}
td.bad {{ background: #ffebee; color: #b71c1c; font-weight: bold; }}
img {{ max-width: 100%; border: 1px solid #cfd8dc; }}
.warn {{ color: #b71c1c; font-weight: bold; }}
</style></head>
<body>
<h1>pullwake chaos report</h1>
<p>{len(summary.get("runners", {}))} runner(s); outage {cfg.get("outage_s")} s per fault;
heartbeat every {cfg.get("heartbeat_interval_s")} s; server keepalive {cfg.get("keepalive_s")} s
(idle timeout {cfg.get("idle_timeout_s")} s); run lasted {summary["run"]["duration_s"]} s.
Published {totals.get("published")}, handled {totals.get("handled")},
lost {totals.get("lost")}, handled twice {totals.get("handled_twice")}.</p>
{
        '<p class="warn">The run was interrupted: figures cover what was recorded.</p>'
        if interrupted
        else ""
    }
<img id="timeline" alt="timeline of every runner through the faults"
 src="data:image/png;base64,{img}">
<h2>Per fault and profile</h2>
<p>Detected: from the fault to the runner leaving <code>streaming</code>. Streaming again and
first delivery: from the heal (server restarted and answering, SIGCONT, proxy back to pass);
first delivery is a message published at the heal reaching the handler. Lost: acknowledged
messages published in that phase that no handler finished by the end of the run.</p>
<table id="faults"><thead><tr>{head(FAULT_COLUMNS, ["fault", "profile"])}</tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<h2>Per runner, whole run</h2>
<table id="runners"><thead><tr>{head(RUNNER_COLUMNS, ["runner", "profile"])}</tr></thead>
<tbody>{"".join(runner_rows)}</tbody></table>
<h2>Alerts</h2>
{alerts_html}
<h2>Notes</h2><ul>{notes}</ul>
<p>Every figure is computed from <code>events.jsonl</code> beside this file
(<code>summary.json</code> holds the same numbers).</p>
</body></html>
"""


def write_outputs(out: Path) -> list[Path]:
    """events.jsonl -> summary.json, timeline.png, timeline.svg, report.html."""
    from pullwake.tools.chaos_plot import draw

    summary = summarize(read_events(out / "events.jsonl"))
    paths = [out / "summary.json", out / "timeline.png", out / "timeline.svg", out / "report.html"]
    paths[0].write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    draw(summary, paths[1], paths[2])
    paths[3].write_text(render_html(summary, paths[1].read_bytes()), encoding="utf-8")
    return paths
