"""The supervisor with real child processes, real signals and a real parent death."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pullwake.tools.supervise import ChildSpec, HttpReady, PortReady, Supervisor, SupervisorError
from tests.support.procs import free_port, pid_alive, wait_until

PY = sys.executable


def http_server(tmp: Path, port: int, name: str = "web") -> ChildSpec:
    return ChildSpec(
        name,
        [PY, "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory", str(tmp)],
        log=tmp / f"{name}.log",
        ready=HttpReady(f"http://127.0.0.1:{port}/"),
    )


def test_start_ready_restart_stop(tmp_path: Path) -> None:
    port = free_port()
    with Supervisor() as sup:
        child = sup.start(http_server(tmp_path, port))
        assert PortReady("127.0.0.1", port).check()
        assert sup.pids() == {"web": child.pid}
        again = sup.restart("web", kill=True)
        assert again.pid != child.pid and again.restarts == 1
        assert child.returncode == -signal.SIGKILL
        assert not pid_alive(child.pid)
        assert sup.exited() == []  # killed on purpose is not a crash
        codes = sup.stop_all()
    assert codes["web"] in (0, -signal.SIGTERM)  # http.server dies of SIGTERM
    assert not pid_alive(again.pid)


def test_exit_before_ready_is_an_error_with_the_log(tmp_path: Path) -> None:
    spec = ChildSpec(
        "bad",
        [PY, "-c", "import sys; print('boom: no config'); sys.exit(3)"],
        log=tmp_path / "bad.log",
        ready=PortReady("127.0.0.1", free_port()),
    )
    with Supervisor() as sup, pytest.raises(SupervisorError, match=r"(?s)exited with 3.*boom"):
        sup.start(spec, timeout=10)


def test_not_ready_in_time(tmp_path: Path) -> None:
    spec = ChildSpec(
        "slow", [PY, "-c", "import time; time.sleep(30)"], ready=PortReady("127.0.0.1", free_port())
    )
    with Supervisor() as sup:
        with pytest.raises(SupervisorError, match=r"not ready after 0\.3s"):
            sup.start(spec, timeout=0.3)
        pid = sup.child("slow").pid
    assert not pid_alive(pid)


def test_sigterm_ignored_escalates_and_grandchildren_die(tmp_path: Path) -> None:
    # The child ignores SIGTERM and has a grandchild of its own.
    code = textwrap.dedent(
        """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(g.pid, flush=True)
        time.sleep(60)
        """
    )
    log = tmp_path / "stubborn.log"
    with Supervisor() as sup:
        child = sup.start(ChildSpec("stubborn", [PY, "-c", code], log=log, grace=0.5))
        grandchild = int(wait_until(lambda: log.read_text().strip(), 10, what="grandchild pid"))
        t0 = time.monotonic()
        assert sup.stop("stubborn") == -signal.SIGKILL
        assert time.monotonic() - t0 < 5
    assert not pid_alive(child.pid)
    wait_until(lambda: not pid_alive(grandchild), 5, what="grandchild gone")


DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pullwake.tools.supervise import ChildSpec, Supervisor
    sup = Supervisor(grace=2)
    with sup.handle_signals():
        for n in ("a", "b"):
            c = sup.start(ChildSpec(n, [sys.executable, "-c", "import time; time.sleep(60)"]))
            print(c.pid, flush=True)
        print("ready", flush=True)
        while not sup.sleep(0.1):
            pass
        codes = sup.stop_all()
    print("stopped", sup.stop_signal, sorted(codes), flush=True)
    """
)


def _driver(tmp: Path) -> tuple[subprocess.Popen[bytes], Path, list[int]]:
    log = tmp / "driver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([PY, "-c", DRIVER], stdout=out, stderr=subprocess.STDOUT)
    wait_until(lambda: "ready" in log.read_text(), 15, what="driver ready")
    pids = [int(x) for x in log.read_text().split()[:2]]
    assert all(pid_alive(p) for p in pids)
    return proc, log, pids


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_all_children_and_exits_zero(tmp_path: Path, sig: int) -> None:
    proc, log, pids = _driver(tmp_path)
    proc.send_signal(sig)
    assert proc.wait(timeout=10) == 0, log.read_text()
    assert f"stopped {int(sig)} ['a', 'b']" in log.read_text()
    assert not any(pid_alive(p) for p in pids)


def test_children_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    proc, _, pids = _driver(tmp_path)
    proc.kill()  # no cleanup code runs: only PR_SET_PDEATHSIG can help
    proc.wait(timeout=5)
    wait_until(lambda: not any(pid_alive(p) for p in pids), 5, what="orphans gone")


def test_start_twice_and_unknown_name(tmp_path: Path) -> None:
    spec = ChildSpec("s", [PY, "-c", "import time; time.sleep(60)"])
    with Supervisor() as sup:
        sup.start(spec)
        with pytest.raises(SupervisorError, match="already running"):
            sup.start(spec)
        with pytest.raises(SupervisorError, match="no child named 'x'"):
            sup.child("x")
        sup.send_signal("s", signal.SIGKILL)
        wait_until(lambda: sup.exited(), 5, what="crash noticed")
        assert sup.exited()[0].returncode == -signal.SIGKILL
