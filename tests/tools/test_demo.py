"""`pullwake demo` end to end: real server, runner and publisher processes, real signals."""

from __future__ import annotations

import importlib.util
import re
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pullwake.tools.demo_status import format_status, wakes_delivered
from tests.support.procs import pid_alive, wait_until

HAVE_RUNNER = importlib.util.find_spec("pullwake.runner.cli") is not None
STATUS_RE = re.compile(r"^\[\s*\d+s\] ")


def _field(line: str, key: str) -> str | None:
    m = re.search(rf"\b{key}=(\S+)", line)
    return m.group(1) if m else None


def _int_field(line: str, key: str) -> int:
    m = re.search(rf"\b{key}=(\d+)", line)
    return int(m.group(1)) if m else 0


class Demo:
    """`pullwake demo` as a child process whose stdout is collected line by line."""

    def __init__(self, tmp: Path, *args: str) -> None:
        argv = [sys.executable, "-m", "pullwake", "demo", "--workdir", str(tmp / "demo")]
        argv += ["--publish-interval", "0.5", *args]
        if not HAVE_RUNNER:
            argv.append("--no-runner")
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def status_lines(self) -> list[str]:
        return [ln for ln in list(self.lines) if STATUS_RE.match(ln)]

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.wait(5)


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc (children are in their own sessions)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X"):
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found


def test_status_line_reads_the_runner_status() -> None:
    now = datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC)
    since = (now - timedelta(seconds=7.5)).isoformat().replace("+00:00", "Z")
    hb_at = (now - timedelta(seconds=1.25)).isoformat().replace("+00:00", "Z")
    status = {
        "state": "running.streaming",
        "diagnostics": {
            "stream_connected": True,
            "stream_connected_since": since,
            "stream_idle_seconds": 0.4,
            "reconnect_count": 2,
            "last_reconnect_reason": "eof",
            "last_heartbeat_ok": True,
            "last_heartbeat_at": hb_at,
            "claims_succeeded": 5,
        },
    }
    line = format_status(3.0, status, 6, "up", now=now, health="healthy")
    assert line == (
        "[    3s] state=running.streaming connected=yes age=7.5s idle=0.4s reconnects=2(eof) "
        "heartbeat=ok/1.2s delivered=5 health=healthy published=6 server=up"
    )
    assert wakes_delivered({"wakes": {"handled": 9}, "diagnostics": {"claims_succeeded": 5}}) == 9
    down = format_status(4.0, None, 6, "DOWN", now=now)
    assert "state=? " in down and down.endswith("server=DOWN")
    assert "connected=no age=-" in format_status(1, {"state": "running.reconnecting"}, 0, "up")


def test_bad_option_is_one_line() -> None:
    argv = [sys.executable, "-m", "pullwake", "demo", "--publish-interval", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == "pullwake: error: --publish-interval must be > 0"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--workdir", "/proc/pullwake-no-such-dir"], "cannot create --workdir"),
        (["--port", "99999"], "--port must be 0-65535"),  # the server's own reason, in line
    ],
)
def test_a_failing_start_is_one_line_that_says_why(
    tmp_path: Path, args: list[str], says: str
) -> None:
    argv = [sys.executable, "-m", "pullwake", "demo", "--duration", "1"]
    if "--workdir" not in args:
        argv += ["--workdir", str(tmp_path / "demo")]
    done = subprocess.run(argv + args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pullwake: error:"), done.stderr
    assert says in lines[0], lines[0]


@pytest.mark.slow
def test_duration_run_streams_and_delivers(tmp_path: Path) -> None:
    demo = Demo(tmp_path, "--duration", "6")
    try:
        assert demo.wait(45) == 0, demo.output()
    finally:
        demo.kill()
    out, lines = demo.output(), demo.status_lines()
    assert "server          http://127.0.0.1:" in out
    assert len(lines) >= 3, out
    assert max(_int_field(ln, "published") for ln in lines) > 0, out
    if HAVE_RUNNER:
        assert "/status" in out
        assert any(_field(ln, "state") == "running.streaming" for ln in lines), out
        assert max(_int_field(ln, "delivered") for ln in lines) > 0, out
    assert "stopping (done)" in out


@pytest.mark.slow
def test_chaos_then_sigint_leaves_no_process(tmp_path: Path) -> None:
    args = ["--chaos", "--chaos-interval", "2", "--chaos-down", "1", "--heartbeat-interval", "1"]
    demo = Demo(tmp_path, *args)
    try:
        wait_until(lambda: demo.status_lines(), 30, what=f"first status line\n{demo.output()}")
        kids = descendants(demo.proc.pid)
        assert len(kids) >= (2 if HAVE_RUNNER else 1), kids

        def recovered() -> bool:
            after = "\n".join(demo.lines).split("chaos: server restarted", 1)
            if len(after) < 2:
                return False
            later = [ln for ln in after[1].splitlines() if STATUS_RE.match(ln)]
            if not HAVE_RUNNER:
                return any("server=up" in ln for ln in later)
            return any(
                _field(ln, "state") == "running.streaming" and _int_field(ln, "reconnects") > 0
                for ln in later
            )

        wait_until(recovered, 25, interval=0.2, what=f"recovery after chaos\n{demo.output()}")
        assert any("server=DOWN" in ln for ln in demo.status_lines())
        kids |= descendants(demo.proc.pid)
        demo.proc.send_signal(signal.SIGINT)
        assert demo.wait(20) == 0, demo.output()
    finally:
        demo.kill()
    assert "stopping (signal)" in demo.output()
    alive = [p for p in kids if pid_alive(p)]
    assert alive == [], alive
