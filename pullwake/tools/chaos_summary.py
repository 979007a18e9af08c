"""Every figure of a chaos run, computed from its recorded events by one pure function.

`summarize(events)` is the only place numbers come from: `summary.json`, the
HTML table, the progress lines and the timeline all read its answer, so what
the report says is exactly what `events.jsonl` says.  No clock, no I/O.

Event vocabulary (each a JSON object with `t`, unix seconds, and `type`):

- ``run_start`` {runners: {runner_id: profile}, faults, outage_s, ...config}
- ``fault_start`` {fault, label}, ``fault_heal`` {fault}, ``phase_start`` /
  ``phase_end`` {fault}: a phase is settle, fault window, heal, recovery window
- ``transition`` {runner, from, to, trigger} (from the runner's log) and
  ``status_state`` {runner, state} (from polling ``/status``; used only for a
  runner whose log gave no transition)
- ``session_end`` {runner, session, reason}
- ``heartbeat`` {runner, ok}
- ``publish`` {runner, msg, ok, wake_id?, probe?, fault?}: ``ok`` = acknowledged
- ``handled`` {runner, msg?, wake_id?}: the handler finished (``t`` = its end)
- ``alert`` {alert, runner?, state: pending | firing | resolved}
- ``note`` {text}, ``run_end`` {interrupted}
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

STREAMING = "running.streaming"
ALERT_STATES = ("pending", "firing", "resolved")

Event = Mapping[str, Any]


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _sorted(events: Iterable[Event]) -> list[Event]:
    """By time; the recording order breaks ties (a log line may arrive late)."""
    indexed = [(float(e.get("t", 0.0)), i, e) for i, e in enumerate(events)]
    return [e for _, _, e in sorted(indexed, key=lambda x: (x[0], x[1]))]


def _transitions(events: Sequence[Event], runner: str) -> list[tuple[float, str, str]]:
    """(t, from, to) from the log; else derived from polled states."""
    logged = [
        (float(e["t"]), str(e.get("from", "")), str(e["to"]))
        for e in events
        if e.get("type") == "transition" and e.get("runner") == runner and "to" in e
    ]
    if logged:
        return logged
    out: list[tuple[float, str, str]] = []
    last = ""
    for e in events:
        if e.get("type") == "status_state" and e.get("runner") == runner:
            state = str(e.get("state", ""))
            if state and state != last:
                out.append((float(e["t"]), last, state))
                last = state
    return out


def _bands(trans: Sequence[tuple[float, str, str]], t0: float, t_end: float) -> list[list[Any]]:
    """[start, end, state] relative to t0, contiguous, from the transitions."""
    bands: list[list[Any]] = []
    cur_state, cur_t = "unknown", t0
    for t, _old, new in trans:
        if t > cur_t:
            bands.append([_r(cur_t - t0), _r(t - t0), cur_state])
        cur_state, cur_t = new, max(t, cur_t)
    if t_end > cur_t:
        bands.append([_r(cur_t - t0), _r(t_end - t0), cur_state])
    return bands


def _lies(
    trans: Sequence[tuple[float, str, str]],
    beats: Sequence[tuple[float, bool]],
    t_end: float,
) -> list[tuple[float, float]]:
    """Intervals in which the runner says `streaming` while its last heartbeat failed."""
    points: list[tuple[float, int, Any]] = [(t, 0, new) for t, _o, new in trans]
    points += [(t, 1, ok) for t, ok in beats]
    points.sort(key=lambda p: (p[0], p[1]))
    state, hb_ok = "unknown", True
    out: list[tuple[float, float]] = []
    start: float | None = None
    for t, kind, value in points:
        if kind == 0:
            state = str(value)
        else:
            hb_ok = bool(value)
        lying = state == STREAMING and not hb_ok
        if lying and start is None:
            start = t
        elif not lying and start is not None:
            out.append((start, t))
            start = None
    if start is not None and t_end > start:
        out.append((start, t_end))
    return out


def _stream_key(path: str) -> str:
    """One spelling of a stream path (DS-relative, no leading slash)."""
    return path.removeprefix("/v1/stream/").lstrip("/")


def _offset_key(offset: str) -> tuple[int, ...] | str:
    try:
        return tuple(int(p) for p in offset.split("_"))
    except ValueError:
        return offset


def _covers(claimed: str | None, message: str | None) -> bool:
    """A claim up to `claimed` covers a message ending at `message` (unknown: yes)."""
    if claimed is None or message is None:
        return True
    a, b = _offset_key(claimed), _offset_key(message)
    if type(a) is not type(b):
        return claimed >= message
    return a >= b  # type: ignore[operator]


def _state_at(trans: Sequence[tuple[float, str, str]], t: float) -> str:
    state = "unknown"
    for tt, _old, new in trans:
        if tt > t:
            break
        state = new
    return state


def _overlap(intervals: Sequence[tuple[float, float]], lo: float, hi: float) -> float:
    return sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in intervals)


def _alert_intervals(events: Sequence[Event], t0: float, t_end: float) -> list[dict[str, Any]]:
    """One row per (alert, runner) episode: pending -> firing -> resolved, relative times."""
    open_: dict[tuple[str, str], dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for e in events:
        if e.get("type") != "alert":
            continue
        key = (str(e.get("alert", "?")), str(e.get("runner") or ""))
        state, rel = str(e.get("state")), float(e["t"]) - t0
        row = open_.get(key)
        if state == "pending" and row is None:
            row = {
                "alert": key[0],
                "runner": key[1] or None,
                "pending_at": _r(rel),
                "firing_at": None,
                "resolved_at": None,
            }
            open_[key] = row
            rows.append(row)
        elif state == "firing":
            if row is None:  # seen firing first (fast `for:` or a late poll)
                row = {
                    "alert": key[0],
                    "runner": key[1] or None,
                    "pending_at": _r(rel),
                    "firing_at": None,
                    "resolved_at": None,
                }
                open_[key] = row
                rows.append(row)
            if row["firing_at"] is None:
                row["firing_at"] = _r(rel)
        elif state == "resolved" and row is not None:
            row["resolved_at"] = _r(rel)
            del open_[key]
    for row in open_.values():
        row["open_at_end"] = True
    _ = t_end
    return rows


def summarize(events: Iterable[Event]) -> dict[str, Any]:
    """The whole report's numbers.  Times in the answer are seconds from the run's start."""
    evs = _sorted(events)
    start = next((e for e in evs if e.get("type") == "run_start"), None)
    t0 = float(start["t"]) if start else (float(evs[0]["t"]) if evs else 0.0)
    t_end = max((float(e["t"]) for e in evs), default=t0)
    end = next((e for e in reversed(evs) if e.get("type") == "run_end"), None)
    declared: dict[str, str] = dict((start or {}).get("runners") or {})
    order = [r for r in (start or {}).get("runner_order") or [] if r in declared]
    runners = {r: declared[r] for r in [*order, *(r for r in declared if r not in order)]}
    for e in evs:  # runners seen only in events still get a lane
        rid = e.get("runner")
        if isinstance(rid, str) and rid and rid not in runners and e.get("type") != "alert":
            runners[rid] = "?"

    # --- messages: acknowledged publishes, and who handled what ---------------------
    by_wake: dict[str, str] = {}
    published: dict[str, dict[str, float]] = defaultdict(dict)  # runner -> msg -> t
    where: dict[tuple[str, str], tuple[str, str | None]] = {}  # (runner, msg) -> stream, offset
    probes: dict[tuple[str, str], tuple[str, float]] = {}  # (runner, fault) -> (msg, t)
    for e in evs:
        if e.get("type") != "publish" or not e.get("ok") or not e.get("msg"):
            continue
        rid, msg = str(e["runner"]), str(e["msg"])
        published[rid][msg] = float(e["t"])
        if e.get("wake_id"):
            by_wake[str(e["wake_id"])] = msg
        if e.get("stream"):
            off = e.get("offset")
            where[(rid, msg)] = (_stream_key(str(e["stream"])), str(off) if off else None)
        if e.get("probe") and e.get("fault"):
            probes[(rid, str(e["fault"]))] = (msg, float(e["t"]))
    handled_at: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    unmatched: Counter[str] = Counter()
    # claims by stream, for messages only a stream offset identifies (upstream claims
    # carry no payload): runner -> stream -> [(t, offset)]
    claims: dict[str, dict[str, list[tuple[float, str | None]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for e in evs:
        if e.get("type") != "handled":
            continue
        rid = str(e.get("runner"))
        hmsg = e.get("msg") or by_wake.get(str(e.get("wake_id") or ""))
        if hmsg:
            handled_at[rid][str(hmsg)].append(float(e["t"]))
        elif e.get("stream"):
            off = e.get("offset")
            claims[rid][_stream_key(str(e["stream"]))].append(
                (float(e["t"]), str(off) if off else None)
            )
        else:
            unmatched[rid] += 1
    for (rid, msg), (stream, offset) in where.items():
        if handled_at[rid].get(msg):
            continue
        cover = [
            (t, off)
            for t, off in claims[rid].get(stream, [])
            if t >= published[rid][msg] - 1.0 and _covers(off, offset)
        ]
        if cover:
            first = cover[0]
            # the same work (stream, offset) handed out again counts as handled twice
            again = [c for c in claims[rid][stream] if c[1] == first[1] and c[0] > first[0]]
            handled_at[rid][msg] = [first[0], *(t for t, _ in again)]

    def lost_in(rid: str, lo: float, hi: float) -> list[str]:
        return sorted(
            m for m, t in published[rid].items() if lo <= t < hi and not handled_at[rid].get(m)
        )

    def twice_in(rid: str, lo: float, hi: float) -> list[str]:
        return sorted(
            m
            for m, t in published[rid].items()
            if lo <= t < hi and len(handled_at[rid].get(m, [])) > 1
        )

    # --- per runner lanes -------------------------------------------------------------
    lanes: dict[str, dict[str, Any]] = {}
    trans_of: dict[str, list[tuple[float, str, str]]] = {}
    beats_of: dict[str, list[tuple[float, bool]]] = {}
    lies_of: dict[str, list[tuple[float, float]]] = {}
    ends_of: dict[str, list[tuple[float, str]]] = {}
    dets_of: dict[str, list[tuple[float, str]]] = {}
    for rid, profile in runners.items():
        trans = _transitions(evs, rid)
        beats = [
            (float(e["t"]), bool(e.get("ok")))
            for e in evs
            if e.get("type") == "heartbeat" and e.get("runner") == rid
        ]
        ends = [
            (float(e["t"]), str(e.get("reason", "?")))
            for e in evs
            if e.get("type") == "session_end" and e.get("runner") == rid
        ]
        dets_of[rid] = [
            (float(e["t"]), str(e.get("detector", "?")))
            for e in evs
            if e.get("type") == "detector" and e.get("runner") == rid
        ]
        lies = _lies(trans, beats, t_end)
        trans_of[rid], beats_of[rid], lies_of[rid], ends_of[rid] = trans, beats, lies, ends
        handled_times = sorted(t for ts in handled_at[rid].values() for t in ts)
        lanes[rid] = {
            "profile": profile,
            "bands": _bands(trans, t0, t_end),
            "heartbeats": [[_r(t - t0), ok] for t, ok in beats],
            "handled": [_r(t - t0) for t in handled_times],
            "lost": sorted(_r(published[rid][m] - t0) or 0.0 for m in lost_in(rid, t0, t_end + 1)),
            "session_ends": [[_r(t - t0), reason] for t, reason in ends],
            "lying": [[_r(a - t0), _r(b - t0)] for a, b in lies],
        }

    # --- faults -----------------------------------------------------------------------
    faults: list[dict[str, Any]] = []
    phase_starts = [e for e in evs if e.get("type") == "phase_start"]
    for i, ph in enumerate(phase_starts):
        name = str(ph.get("fault"))
        nxt = float(phase_starts[i + 1]["t"]) if i + 1 < len(phase_starts) else float("inf")
        lo = float(ph["t"])
        in_phase = [e for e in evs if lo <= float(e["t"]) < nxt and e.get("fault") == name]
        fs = next((e for e in in_phase if e.get("type") == "fault_start"), None)
        heal = next((e for e in in_phase if e.get("type") == "fault_heal"), None)
        pend = next((e for e in in_phase if e.get("type") == "phase_end"), None)
        hi = float(pend["t"]) if pend else min(nxt, t_end)
        f_t = float(fs["t"]) if fs else None
        h_t = float(heal["t"]) if heal else None
        outage = bool((fs or {}).get("outage", True))
        rows: dict[str, dict[str, Any]] = {}
        for rid, profile in runners.items():
            detected = back = delivery = None
            reason = None
            if f_t is not None and outage:
                left = [t for t, old, _new in trans_of[rid] if old == STREAMING and f_t <= t < hi]
                if left:
                    detected = left[0] - f_t
                    # the detector that fired for it, else how the session ended
                    fired = [d for t, d in dets_of[rid] if f_t <= t <= left[0] + 0.1]
                    why = [r for t, r in ends_of[rid] if left[0] - 0.5 <= t < hi and t >= f_t]
                    reason = fired[-1] if fired else (why[0] if why else None)
                    if h_t is not None:
                        back_ts = [
                            t for t, _o, new in trans_of[rid] if new == STREAMING and t >= left[0]
                        ]
                        if back_ts and back_ts[0] < hi:
                            back = max(0.0, back_ts[0] - h_t)
            probe = probes.get((rid, name))
            if probe is not None and h_t is not None:
                got = [t for t in handled_at[rid].get(probe[0], []) if t < hi]
                delivery = (min(got) - h_t) if got else None
            lied = (
                _overlap(lies_of[rid], f_t, h_t if h_t is not None else hi)
                if f_t is not None
                else 0.0
            )
            rows[rid] = {
                "profile": profile,
                "state_at_fault": _state_at(trans_of[rid], f_t) if f_t is not None else None,
                "detected_s": _r(detected),
                "reason": reason,
                "back_streaming_s": _r(back),
                "first_delivery_s": _r(delivery),
                "lied_s": _r(lied),
                "published": sum(1 for t in published[rid].values() if lo <= t < hi),
                "lost": len(lost_in(rid, lo, hi)),
                "handled_twice": len(twice_in(rid, lo, hi)),
                "lost_msgs": lost_in(rid, lo, hi),
                "alerts_fired": [],
            }
        faults.append(
            {
                "fault": name,
                "label": str((fs or ph).get("label", name)),
                "outage": outage,
                "phase_start": _r(lo - t0),
                "start": _r(f_t - t0) if f_t is not None else None,
                "heal": _r(h_t - t0) if h_t is not None else None,
                "end": _r(hi - t0),
                "rows": rows,
            }
        )

    # --- which alerts fired for each runner during each fault -----------------------
    # (up to the next phase: Prometheus lags the fault by a scrape and an evaluation)
    alert_rows = _alert_intervals(evs, t0, t_end)
    for i, f in enumerate(faults):
        if f["start"] is None:
            continue
        until = faults[i + 1]["phase_start"] if i + 1 < len(faults) else _r(t_end - t0)
        for rid, row in f["rows"].items():
            row["alerts_fired"] = [
                {"alert": a["alert"], "after_s": _r(a["firing_at"] - f["start"])}
                for a in alert_rows
                if a["runner"] == rid
                and a["firing_at"] is not None
                and f["start"] <= a["firing_at"] < until
            ]

    # --- totals ----------------------------------------------------------------------
    per_runner: dict[str, dict[str, Any]] = {}
    for rid, profile in runners.items():
        msgs = published[rid]
        end_counts = Counter(r for _t, r in ends_of[rid])
        per_runner[rid] = {
            "profile": profile,
            "published": len(msgs),
            "handled": sum(1 for m in msgs if handled_at[rid].get(m)),
            "lost": len(lost_in(rid, float("-inf"), float("inf"))),
            "handled_twice": len(twice_in(rid, float("-inf"), float("inf"))),
            "handled_unmatched": unmatched[rid],
            "heartbeats_ok": sum(1 for _t, ok in beats_of[rid] if ok),
            "heartbeats_failed": sum(1 for _t, ok in beats_of[rid] if not ok),
            "session_ends": dict(sorted(end_counts.items())),
            "lied_s": _r(sum(b - a for a, b in lies_of[rid])),
            "outages_noticed": sum(
                1
                for f in faults
                if f["outage"]
                and f["start"] is not None
                and f["rows"][rid]["detected_s"] is not None
            ),
            "outages": sum(1 for f in faults if f["outage"] and f["start"] is not None),
        }
    totals = {
        k: sum(int(r[k]) for r in per_runner.values())
        for k in ("published", "handled", "lost", "handled_twice")
    }
    return {
        "run": {
            "start": t0,
            "duration_s": _r(t_end - t0),
            "interrupted": bool((end or {}).get("interrupted", end is None)),
            "config": {k: v for k, v in (start or {}).items() if k not in ("t", "type")},
        },
        "order": list(runners),
        "runners": per_runner,
        "faults": faults,
        "alerts": alert_rows,
        "lanes": lanes,
        "totals": totals,
        "notes": [str(e.get("text")) for e in evs if e.get("type") == "note"],
    }
