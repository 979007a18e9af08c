"""The chaos timeline, drawn with matplotlib (Agg) from the summary alone.

One lane per runner: its state as coloured bands, the stretch where it says
"streaming" while its heartbeats fail hatched red (the seed's lie), heartbeat
ticks above the band (ok / failed), handled messages below it, and where it
noticed each fault (down triangle) and delivered again after the heal (up
triangle).  Fault windows are shaded and labelled across all lanes.  Under
them, one lane per alert and runner: pending and firing spans.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DPI = 100
WIDTH_IN = 15.0
RUNNER_LANE_IN = 1.15
ALERT_LANE_IN = 0.42
FIXED_IN = 2.6  # title, fault labels, axis, legend

STATE_COLOURS: dict[str, str] = {
    "running.streaming": "#4caf50",
    "running.connecting": "#64b5f6",
    "running.reconnecting": "#ff9800",
    "stopping": "#9e9e9e",
    "stopped": "#616161",
    "unknown": "#e0e0e0",
}
STATE_NAMES: dict[str, str] = {
    "running.streaming": "streaming",
    "running.connecting": "connecting",
    "running.reconnecting": "reconnecting",
    "stopping": "stopping",
    "stopped": "stopped",
    "unknown": "not started",
}
LIE_COLOUR = "#b71c1c"
LIE_FILL = "#ef9a9a"
HB_OK, HB_FAIL = "#1b5e20", "#d32f2f"
HANDLED = "#1a237e"
LOST = "#d50000"
FAULT_SHADE = "#ffcdd2"
BURST_SHADE = "#e1bee7"
PENDING, FIRING = "#ffd54f", "#e53935"


def alert_lanes(summary: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(alert, runner) pairs with at least one episode: grouped by runner in lane order
    (server-side alerts without a runner last), then by first appearance."""
    seen: list[tuple[str, str | None]] = []
    for row in summary.get("alerts", []):
        key = (str(row["alert"]), row.get("runner"))
        if key not in seen:
            seen.append(key)
    lane_order = _lane_order(summary)

    def rank(key: tuple[str, str | None]) -> tuple[int, int]:
        runner = key[1]
        pos = lane_order.index(runner) if runner in lane_order else len(lane_order)
        return pos, seen.index(key)

    return sorted(seen, key=rank)


def _lane_order(summary: dict[str, Any]) -> list[str]:
    """The run's runner order (summary.json read back has its keys sorted)."""
    lanes = summary.get("lanes", {})
    order = [r for r in summary.get("order", []) if r in lanes]
    return order + [r for r in lanes if r not in order]


def figure_size(summary: dict[str, Any]) -> tuple[int, int]:
    """Pixel size of timeline.png (the test checks the file against it)."""
    runners = max(1, len(summary.get("lanes", {})))
    alerts = max(1, len(alert_lanes(summary)))
    height = FIXED_IN + RUNNER_LANE_IN * runners + ALERT_LANE_IN * alerts
    return round(WIDTH_IN * DPI), round(height * DPI)


def _short_alert(name: str) -> str:
    return name.removeprefix("PullWake")


def _wrap(label: str, width: int = 34) -> str:
    """A long CamelCase alert label on two lines, broken at the capital nearest the middle."""
    if len(label) <= width:
        return label
    caps = [i for i, ch in enumerate(label) if ch.isupper() and i > 0]
    if not caps:
        return label
    cut = min(caps, key=lambda i: abs(i - len(label) / 2))
    return f"{label[:cut]}-\n{label[cut:]}"


def _secs(value: float) -> str:
    if value < 0.1:
        return f"{value:.3f}s"
    return f"{value:.2f}s" if value < 1 else f"{value:.1f}s"


