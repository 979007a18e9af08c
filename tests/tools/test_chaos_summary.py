"""`pullwake chaos`: the pure parts - the summary of synthetic event lists, the log and
handler-line parsers, the alert diff - and the handler command run by a real shell."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from pullwake.tools.chaos_alerts import alert_changes
from pullwake.tools.chaos_record import (
    handler_command,
    parse_handled_line,
    parse_log_line,
    read_events,
)
from pullwake.tools.chaos_summary import summarize

T0 = 1_800_000_000.0
S, C, R = "running.streaming", "running.connecting", "running.reconnecting"


def ev(t: float, type_: str, **fields: Any) -> dict[str, Any]:
    return {"t": T0 + t, "type": type_, **fields}


def scenario() -> list[dict[str, Any]]:
    """Two runners through one kill: `d` notices at +0.2 s and is back 0.7 s after the
    heal; `l` never notices and lies while its heartbeats fail."""
    e = [
        ev(0, "run_start", runners={"d": "default", "l": "legacy"}, runner_order=["l", "d"]),
        ev(0.5, "transition", runner="d", **{"from": "stopped", "to": C}),
        ev(0.6, "transition", runner="d", **{"from": C, "to": S}),
        ev(0.5, "transition", runner="l", **{"from": "stopped", "to": C}),
        ev(0.7, "transition", runner="l", **{"from": C, "to": S}),
        ev(1, "phase_start", fault="kill9", label="server kill -9"),
        ev(2, "fault_start", fault="kill9", label="server kill -9", outage=True),
        ev(2.2, "transition", runner="d", **{"from": S, "to": R}),
        ev(2.21, "session_end", runner="d", session=1, reason="error"),
        ev(2.19, "detector", runner="l", detector="idle_timeout"),  # not d's
        ev(6, "fault_heal", fault="kill9"),
        ev(6.7, "transition", runner="d", **{"from": R, "to": S}),
        ev(9, "phase_end", fault="kill9"),
        ev(10, "run_end", interrupted=False),
    ]
    for t, ok in [(1.5, True), (2.5, False), (3.5, False), (6.5, True)]:
        e.append(ev(t, "heartbeat", runner="d", ok=ok))
        e.append(ev(t + 0.1, "heartbeat", runner="l", ok=ok))
    # messages: d#1 handled twice, l#1 lost, probes handled at +0.9 / +2.0 after the heal
    e += [
        ev(1.2, "publish", runner="d", msg="d#1", ok=True, wake_id="w1"),
        ev(1.3, "handled", runner="d", msg=None, wake_id="w1"),  # matched through the wake id
        ev(7.0, "handled", runner="d", msg="d#1", wake_id="w1b"),
        ev(1.2, "publish", runner="l", msg="l#1", ok=True),
        ev(3.0, "publish", runner="l", msg="l#2", ok=False, error="URLError"),  # not acked
        ev(6.0, "publish", runner="d", msg="d#2", ok=True, probe=True, fault="kill9"),
        ev(6.9, "handled", runner="d", msg="d#2"),
        ev(6.0, "publish", runner="l", msg="l#3", ok=True, probe=True, fault="kill9"),
        ev(8.0, "handled", runner="l", msg="l#3"),
        ev(8.5, "handled", runner="l", msg=None, wake_id="unknown"),
        ev(3.0, "alert", alert="PullWakeHeartbeatsFailing", runner="l", state="pending"),
        ev(5.0, "alert", alert="PullWakeHeartbeatsFailing", runner="l", state="firing"),
        ev(7.5, "alert", alert="PullWakeHeartbeatsFailing", runner="l", state="resolved"),
        ev(8.0, "alert", alert="PullWakeRunnerNotStreaming", runner="d", state="firing"),
    ]
    return e


def test_fault_rows_detection_recovery_loss_and_duplicates() -> None:
    s = summarize(reversed(scenario()))  # order of arrival does not matter
    (f,) = s["faults"]
    assert (f["fault"], f["start"], f["heal"], f["end"]) == ("kill9", 2.0, 6.0, 9.0)
    d, lg = f["rows"]["d"], f["rows"]["l"]
    assert d["state_at_fault"] == S
    assert d["detected_s"] == 0.2 and d["reason"] == "error"
    assert d["back_streaming_s"] == 0.7 and d["first_delivery_s"] == 0.9
    assert d["lied_s"] == 0.0
    assert (d["published"], d["lost"], d["handled_twice"]) == (2, 0, 1)
    assert lg["detected_s"] is None and lg["back_streaming_s"] is None
    assert lg["first_delivery_s"] == 2.0
    # legacy said streaming from its first failed heartbeat (2.6) to the heal (6.0)
    assert lg["lied_s"] == 3.4
    assert (lg["published"], lg["lost"], lg["lost_msgs"]) == (2, 1, ["l#1"])


def test_runner_totals_lanes_and_alerts() -> None:
    s = summarize(scenario())
    assert s["totals"] == {"published": 4, "handled": 3, "lost": 1, "handled_twice": 1}
    assert list(s["runners"]) == list(s["lanes"]) == ["l", "d"]  # as the run declared
    d, lg = s["runners"]["d"], s["runners"]["l"]
    assert (d["heartbeats_ok"], d["heartbeats_failed"]) == (2, 2)
    assert (d["outages_noticed"], lg["outages_noticed"], d["outages"]) == (1, 0, 1)
    assert d["session_ends"] == {"error": 1}
    assert lg["handled_unmatched"] == 1
    assert lg["lied_s"] == 4.0  # 2.6 -> 6.6, the next good heartbeat
    bands = s["lanes"]["d"]["bands"]
    assert bands[0] == [0.0, 0.5, "unknown"]
    assert [b[2] for b in bands] == ["unknown", C, S, R, S]
    assert bands[-1][1] == 10.0  # to the end of the run
    assert s["lanes"]["l"]["lying"] == [[2.6, 6.6]]
    assert s["alerts"] == [
        {
            "alert": "PullWakeHeartbeatsFailing",
            "runner": "l",
            "pending_at": 3.0,
            "firing_at": 5.0,
            "resolved_at": 7.5,
        },
        {
            "alert": "PullWakeRunnerNotStreaming",
            "runner": "d",
            "pending_at": 8.0,
            "firing_at": 8.0,
            "resolved_at": None,
            "open_at_end": True,
        },
    ]
    assert s["run"]["interrupted"] is False and s["run"]["duration_s"] == 10.0
    # the alert that fired while the kill lasted, seconds after the fault started
    assert s["faults"][0]["rows"]["l"]["alerts_fired"] == [
        {"alert": "PullWakeHeartbeatsFailing", "after_s": 3.0}
    ]
    assert s["faults"][0]["rows"]["d"]["alerts_fired"] == [
        {"alert": "PullWakeRunnerNotStreaming", "after_s": 6.0}
    ]


def test_polled_states_stand_in_when_the_log_gave_no_transition() -> None:
    e = [
        ev(0, "run_start", runners={"x": "default"}),
        ev(1, "status_state", runner="x", state=S),
        ev(1.5, "status_state", runner="x", state=S),
        ev(2, "phase_start", fault="sigstop", label="server SIGSTOP"),
        ev(2.5, "fault_start", fault="sigstop", label="server SIGSTOP"),
        ev(4, "status_state", runner="x", state=R),
        ev(5, "fault_heal", fault="sigstop"),
        ev(5.5, "status_state", runner="x", state=S),
        ev(6, "phase_end", fault="sigstop"),
    ]
    row = summarize(e)["faults"][0]["rows"]["x"]
    assert row["detected_s"] == 1.5 and row["back_streaming_s"] == 0.5
    assert summarize(e)["run"]["interrupted"] is True  # no run_end: cut short


def test_burst_rows_have_no_detection_and_an_empty_log_summarizes() -> None:
    e = [
        ev(0, "run_start", runners={"x": "default"}),
        ev(0.1, "transition", runner="x", **{"from": C, "to": S}),
        ev(1, "phase_start", fault="burst", label="burst during handler"),
        ev(1.5, "fault_start", fault="burst", label="burst during handler", outage=False),
        ev(1.6, "publish", runner="x", msg="x#1", ok=True, fault="burst"),
        ev(2.0, "fault_heal", fault="burst"),
        ev(4.0, "handled", runner="x", msg="x#1"),
        ev(5.0, "phase_end", fault="burst"),
    ]
    (f,) = summarize(e)["faults"]
    assert f["outage"] is False
    assert f["rows"]["x"]["detected_s"] is None and f["rows"]["x"]["lost"] == 0
    empty = summarize([])
    assert empty["faults"] == [] and empty["totals"]["published"] == 0


def test_runner_log_lines_parse_as_utc() -> None:
    kind, t, fields = parse_log_line(
        "2026-12-02 04:30:33,497 INFO runner: running.connecting -> running.streaming on Connected"
    ) or ("", 0.0, {})
    assert kind == "transition" and fields == {"from": C, "to": S, "trigger": "Connected"}
    assert t == 1796185833.497
    parsed = parse_log_line("2026-12-02 04:30:40,001 INFO runner: session 3 ended: idle_timeout")
    assert parsed is not None and parsed[2] == {"session": 3, "reason": "idle_timeout"}
    parsed = parse_log_line(
        "2026-12-02 04:47:53,923 WARNING runner: detector heartbeat_failures fired: {'k': 2}"
    )
    assert parsed is not None and parsed[:1] == ("detector",)
    assert parsed[2] == {"detector": "heartbeat_failures"}
    parsed = parse_log_line("2026-12-02 04:30:40,001 INFO runner: session 4 ended: error: RST")
    assert parsed is not None and parsed[2]["reason"] == "error"
    assert parse_log_line("2026-12-02 04:30:40,001 INFO runner: wake x (no handler)") is None
    assert parse_log_line("Traceback (most recent call last):") is None


def test_handled_lines_find_the_message_id_wherever_the_server_put_it() -> None:
    wake = {"type": "wake", "payload": {"chaos_msg": "r#7"}}
    assert parse_handled_line(f"12.5 wk_1 - - {json.dumps(wake)}") == (
        12.5,
        {"msg": "r#7", "wake_id": "wk_1", "stream": None, "offset": None},
    )
    nested = {"entity": {"args": json.dumps({"chaos_msg": "r#8"})}}
    got = parse_handled_line(f"1 - - - {json.dumps(nested)}")
    assert got is not None and got[1]["msg"] == "r#8"
    claim = {"consumerId": "c1", "streams": [{"path": "chaos/r/main", "offset": "0_42"}]}
    assert parse_handled_line(f"2 c1 chaos/r/main 0_42 {json.dumps(claim)}") == (
        2.0,
        {"msg": None, "wake_id": "c1", "stream": "chaos/r/main", "offset": "0_42"},
    )
    assert parse_handled_line("garbage") is None


def test_claims_without_payload_are_matched_by_stream_and_offset() -> None:
    """Upstream claims carry no message: a claim of stream S up to offset o handles every
    message published to S ending at or before o; the same (S, o) twice is a duplicate."""
    e = [
        ev(0, "run_start", runners={"r": "default"}),
        ev(1, "publish", runner="r", msg="r#1", ok=True, stream="/chaos/r/main", offset="0_10"),
        ev(1.1, "publish", runner="r", msg="r#2", ok=True, stream="/chaos/r/main", offset="0_20"),
        ev(1.2, "publish", runner="r", msg="r#3", ok=True, stream="/chaos/r/main", offset="0_30"),
        ev(1.3, "publish", runner="r", msg="r#4", ok=True, stream="/chaos/q/main", offset="0_5"),
        ev(2, "handled", runner="r", wake_id="c1", stream="chaos/r/main", offset="0_20"),
        ev(3, "handled", runner="r", wake_id="c2", stream="chaos/r/main", offset="0_20"),
        ev(4, "handled", runner="r", wake_id="c3", stream="chaos/r/main", offset="0_100"),
        ev(5, "run_end", interrupted=False),
    ]
    r = summarize(e)["runners"]["r"]
    assert (r["published"], r["handled"], r["lost"], r["handled_twice"]) == (4, 3, 1, 2)
    assert summarize(e)["lanes"]["r"]["handled"] == [2.0, 2.0, 3.0, 3.0, 4.0]


def test_handler_command_records_one_line_per_message_in_a_real_shell(tmp_path: Path) -> None:
    out = tmp_path / "handled.txt"
    cmd = handler_command(out, 0.01)
    runs = [
        ({"payload": {"chaos_msg": "r#0"}}, {"PULLWAKE_WAKE_ID": "wk_0"}),
        ({"payload": {"chaos_msg": "r#1", "chaos_slow": True}}, {"PULLWAKE_WAKE_ID": "wk_1"}),
        (
            {"consumerId": "c2"},
            {
                "PULLWAKE_WAKE_ID": "c2",
                "PULLWAKE_STREAM_PATH": "chaos/r-chaos_slow/main",
                "PULLWAKE_STREAM_OFFSET": "0_7",
            },
        ),
    ]
    for wake, env in runs:
        subprocess.run(
            ["sh", "-c", cmd],
            input=json.dumps(wake, indent=1),  # multi-line on stdin, one line in the file
            text=True,
            check=True,
            env={**env, "PATH": "/usr/bin:/bin"},
        )
    got = [parse_handled_line(line) for line in out.read_text().splitlines()]
    assert [g[1] if g else None for g in got] == [
        {"msg": "r#0", "wake_id": "wk_0", "stream": None, "offset": None},
        {"msg": "r#1", "wake_id": "wk_1", "stream": None, "offset": None},
        {"msg": None, "wake_id": "c2", "stream": "chaos/r-chaos_slow/main", "offset": "0_7"},
    ]


def test_alert_changes_pending_firing_resolved() -> None:
    def a(name: str, state: str, runner: str = "r") -> dict[str, Any]:
        return {
            "labels": {"alertname": name, "runner_id": runner},
            "state": state,
            "activeAt": "2026-12-02T04:30:33.5Z",
        }

    view, ch = alert_changes({}, [a("A", "pending"), a("B", "firing")])
    assert ch == [
        ("A", "r", "pending", 1796185833.5),
        ("B", "r", "pending", 1796185833.5),
        ("B", "r", "firing", None),
    ]
    view, ch = alert_changes(view, [a("A", "firing"), a("B", "firing")])
    assert ch == [("A", "r", "firing", None)]
    view, ch = alert_changes(view, [a("A", "firing")])
    assert ch == [("B", "r", "resolved", None)] and view == {("A", "r"): "firing"}


def test_read_events_skips_a_torn_last_line(tmp_path: Path) -> None:
    p = tmp_path / "events.jsonl"
    p.write_text('{"t": 1, "type": "note", "text": "x"}\n{"t": 2, "ty')
    assert read_events(p) == [{"t": 1, "type": "note", "text": "x"}]


def test_bench_detection_chart_is_a_png_of_the_size_it_says(tmp_path: Path) -> None:
    from pullwake.tools.chaos_plot import draw_detection_chart

    rows = [
        {"fault": f, "profile": p, "detection_s": d, "recovery_s": r}
        for f in ("sigkill", "half_open")
        for p, d, r in (("default", 0.004, 1.8), ("legacy", None, None))
    ]
    png, svg = tmp_path / "d.png", tmp_path / "d.svg"
    size = draw_detection_chart(rows, 15.0, "t", png, svg)
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(head[16:20]), int.from_bytes(head[20:24])) == size
    assert "never" in svg.read_text()


def test_detection_reason_is_the_detector_that_fired_when_the_log_names_one() -> None:
    e = [
        *scenario(),
        ev(2.199, "detector", runner="d", detector="heartbeat_failures"),
    ]
    assert summarize(e)["faults"][0]["rows"]["d"]["reason"] == "heartbeat_failures"
    assert summarize(scenario())["faults"][0]["rows"]["d"]["reason"] == "error"
