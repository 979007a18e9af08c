"""The CI script and the kernel fault tests are safe on anyone's machine: nothing is
killed by name, and firewall rules live and die in a network namespace of their own."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess

import pytest

from tests.support.netns import OUTER_NS_ENV, current_netns, inside_own_netns
from tests.support.repo import ROOT


def test_ci_script_kills_nothing_by_name() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    code = "\n".join(ln.split("#", 1)[0] for ln in script.splitlines())
    assert not re.search(r"\b(pkill|killall|pgrep|fuser)\b", code), code
    assert not re.search(r"\bkill\b", code), code  # no pid it could have started itself
    assert not re.search(r"\b(systemctl|service)\b.*\bstop\b", code), code


def test_the_rerun_refuses_to_run_in_the_outer_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OUTER_NS_ENV, raising=False)
    assert inside_own_netns() is False
    monkeypatch.setenv(OUTER_NS_ENV, current_netns())
    with pytest.raises(RuntimeError, match="outer network namespace"):
        inside_own_netns()
    monkeypatch.setenv(OUTER_NS_ENV, "net:[0]")
    assert inside_own_netns() is True


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a network namespace and iptables)")
@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("unshare", "ip", "iptables", "nsenter")),
    reason="needs unshare, ip, iptables and nsenter",
)
def test_a_rule_in_a_killed_namespace_never_reaches_the_host() -> None:
    """What `in_own_netns` relies on: a DROP rule inserted under `unshare --net` is in
    that namespace only, and a SIGKILL (no cleanup runs) takes it away with it."""
    host_before = subprocess.run(
        ["iptables", "-S"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    rule = ["INPUT", "-i", "lo", "-p", "tcp", "--dport", "9", "-j", "DROP"]
    script = f"ip link set lo up && iptables -I {' '.join(rule)} && echo ready && exec sleep 60"
    inner = subprocess.Popen(
        ["unshare", "--net", "--", "sh", "-c", script],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert inner.stdout is not None
        assert inner.stdout.readline().strip() == "ready"
        ns_rules = subprocess.run(
            ["nsenter", f"--net=/proc/{inner.pid}/ns/net", "iptables", "-S", "INPUT"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        assert "--dport 9 -j DROP" in ns_rules
    finally:
        inner.send_signal(signal.SIGKILL)
        inner.wait(10)
    host_after = subprocess.run(
        ["iptables", "-S"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    assert host_after == host_before
