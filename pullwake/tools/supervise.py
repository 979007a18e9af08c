"""A small process-group supervisor: the demo and `pullwake stack up` run on it.

Why not plain `subprocess`: a demo or a local stack must start several named
children, wait until each is really ready, kill and restart one on demand
(chaos), and on Ctrl-C - or when the supervisor itself dies - leave nothing
behind.  The guarantees:

- Each child runs in its own session (so a terminal's Ctrl-C reaches only the
  supervisor, which then stops the children in reverse start order) and with
  ``PR_SET_PDEATHSIG`` = SIGKILL (so a supervisor killed by SIGKILL still takes
  its children with it).  The death signal is tied to the *thread* that
  started the child: start children from a long-lived thread (the main one).
- Stopping sends the stop signal (SIGTERM), waits ``grace`` seconds, then
  SIGKILLs the child's whole process group; after any exit the group is
  SIGKILLed too, so grandchildren cannot linger.
- `handle_signals()` turns SIGINT/SIGTERM into `stop_requested`, which the
  caller's loop watches (`sleep()` returns early), then calls `stop_all()`.

Synchronous and thread-safe: a chaos thread may restart a child while the
main loop polls it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Protocol

_PR_SET_PDEATHSIG = 1


class SupervisorError(Exception):
    """A child could not be started, did not get ready, or exited at start."""


class Readiness(Protocol):
    """How to tell a child is ready to serve."""

    def check(self) -> bool: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class HttpReady:
    """Ready when ``GET url`` answers ``status`` (default 200)."""

    url: str
    status: int = 200
    timeout: float = 1.0

    def check(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout) as resp:
                return int(resp.status) == self.status
        except urllib.error.HTTPError as err:
            return int(err.code) == self.status
        except (OSError, ValueError):
            return False

    def describe(self) -> str:
        return f"GET {self.url} -> {self.status}"


@dataclass(frozen=True)
class PortReady:
    """Ready when a TCP connect to ``host:port`` succeeds."""

    host: str
    port: int
    timeout: float = 1.0

    def check(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout):
                return True
        except OSError:
            return False

    def describe(self) -> str:
        return f"connect {self.host}:{self.port}"


@dataclass(frozen=True)
class ChildSpec:
    """What to run.  ``env`` is merged over the supervisor's environment;
    ``log=None`` lets the child inherit stdout/stderr, a path appends both to it."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    log: Path | None = None
    ready: Readiness | None = None
    cwd: Path | None = None
    stop_signal: int = signal.SIGTERM
    grace: float = 5.0


class Child:
    """One running (or exited) incarnation of a spec."""

    def __init__(self, spec: ChildSpec, popen: subprocess.Popen[bytes], restarts: int) -> None:
        self.spec = spec
        self.popen = popen
        self.restarts = restarts  # how many incarnations came before this one
        self.started_at = time.time()
        self.stopping = False  # set when the supervisor ends it on purpose

    def __repr__(self) -> str:
        state = "alive" if self.alive() else f"exited {self.returncode}"
        return f"<Child {self.name} pid={self.pid} {state} restarts={self.restarts}>"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the child's log file ('' when output is inherited)."""
        if self.spec.log is None:
            return ""
        try:
            text = self.spec.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _pdeathsig_preexec(parent_pid: int) -> Callable[[], None]:
    """Runs in the child between fork and exec: die with the supervisor."""

    try:  # load libc in the parent: the child between fork and exec should do little
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: no death signal, sessions still apply
        prctl = None

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


