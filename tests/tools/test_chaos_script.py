"""The compose `chaos` service's shell script, run for real against a stand-in `docker`.

Docker cannot run here, so the script from docker-compose.yml is run the way
the container would run it (`/bin/sh -c SCRIPT`, after compose's `$$` -> `$`
unescaping and with the service's environment) with fake `docker` and
`hostname` programs first on PATH.  The fake answers like the daemon would for
one compose project and records every call, so the test sees the loop really
find its own project's server, SIGKILL it, wait, and start it again - more
than once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.procs import wait_until
from tests.tools.repo import argv_of, services

PROJECT = "demo-proj"
SERVER_ID = "c0ffee123456"

_FAKE_DOCKER = """#!{python}
import sys
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(" ".join(args) + "\\n")
if args[:1] == ["inspect"]:
    # `docker inspect --format '{{{{ index .Config.Labels "..." }}}}' <own container>`
    assert args[-1] == "chaos-container-id", args
    assert "com.docker.compose.project" in args[2], args
    print({project!r})
elif args[:1] == ["ps"]:
    want = {{
        "label=com.docker.compose.project=" + {project!r},
        "label=com.docker.compose.service=server",
    }}
    filters = {{args[i + 1] for i, a in enumerate(args) if a == "--filter"}}
    if filters == want and "-q" in args:
        print({server!r})
elif args[:1] not in (["stop"], ["start"]):
    sys.exit("fake docker: unexpected " + " ".join(args))
"""


def chaos_script() -> tuple[list[str], str, dict[str, str]]:
    """(entrypoint, script as the shell sees it, environment with compose defaults)."""
    svc = services()["chaos"]
    script = "\n".join(argv_of(svc["command"]))
    env = {}
    for key, value in svc["environment"].items():
        m = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", str(value))
        env[key] = m.group(2) if m else str(value)
    return list(svc["entrypoint"]), compose_interpolate(script), env


def compose_interpolate(text: str) -> str:
    """What compose hands the container: `$$` -> `$`, and any bare `$VAR` / `${VAR}`
    replaced at load time by the (here unset, so empty) variable of the user's shell."""
    return re.sub(r"\$\$|\$\{[^}]*\}|\$\w+", lambda m: "$" if m[0] == "$$" else "", text)


def test_compose_defaults_keep_the_server_down_long_enough_for_the_alert() -> None:
    _, _, env = chaos_script()
    assert float(env["CHAOS_UP_SECONDS"]) > 0
    # 2 failed heartbeats (10 s apart) + the critical alert's `for: 1m` + evaluation slack.
    assert float(env["CHAOS_DOWN_SECONDS"]) >= 90


def test_chaos_kills_and_restarts_its_own_projects_server(tmp_path: Path) -> None:
    entrypoint, script, _ = chaos_script()
    assert entrypoint == ["/bin/sh", "-c"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    docker = bin_dir / "docker"
    docker.write_text(
        _FAKE_DOCKER.format(python=sys.executable, log=str(log), project=PROJECT, server=SERVER_ID)
    )
    hostname = bin_dir / "hostname"
    hostname.write_text("#!/bin/sh\necho chaos-container-id\n")
    for exe in (docker, hostname):
        exe.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "CHAOS_UP_SECONDS": "0.2",
        "CHAOS_DOWN_SECONDS": "0.3",
    }
    out = tmp_path / "chaos.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", script], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:

        def cycles() -> list[str] | None:
            calls = log.read_text().splitlines() if log.exists() else []
            done = [c for c in calls if c.startswith("start ")]
            return calls if len(done) >= 2 else None

        calls = wait_until(cycles, 20, interval=0.05, what="two kill/restart cycles")
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert calls is not None
    output = out.read_text()
    assert f"chaos: project {PROJECT}, server up 0.2s, down 0.3s" in output, output
    # Nothing but its own lines: no shell, sleep or docker error slipped by.
    assert all(ln.startswith("chaos: ") for ln in output.splitlines()), output
    # inspect once, then: find the server, SIGKILL it, start it again, and again.
    assert calls[0].startswith("inspect "), calls
    actions = [c.split()[0] for c in calls[1:]]
    assert actions[:6] == ["ps", "stop", "start", "ps", "stop", "start"], calls
    assert calls[2] == f"stop --signal KILL {SERVER_ID}"
    assert calls[3] == f"start {SERVER_ID}"
    assert f"SIGKILL server {SERVER_ID}" in output and f"starting server {SERVER_ID}" in output
