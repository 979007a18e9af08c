"""Run a test inside a network namespace it creates, so kernel fault injection
(iptables DROP rules) never touches the host's firewall chains.

`@in_own_netns` on a test re-runs that one test under `unshare --net` (a new,
anonymous network namespace with only its own loopback, brought up first): the
server, the proxy and the runner all start inside it, and every iptables rule
goes into the namespace's own INPUT chain.  The namespace lives exactly as long
as the processes in it, so a killed run leaves no rule behind - there is
nothing to clean up on the host.  Inside, the test body runs as usual; outside,
the test passes or fails with the inner run and shows its output on failure.
"""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.repo import ROOT

# The network namespace the outer run was in; set only for the inner run.
OUTER_NS_ENV = "PULLWAKE_TEST_OUTER_NETNS"
INNER_TIMEOUT_S = 240.0


def current_netns() -> str:
    return os.readlink("/proc/self/ns/net")


def inside_own_netns() -> bool:
    """True in the re-run; raises if the re-run somehow shares the outer namespace."""
    outer = os.environ.get(OUTER_NS_ENV)
    if outer is None:
        return False
    if outer == current_netns():
        raise RuntimeError("refusing to run: still in the outer network namespace")
    return True


def missing_tools() -> list[str]:
    return [t for t in ("unshare", "ip", "iptables") if shutil.which(t) is None]


def _rerun_inside(nodeid: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (a network namespace and iptables)")
    if missing := missing_tools():
        pytest.skip(f"needs {', '.join(missing)}")
    env = {**os.environ, OUTER_NS_ENV: current_netns()}
    argv = [
        "unshare",
        "--net",
        "--",
        "sh",
        "-c",
        'ip link set lo up && exec "$@"',
        "sh",
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        nodeid,
    ]
    done = subprocess.run(
        argv,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=INNER_TIMEOUT_S,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"inside its own network namespace:\n{out[-6000:]}"
    assert " passed" in out, out[-2000:]  # ran, not skipped inside


def in_own_netns(test: Callable[..., None]) -> Callable[[pytest.FixtureRequest], None]:
    """Decorator: the test body runs only inside a network namespace of its own."""
    names = list(inspect.signature(test).parameters)

    def wrapper(request: pytest.FixtureRequest) -> None:
        if inside_own_netns():
            test(**{n: request.getfixturevalue(n) for n in names})
        else:
            _rerun_inside(request.node.nodeid)

    wrapper.__name__ = test.__name__
    wrapper.__qualname__ = test.__qualname__
    wrapper.__doc__ = test.__doc__
    wrapper.__module__ = test.__module__
    marks: Any = getattr(test, "pytestmark", None)
    if marks:
        wrapper.pytestmark = marks  # type: ignore[attr-defined]
    return wrapper
