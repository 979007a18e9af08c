"""`pullwake chaos --quick` for real: a server, two runners, the fault proxy, real
kill -9 and half-open; then the outputs are held against the recorded events, the
PNG's header against the expected size, and report.html is opened in a real
headless Chromium (DevTools protocol over loopback) that must show the timeline
without a console error."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pullwake.tools.chaos_plot import figure_size
from pullwake.tools.chaos_record import read_events
from pullwake.tools.chaos_report import FAULT_COLUMNS, RUNNER_COLUMNS, cell_text
from pullwake.tools.chaos_summary import summarize

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chaos")
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pullwake",
            "chaos",
            "--out",
            str(out),
            "--quick",
            "--alerts",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OTEL_SDK_DISABLED": "true"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - started < 60, "the quick run must stay well under a minute"
    # one progress line per phase, then the outputs
    assert re.search(r"phase 1/2 server kill -9: .*default: detected", done.stdout), done.stdout
    assert "phase 2/2 proxy half-open:" in done.stdout, done.stdout
    return out


class _Table(HTMLParser):
    """Rows of <table id=faults> and <table id=runners>: attributes and cells."""

    def __init__(self) -> None:
        super().__init__()
        self.table: str | None = None
        self.rows: dict[str, list[dict[str, Any]]] = {"faults": [], "runners": []}
        self._cell: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.table = a.get("id")
        elif tag == "tr" and self.table in self.rows and "data-runner" in a:
            self.rows[self.table].append({"attrs": a, "cells": {}})
        elif tag == "td" and self.table in self.rows and "data-key" in a and self.rows[self.table]:
            self._cell = {
                "key": a["data-key"],
                "value": json.loads(a["data-value"] or ""),
                "text": "",
            }

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self.table in self.rows:
            self.rows[self.table][-1]["cells"][self._cell["key"]] = self._cell
            self._cell = None
        elif tag == "table":
            self.table = None


def test_summary_json_and_html_table_say_what_the_events_say(quick_run: Path) -> None:
    events = read_events(quick_run / "events.jsonl")
    expected = summarize(events)
    assert json.loads((quick_run / "summary.json").read_text()) == json.loads(json.dumps(expected))
    table = _Table()
    table.feed((quick_run / "report.html").read_text())
    fault_rows = [(f, rid, row) for f in expected["faults"] for rid, row in f["rows"].items()]
    assert len(table.rows["faults"]) == len(fault_rows) == 4  # 2 faults x 2 profiles
    for html_row, (f, rid, row) in zip(table.rows["faults"], fault_rows, strict=True):
        assert html_row["attrs"]["data-fault"] == f["fault"]
        assert html_row["attrs"]["data-runner"] == rid
        for key, _ in FAULT_COLUMNS:
            cell = html_row["cells"][key]
            assert cell["value"] == row[key], (f["fault"], rid, key)
            assert cell["text"] == cell_text(key, row[key], f["outage"]), (rid, key)
    for html_row in table.rows["runners"]:
        row = expected["runners"][html_row["attrs"]["data-runner"]]
        for key, _ in RUNNER_COLUMNS:
            assert html_row["cells"][key]["value"] == row[key]

    # the story the run exists to tell, as the events record it
    by = {
        (f["fault"], row["profile"]): row for f in expected["faults"] for row in f["rows"].values()
    }
    assert by[("kill9", "default")]["detected_s"] is not None
    assert by[("half_open", "default")]["detected_s"] is not None
    assert by[("half_open", "legacy")]["detected_s"] is None  # the seed's bug
    assert by[("half_open", "legacy")]["lied_s"] > 0
    assert expected["runners"]["chaos-default"]["lost"] == 0
    assert expected["totals"]["published"] > 10


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", head
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def test_png_is_a_real_image_of_the_expected_size(quick_run: Path) -> None:
    summary = json.loads((quick_run / "summary.json").read_text())
    assert _png_size(quick_run / "timeline.png") == figure_size(summary)
    from PIL import Image

    with Image.open(quick_run / "timeline.png") as img:
        img.verify()
    svg = (quick_run / "timeline.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "server kill -9" in svg


# --- real Chromium ------------------------------------------------------------------
async def _open_in_chromium(report_url: str, profile: Path) -> dict[str, Any]:
    import aiohttp

    proc = await asyncio.create_subprocess_exec(
        CHROMIUM or "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        port = None
        async with asyncio.timeout(30):
            while port is None:
                line = (await proc.stderr.readline()).decode(errors="replace")
                assert line, "chromium exited before printing its DevTools address"
                if m := re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line):
                    port = int(m.group(1))
        drain = asyncio.create_task(proc.stderr.read())  # keep its pipe from filling
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                pages = [t for t in await resp.json() if t.get("type") == "page"]
            ws_url = pages[0]["webSocketDebuggerUrl"]
            async with http.ws_connect(ws_url, max_msg_size=0) as ws:
                got = await _drive(ws, report_url)
        drain.cancel()
        return got
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _drive(ws: Any, url: str) -> dict[str, Any]:
    ids = iter(range(1, 10_000))
    errors: list[str] = []
    answers: dict[int, Any] = {}
    loaded = asyncio.Event()

    async def reader() -> None:
        async for msg in ws:
            data = json.loads(msg.data)
            method = data.get("method")
            if "id" in data:
                answers[data["id"]] = data
            elif method == "Runtime.consoleAPICalled" and data["params"]["type"] in (
                "error",
                "assert",
            ):
                errors.append(json.dumps(data["params"]["args"])[:300])
            elif method == "Runtime.exceptionThrown":
                errors.append(json.dumps(data["params"]["exceptionDetails"])[:300])
            elif method == "Log.entryAdded" and data["params"]["entry"]["level"] == "error":
                errors.append(data["params"]["entry"].get("text", "")[:300])
            elif method == "Page.loadEventFired":
                loaded.set()

    async def call(method: str, **params: Any) -> Any:
        i = next(ids)
        await ws.send_json({"id": i, "method": method, "params": params})
        while i not in answers:
            await asyncio.sleep(0.01)
        assert "error" not in answers[i], answers[i]
        return answers[i].get("result")

    task = asyncio.create_task(reader())
    try:
        async with asyncio.timeout(30):
            for domain in ("Page", "Runtime", "Log"):
                await call(f"{domain}.enable")
            await call("Page.navigate", url=url)
            await loaded.wait()
            js = (
                "(() => { const i = document.getElementById('timeline');"
                " return JSON.stringify({complete: i && i.complete, w: i && i.naturalWidth,"
                " h: i && i.naturalHeight, shown: i && i.getBoundingClientRect().width,"
                " rows: document.querySelectorAll('#faults tbody tr').length,"
                " title: document.title}); })()"
            )
            result = await call("Runtime.evaluate", expression=js, returnByValue=True)
            shot = await call("Page.captureScreenshot", format="png")
            await asyncio.sleep(0.2)  # late console messages
    finally:
        task.cancel()
    return {
        "page": json.loads(result["result"]["value"]),
        "errors": errors,
        "screenshot": shot["data"],
    }


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package `chromium`)")
def test_report_renders_in_headless_chromium_with_the_timeline(
    quick_run: Path, tmp_path: Path
) -> None:
    url = (quick_run / "report.html").resolve().as_uri()
    got = asyncio.run(_open_in_chromium(url, tmp_path / "profile"))
    summary = json.loads((quick_run / "summary.json").read_text())
    page = got["page"]
    assert got["errors"] == []
    assert page["title"] == "pullwake chaos report"
    assert page["complete"] is True
    assert (page["w"], page["h"]) == figure_size(summary)  # the embedded PNG decoded
    assert page["shown"] > 300  # and laid out on the page
    assert page["rows"] == 4
    assert len(got["screenshot"]) > 1000


def test_ctrl_c_stops_cleanly_and_still_writes_what_it_has(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pullwake",
            "chaos",
            "--out",
            str(out),
            "--quick",
            "--alerts",
            "off",
            "--outage",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OTEL_SDK_DISABLED": "true"},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:  # wait until the first fault is under way
            lines.append(line)
            if "phase 1/2" in line:
                break
        events = out / "events.jsonl"
        deadline = time.monotonic() + 30
        while "fault_start" not in events.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = [int(p) for p in re.findall(r'"pid": (\d+)', events.read_text())]
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "".join(lines) + rest
    assert "interrupted" in rest
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["interrupted"] is True
    assert summary["faults"][0]["fault"] == "kill9"
    assert (out / "report.html").read_text().count("interrupted") >= 1
    assert _png_size(out / "timeline.png") == figure_size(summary)
    children = _children_of(proc.pid) | set(pids)
    assert not [p for p in children if Path(f"/proc/{p}").exists() and _alive(p)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus not installed (Debian `prometheus`)"
)
def test_the_legacy_lie_fires_its_alert_in_a_real_prometheus(tmp_path: Path) -> None:
    """The project's own rules (for: scaled 1/20) against the runner's /metrics: while the
    legacy runner says streaming and its heartbeats fail, the seed's alert goes pending,
    then firing, then resolves after the heal - and the report says when."""
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pullwake",
            "chaos",
            "--out",
            str(out),
            "--quick",
            "--alerts",
            "on",
            "--faults",
            "sigstop",
            "--profiles",
            "legacy",
            "--outage",
            "9",
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(summarize(read_events(out / "events.jsonl"))))
    seed = [
        a
        for a in summary["alerts"]
        if a["alert"] == "PullWakeStreamConnectedWhileHeartbeatsFailing"
        and a["runner"] == "chaos-legacy"
    ]
    assert seed, summary["alerts"]
    fault = summary["faults"][0]
    # pending while the fault lasts; firing and resolved lag by a scrape and an evaluation
    assert fault["start"] <= seed[0]["pending_at"] <= fault["heal"]
    assert seed[0]["firing_at"] is not None and seed[0]["firing_at"] >= seed[0]["pending_at"]
    assert seed[0]["resolved_at"] is not None and seed[0]["resolved_at"] > fault["heal"]
    fired = fault["rows"]["chaos-legacy"]["alerts_fired"]
    assert "PullWakeStreamConnectedWhileHeartbeatsFailing" in [a["alert"] for a in fired]
    assert "StreamConnectedWhileHeartbeatsFailing" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--faults", "kill9,nope"], "unknown fault(s) nope"),
        (["--profiles", "default,default"], "lists a profile twice"),
        (["--outage", "0"], "--outage must be in (0, 600]"),
        (["--heartbeat-interval", "-1"], "--heartbeat-interval must be in (0, 60]"),
    ],
)
def test_bad_options_are_one_line_and_start_nothing(
    tmp_path: Path, args: list[str], says: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pullwake", "chaos", "--out", str(tmp_path / "o"), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pullwake: error:") and says in lines[0]
    assert not (tmp_path / "o").exists()