def draw(summary: dict[str, Any], png: Path, svg: Path) -> tuple[int, int]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    lanes: dict[str, dict[str, Any]] = summary.get("lanes", {})
    rids = _lane_order(summary)
    profiles = {rid: str(lane.get("profile", rid)) for rid, lane in lanes.items()}
    a_lanes = alert_lanes(summary)
    w_px, h_px = figure_size(summary)
    n_r, n_a = max(1, len(rids)), max(1, len(a_lanes))
    fig = plt.figure(figsize=(w_px / DPI, h_px / DPI), dpi=DPI)
    top_in, bottom_in = 0.8, 1.25
    h_in = h_px / DPI
    gs = fig.add_gridspec(
        2,
        1,
        height_ratios=[RUNNER_LANE_IN * n_r, ALERT_LANE_IN * n_a],
        left=0.2,
        right=0.985,
        top=1 - top_in / h_in,
        bottom=bottom_in / h_in,
        hspace=0.13,
    )
    ax = fig.add_subplot(gs[0])
    axa = fig.add_subplot(gs[1], sharex=ax)
    duration = float(summary.get("run", {}).get("duration_s") or 1.0)

    # fault windows: shaded across both panels, labelled on top (placed once the
    # layout is final, so that none overlap: see _unoverlap)
    fault_labels: list[Any] = []
    for f in summary.get("faults", []):
        if f.get("start") is None:
            continue
        lo = float(f["start"])
        hi = float(f["heal"] if f.get("heal") is not None else f["end"])
        shade = FAULT_SHADE if f.get("outage", True) else BURST_SHADE
        for a in (ax, axa):
            a.axvspan(lo, max(hi, lo + 0.05), color=shade, alpha=0.55, zorder=0, lw=0)
        text = ax.text(
            (lo + hi) / 2,
            1.01,
            f["label"],
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=9,
            fontweight="bold",
            color="#b71c1c",
        )
        fault_labels.append(text)

    # runner lanes, first runner on top
    for i, rid in enumerate(rids):
        lane = lanes[rid]
        y = n_r - 1 - i
        for start, end, state in lane.get("bands", []):
            ax.broken_barh(
                [(start, max(end - start, 0.001))],
                (y - 0.22, 0.44),
                facecolors=STATE_COLOURS.get(state, "#bdbdbd"),
                edgecolor="none",
                zorder=2,
            )
        for start, end in lane.get("lying", []):
            ax.broken_barh(
                [(start, max(end - start, 0.001))],
                (y - 0.22, 0.44),
                facecolors=LIE_FILL,
                edgecolor=LIE_COLOUR,
                hatch="////",
                linewidth=0,
                zorder=3,
            )
        beats = lane.get("heartbeats", [])
        ok = [t for t, good in beats if good]
        bad = [t for t, good in beats if not good]
        ax.scatter(ok, [y + 0.33] * len(ok), marker="|", s=60, color=HB_OK, zorder=4, lw=1.2)
        ax.scatter(bad, [y + 0.33] * len(bad), marker="x", s=22, color=HB_FAIL, zorder=4, lw=1.2)
        lost = lane.get("lost", [])
        ax.scatter(lost, [y - 0.33] * len(lost), marker="x", s=16, color=LOST, zorder=4, lw=1.0)
        handled = lane.get("handled", [])
        ax.scatter(
            handled, [y - 0.33] * len(handled), marker="o", s=7, color=HANDLED, zorder=4, lw=0
        )
        for f in summary.get("faults", []):
            row = f.get("rows", {}).get(rid)
            if not row or f.get("start") is None or not f.get("outage", True):
                continue
            if row.get("detected_s") is not None:
                tx = float(f["start"]) + float(row["detected_s"])
                ax.plot(
                    [tx],
                    [y + 0.05],
                    marker="v",
                    ms=9,
                    color="black",
                    zorder=5,
                    markeredgecolor="white",
                    markeredgewidth=0.8,
                )
                ax.text(
                    tx + 0.25,
                    y + 0.05,
                    _secs(float(row["detected_s"])),
                    fontsize=7.5,
                    va="center",
                    ha="left",
                    zorder=6,
                    color="black",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
                )
            elif row.get("state_at_fault") == "running.streaming":
                ax.text(
                    float(f["start"]) + 0.25,
                    y + 0.05,
                    "not noticed",
                    fontsize=7.5,
                    va="center",
                    ha="left",
                    zorder=6,
                    color=LIE_COLOUR,
                    fontweight="bold",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85},
                )
            if row.get("first_delivery_s") is not None and f.get("heal") is not None:
                tx = float(f["heal"]) + float(row["first_delivery_s"])
                ax.plot(
                    [tx],
                    [y - 0.05],
                    marker="^",
                    ms=9,
                    color="#0d47a1",
                    zorder=5,
                    markeredgecolor="white",
                    markeredgewidth=0.8,
                )
    ax.set_yticks(
        range(n_r),
        [f"{lanes[r]['profile']}\n{r}" for r in reversed(rids)] if rids else ["(no runners)"],
        fontsize=10,
    )
    ax.set_ylim(-0.6, n_r - 0.4)
    ax.tick_params(axis="x", labelbottom=False)
    ax.grid(axis="x", color="#eeeeee", zorder=1)
    ax.set_xlim(0, duration)

    # alert lanes
    if a_lanes:
        for j, (name, runner) in enumerate(a_lanes):
            y = n_a - 1 - j
            for row in summary.get("alerts", []):
                if (row["alert"], row.get("runner")) != (name, runner):
                    continue
                p, f_at, r_at = row.get("pending_at"), row.get("firing_at"), row.get("resolved_at")
                end = r_at if r_at is not None else duration
                if p is not None:
                    axa.broken_barh(
                        [(p, max((f_at if f_at is not None else end) - p, 0.05))],
                        (y - 0.3, 0.6),
                        facecolors=PENDING,
                        zorder=2,
                    )
                if f_at is not None:
                    axa.broken_barh(
                        [(f_at, max(end - f_at, 0.05))], (y - 0.3, 0.6), facecolors=FIRING, zorder=2
                    )
        axa.set_yticks(
            range(n_a),
            [
                _wrap(f"{_short_alert(n)} ({profiles.get(r or '', r) or 'server'})")
                for n, r in reversed(a_lanes)
            ],
            fontsize=8,
        )
    else:
        why = summary.get("run", {}).get("config", {}).get("alerts_note") or "no alert went pending"
        axa.text(
            0.5,
            0.5,
            why,
            transform=axa.transAxes,
            ha="center",
            va="center",
            fontsize=9,
            color="#616161",
        )
        axa.set_yticks([])
    axa.set_ylim(-0.6, n_a - 0.4)
    axa.set_xlabel("seconds since start", fontsize=10)
    axa.grid(axis="x", color="#eeeeee", zorder=1)
    axa.set_title("alerts (Prometheus rules)", fontsize=9, loc="left", color="#424242")

    cfg = summary.get("run", {}).get("config", {})
    fig.suptitle(
        "pullwake chaos: runner state per profile through each fault "
        f"(outage {cfg.get('outage_s', '?')}s, heartbeat {cfg.get('heartbeat_interval_s', '?')}s)",
        fontsize=12,
        fontweight="bold",
        y=1 - 0.18 / h_in,
        va="top",
    )
    handles: list[Any] = [
        Patch(facecolor=STATE_COLOURS[k], label=STATE_NAMES[k])
        for k in ("running.streaming", "running.connecting", "running.reconnecting", "unknown")
    ]
    handles += [
        Patch(
            facecolor=LIE_FILL,
            edgecolor=LIE_COLOUR,
            hatch="////",
            label="says streaming, heartbeats failing",
        ),
        Line2D([], [], marker="|", ls="", color=HB_OK, ms=9, label="heartbeat ok"),
        Line2D([], [], marker="x", ls="", color=HB_FAIL, ms=6, label="heartbeat failed"),
        Line2D([], [], marker="o", ls="", color=HANDLED, ms=4, label="message handled"),
        Line2D([], [], marker="x", ls="", color=LOST, ms=5, label="message lost (published at)"),
        Line2D([], [], marker="v", ls="", color="black", ms=8, label="fault noticed"),
        Line2D([], [], marker="^", ls="", color="#0d47a1", ms=8, label="first delivery after heal"),
        Patch(facecolor=FAULT_SHADE, label="fault window"),
        Patch(facecolor=PENDING, label="alert pending"),
        Patch(facecolor=FIRING, label="alert firing"),
    ]
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=7,
        fontsize=8.5,
        frameon=False,
        bbox_to_anchor=(0.55, 0.0),
    )
    _unoverlap(fig, fault_labels)
    fig.savefig(png, dpi=DPI)
    fig.savefig(svg)
    plt.close(fig)
    return w_px, h_px


