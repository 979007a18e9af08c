"""`pullwake stack wait|trickle|up` as a user runs them: real processes, real sockets.

Bad input gets one line on stderr and exit 2, never a traceback.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.procs import ServerProcess, free_port, running

PY = sys.executable


def pullwake(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "pullwake", *args], capture_output=True, text=True, timeout=timeout
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--runners", "0"], ["--runners"]),
        (["--runners", "2", "--legacy-runners", "3"], ["--legacy-runners"]),
        (["--chaos-down", "0"], ["--chaos-down"]),
        (["--duration", "-1"], ["--duration"]),
        (["--base-port", "80"], ["--base-port"]),
    ],
)
def test_stack_up_bad_input_is_one_line(args: list[str], words: list[str]) -> None:
    one_line_error(pullwake("stack", "up", *args), *words)


def test_wait_succeeds_on_a_listening_port_and_an_http_200(tmp_path: Path) -> None:
    port = free_port()
    web = subprocess.Popen(
        [PY, "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        proc = pullwake(
            "stack",
            "wait",
            "--timeout",
            "20",
            f"http://127.0.0.1:{port}/",
            "--tcp",
            f"127.0.0.1:{port}",
        )
        assert proc.returncode == 0, proc.stderr
    finally:
        web.terminate()
        web.wait(5)


def test_wait_times_out_naming_what_is_down() -> None:
    with socket.socket() as s:  # bound, never listening: connects are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        t0 = time.monotonic()
        proc = pullwake("stack", "wait", "--timeout", "1", f"http://127.0.0.1:{port}/healthz")
        took = time.monotonic() - t0
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"not ready after 1s: GET http://127.0.0.1:{port}/healthz -> 200"
    assert took < 15  # 1 s of polling plus interpreter start, with room for a busy machine


@pytest.mark.parametrize("args", [["--tcp", "nohost"], []])
def test_wait_bad_input_is_one_line(args: list[str]) -> None:
    one_line_error(pullwake("stack", "wait", *args))


def test_trickle_publishes_rounds_and_survives_failures(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    with running(server):
        server.start()
        server.register("r-ok")
        proc = pullwake(
            "stack",
            "trickle",
            "--server",
            server.url,
            "--runner-id",
            "r-ok",
            "--runner-id",
            "r-missing",
            "--every",
            "0.1",
            "--count",
            "3",
        )
        assert proc.returncode == 0, proc.stderr
        published = [ln for ln in proc.stdout.splitlines() if '"txid"' in ln]
        assert len(published) == 3
        failures = proc.stderr.strip().splitlines()
        assert len(failures) == 3 and all(f.startswith("trickle: r-missing:") for f in failures)
        _, _, health = server.api("GET", "/_electric/runners/r-ok/health")
        assert health["runner"]["id"] == "r-ok"


def test_trickle_bad_every_is_one_line() -> None:
    one_line_error(pullwake("stack", "trickle", "--runner-id", "x", "--every", "0"), "--every")