class Supervisor:
    """Named children, started, watched, restarted and stopped together."""

    def __init__(self, *, grace: float = 5.0) -> None:
        self.grace = grace
        self._children: dict[str, Child] = {}  # insertion order = start order
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.stop_signal: int | None = None  # the signal that asked us to stop

    def __repr__(self) -> str:
        return f"<Supervisor {list(self._children.values())!r}>"

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    # --- starting -----------------------------------------------------------------
    def start(self, spec: ChildSpec, *, wait: bool = True, timeout: float = 15.0) -> Child:
        """Start a child (replacing an exited one of that name); wait for readiness."""
        with self._lock:
            old = self._children.get(spec.name)
            if old is not None and old.alive():
                raise SupervisorError(f"{spec.name} is already running (pid {old.pid})")
            restarts = 0 if old is None else old.restarts + 1
            child = Child(spec, self._spawn(spec), restarts)
            self._children.pop(spec.name, None)
            self._children[spec.name] = child
        if wait and spec.ready is not None:
            self.wait_ready(spec.name, timeout)
        return child

    def _spawn(self, spec: ChildSpec) -> subprocess.Popen[bytes]:
        env = {**os.environ, **spec.env}
        out: IO[bytes] | None = None
        if spec.log is not None:
            spec.log.parent.mkdir(parents=True, exist_ok=True)
            out = open(spec.log, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            return subprocess.Popen(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                env=env,
                cwd=spec.cwd,
                start_new_session=True,
                preexec_fn=_pdeathsig_preexec(os.getpid()),
            )
        except OSError as exc:
            raise SupervisorError(f"cannot start {spec.name}: {exc}") from None
        finally:
            if out is not None:
                out.close()

    def wait_ready(self, name: str, timeout: float = 15.0) -> None:
        """Poll the child's readiness; SupervisorError if it exits or times out."""
        child = self.child(name)
        ready = child.spec.ready
        if ready is None:
            return
        deadline = time.monotonic() + timeout
        while not ready.check():
            if not child.alive():
                raise SupervisorError(
                    f"{name} exited with {child.returncode} before ready "
                    f"({ready.describe()}){_tail(child)}"
                )
            if time.monotonic() >= deadline or self._stop.is_set():
                why = "stop requested" if self._stop.is_set() else f"not ready after {timeout:g}s"
                raise SupervisorError(f"{name} {why} ({ready.describe()}){_tail(child)}")
            time.sleep(0.05)

    # --- looking ------------------------------------------------------------------
    def child(self, name: str) -> Child:
        with self._lock:
            try:
                return self._children[name]
            except KeyError:
                raise SupervisorError(f"no child named {name!r}") from None

    def children(self) -> list[Child]:
        with self._lock:
            return list(self._children.values())

    def pids(self) -> dict[str, int]:
        """Pids of the children alive right now, by name."""
        return {c.name: c.pid for c in self.children() if c.alive()}

    def exited(self) -> list[Child]:
        """Children that exited without the supervisor ending them (crashes)."""
        return [c for c in self.children() if not c.alive() and not c.stopping]

    # --- signalling, stopping, restarting -------------------------------------------
    def send_signal(self, name: str, sig: int) -> None:
        """Send a signal to one child (SIGSTOP/SIGCONT for chaos); no waiting."""
        child = self.child(name)
        with contextlib.suppress(ProcessLookupError):
            child.popen.send_signal(sig)

    def kill(self, name: str) -> int:
        """SIGKILL a child (the crash a real server suffers) and reap it."""
        child = self.child(name)
        child.stopping = True
        if child.alive():
            _killpg(child.pid)  # the child leads its own group: it and its children die
        return child.popen.wait()

    def stop(self, name: str, grace: float | None = None) -> int:
        """Stop signal, wait up to ``grace``, then SIGKILL the group; returns the exit code."""
        child = self.child(name)
        child.stopping = True
        if child.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGCONT)  # a frozen child cannot exit
                child.popen.send_signal(child.spec.stop_signal)
            limit = child.spec.grace if grace is None else grace
            try:
                child.popen.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                _killpg(child.pid)
                child.popen.wait()
        _killpg(child.pid)  # grandchildren left in its group
        return int(child.popen.returncode)

    def restart(
        self, name: str, *, kill: bool = False, wait: bool = True, timeout: float = 15.0
    ) -> Child:
        """Stop (or SIGKILL) the child, start its spec again, wait for readiness."""
        old = self.child(name)
        if kill:
            self.kill(name)
        else:
            self.stop(name)
        return self.start(old.spec, wait=wait, timeout=timeout)

    def stop_all(self, grace: float | None = None) -> dict[str, int]:
        """Stop every child, last started first; returns exit codes by name."""
        codes: dict[str, int] = {}
        for child in reversed(self.children()):
            codes[child.name] = self.stop(child.name, grace)
        return codes

    # --- the supervisor's own signals ---------------------------------------------------
    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def request_stop(self, sig: int | None = None) -> None:
        self.stop_signal = sig
        self._stop.set()

    def sleep(self, seconds: float) -> bool:
        """Sleep, waking early on a stop request; True when a stop was requested."""
        return self._stop.wait(seconds)

    @contextlib.contextmanager
    def handle_signals(
        self, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)
    ) -> Iterator[Supervisor]:
        """Within the block, SIGINT/SIGTERM request a stop instead of raising.

        Main thread only (Python's rule for signal handlers).  Previous handlers
        are restored on exit.
        """

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.request_stop(signum)

        previous = {s: signal.signal(s, on_signal) for s in signals}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _tail(child: Child) -> str:
    """The log's path and its last line on the first line (a one-line CLI error keeps
    only that: it must say why), then the longer tail."""
    if child.spec.log is None:
        return ""
    tail = child.log_tail(10)
    last = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "")
    first = f", log {child.spec.log}" + (f": {last}" if last else "")
    return first + (f"\nlast output:\n{tail}" if tail else "")
