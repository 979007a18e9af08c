"""Start and stop the two Durable Streams servers the side-by-side bench compares.

- pullwake: `python -m pullwake.server.ds` (SQLite, WAL, synchronous=FULL: an append is
  answered after its commit is on disk);
- reference: npm `@durable-streams/server` 0.3.7 through `conformance/reference-server.mjs`
  (pinned by conformance/package-lock.json), its file-backed store: each append is written
  to the stream's segment file and `fdatasync`ed before the answer.

Each server runs in its own process group so it (and anything it spawned) is killed as a
whole, also when the bench is interrupted.  Both get the same long-poll timeout (30 s, the
default of each) and webhooks on (the reference launcher turns them on; pullwake serves
subscriptions always).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = ROOT / "conformance"
REFERENCE_LAUNCHER = CONFORMANCE / "reference-server.mjs"
LONG_POLL_S = 30.0
NAMES = ("pullwake", "reference")

_LIVE: set[ServerProc] = set()


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reference_available() -> str | None:
    """None if the reference can start, else why not (npm ci not run, no node)."""
    if not (CONFORMANCE / "node_modules" / "@durable-streams" / "server").is_dir():
        return "no conformance/node_modules: run (cd conformance && npm ci --no-audit --no-fund)"
    if not any((Path(d) / "node").exists() for d in os.environ.get("PATH", "").split(":")):
        return "node not on PATH"
    return None


@dataclass(eq=False)
class ServerProc:
    """One server subprocess in its own process group."""

    name: str
    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    keepalive_s: float = 15.0  # pullwake only: comment interval while idle
    source: Path | None = None  # pullwake only: run this source tree (see export_rev)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        if self.name == "pullwake":
            return [
                sys.executable, "-m", "pullwake.server.ds",
                "--port", str(self.port),
                "--db", str(self.data_dir / "ds.db"),
                "--long-poll-timeout", f"{LONG_POLL_S:g}",
                "--keepalive-interval", f"{self.keepalive_s:g}",
            ]  # fmt: skip
        if self.name == "reference":
            return [
                "node", str(REFERENCE_LAUNCHER), str(self.port), str(self.data_dir),
                str(int(LONG_POLL_S * 1000)),
            ]  # fmt: skip
        raise ValueError(self.name)

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "server.log").open("wb")
        env = dict(os.environ)
        if self.name == "pullwake" and self.source is not None:
            # ahead of the editable install's finder on sys.path
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(self.source), env.get("PYTHONPATH")])
            )
        self.proc = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: killpg reaches everything
        )
        log.close()
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.log_tail()}")
            if _answers(f"{self.base}/v1/stream/__bench_probe__"):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer within {timeout:g} s: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return (self.data_dir / "server.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL what is left after 5 s."""
        _LIVE.discard(self)
        if self.proc is None:
            return
        _kill_group(self.proc, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc, signal.SIGKILL)
            self.proc.wait(5)
        _kill_group(self.proc, signal.SIGKILL)  # stragglers in the group
        self.proc = None

    def cpu_seconds(self) -> float:
        """user+system CPU of the server process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def export_rev(rev: str, into: Path) -> Path:
    """`git archive` a commit of this checkout into `into` (uncommitted edits of others in
    the working tree are then not what is measured); returns `into`."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # 404 for the probe path: it is serving
    except OSError:
        return False


def _kill_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_all() -> None:
    """Stop every server still running (atexit, and the bench's finally)."""
    for srv in list(_LIVE):
        srv.stop()


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the bench's finally blocks


def install_cleanup() -> None:
    """Stop the servers at exit and turn SIGTERM into KeyboardInterrupt (for the mains)."""
    atexit.register(stop_all)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