def _unoverlap(fig: Any, labels: list[Any], gap_px: float = 8.0) -> None:
    """Fault labels on two rows: each goes on the lower row if it clears the last label
    there, else on the upper row (measured in pixels after a draw, not guessed)."""
    if not labels:
        return
    fig.canvas.draw()
    right = [float("-inf"), float("-inf")]  # right edge of the last label on each row
    for text in labels:
        box = text.get_window_extent()
        row = 0 if box.x0 > right[0] + gap_px else (1 if box.x0 > right[1] + gap_px else 0)
        if row == 1:
            text.set_y(1.075)
        right[row] = box.x1


PROFILE_COLOURS = {"default": "#2e7d32", "upstream": "#1565c0", "legacy": "#c62828"}


def draw_detection_chart(
    results: list[dict[str, Any]], cap: float, title: str, png: Path, svg: Path | None = None
) -> tuple[int, int]:
    """`bench/bench_detection.py` as a picture: per fault, one bar per profile for
    detection (left) and for recovery (right); a fault never noticed is a red
    hatched bar to the cap marked "never".  `results` rows: fault, profile,
    detection_s, recovery_s (None = not within the cap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    faults = list(dict.fromkeys(str(r["fault"]) for r in results))
    profiles = list(dict.fromkeys(str(r["profile"]) for r in results))
    w_px, h_px = 1400, max(420, 150 + 70 * len(faults))
    fig, axes = plt.subplots(
        1,
        2,
        figsize=(w_px / DPI, h_px / DPI),
        dpi=DPI,
        sharey=True,
        gridspec_kw={
            "left": 0.12,
            "right": 0.98,
            "top": 1 - 0.65 / (h_px / DPI),
            "bottom": 0.95 / (h_px / DPI),
            "wspace": 0.05,
        },
    )
    bar_h = 0.8 / max(1, len(profiles))
    for ax, key, name in zip(
        axes,
        ("detection_s", "recovery_s"),
        ("detected after the fault", "back after the heal"),
        strict=True,
    ):
        for i, fault in enumerate(faults):
            for j, profile in enumerate(profiles):
                row = next(
                    (r for r in results if r["fault"] == fault and r["profile"] == profile), None
                )
                if row is None:
                    continue
                y = len(faults) - 1 - i + (len(profiles) - 1 - j - (len(profiles) - 1) / 2) * bar_h
                value = row.get(key)
                colour = PROFILE_COLOURS.get(profile, "#616161")
                if value is None:
                    ax.barh(
                        y,
                        cap,
                        height=bar_h * 0.9,
                        color="white",
                        edgecolor=LIE_COLOUR,
                        hatch="///",
                        linewidth=0.8,
                    )
                    ax.text(
                        cap * 0.98,
                        y,
                        "never",
                        va="center",
                        ha="right",
                        fontsize=7.5,
                        color=LIE_COLOUR,
                        fontweight="bold",
                        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none"},
                    )
                else:
                    ax.barh(y, float(value), height=bar_h * 0.9, color=colour)
                    ax.text(
                        float(value) + cap * 0.01,
                        y,
                        _secs(float(value)),
                        va="center",
                        ha="left",
                        fontsize=7.5,
                    )
        ax.set_xlim(0, cap * 1.08)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("seconds", fontsize=9)
        ax.grid(axis="x", color="#eeeeee")
        ax.set_axisbelow(True)
    axes[0].set_yticks(range(len(faults)), list(reversed(faults)), fontsize=9)
    handles = [Patch(facecolor=PROFILE_COLOURS.get(p, "#616161"), label=p) for p in profiles]
    handles.append(
        Patch(facecolor="white", edgecolor=LIE_COLOUR, hatch="///", label=f"not within {cap:g}s")
    )
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11, fontweight="bold")
    fig.savefig(png, dpi=DPI)
    if svg is not None:
        fig.savefig(svg)
    plt.close(fig)
    return w_px, h_px
