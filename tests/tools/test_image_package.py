"""The pullwake image's package, built from exactly what the Dockerfile copies, runs
the compose commands and answers their healthchecks.

Docker cannot build here, so the Dockerfile's `pip install .` is reproduced: the
files of its COPY lines go into an empty build context, `pip wheel` builds them
(as `pip install .` would), and the wheel runs from a directory outside the
checkout with `python -S`, so neither the repo nor the editable install can
stand in for a module the image would lack.  Then the compose `server` and
`alert-sink` commands start from it (on loopback ports instead of the
container's) and their compose healthchecks must pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.support.procs import Proc, free_port, running
from tests.tools.repo import ROOT, argv_of, services

pytestmark = pytest.mark.slow


def dockerfile_sources() -> list[str]:
    out = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            out += words[1:-1]
    return out


@pytest.fixture(scope="module")
def image_site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Build and unpack the image's package; the environment that runs it alone."""
    tmp = tmp_path_factory.mktemp("image")
    ctx = tmp / "context"
    ctx.mkdir()
    for src in dockerfile_sources():
        path = ROOT / src
        if path.is_dir():
            shutil.copytree(path, ctx / src, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, ctx / src)
    wheels = tmp / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ctx)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("pullwake-*.whl")
    site = tmp / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    deps = sysconfig.get_paths()["purelib"]
    return {"PYTHONPATH": f"{site}{os.pathsep}{deps}", "OTEL_SDK_DISABLED": "true"}


def image_pullwake(*args: str) -> list[str]:
    return [sys.executable, "-S", "-m", "pullwake", *args]


def localize(argv: list[str], ports: dict[int, int], data: Path) -> list[str]:
    """A container's argv on this machine: loopback, free ports, a temp data dir."""
    out = []
    for arg in argv:
        arg = arg.replace("0.0.0.0", "127.0.0.1").replace("/data/", f"{data}/")
        for inside, here in ports.items():
            arg = arg.replace(f":{inside}", f":{here}").replace(f"={inside}", f"={here}")
        out.append(arg)
    return out


def test_the_package_is_the_built_one_not_the_checkout(
    image_site: dict[str, str], tmp_path: Path
) -> None:
    code = (
        "import pullwake, pullwake.runner, pullwake.server, pullwake.dashboards;"
        " print(pullwake.__file__)"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={**os.environ, **image_site},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert not proc.stdout.strip().startswith(str(ROOT)), proc.stdout


@pytest.mark.parametrize("name", ["server", "alert-sink"])
def test_compose_command_starts_and_passes_its_healthcheck(
    name: str, image_site: dict[str, str], tmp_path: Path
) -> None:
    svc = services()[name]
    inside = int(str(svc["ports"][0]).split(":")[-1])
    ports = {inside: free_port()}
    command = localize(argv_of(svc["command"]), ports, tmp_path)
    health = localize(argv_of(svc["healthcheck"]["test"]), ports, tmp_path)
    assert health[:2] == ["CMD", "pullwake"]
    app = Proc(image_pullwake(*command), tmp_path / f"{name}.log", image_site)
    app.start()
    with running(app):
        check = subprocess.run(
            image_pullwake(*health[2:-1], "--timeout", "30", health[-1]),
            env={**os.environ, **image_site},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, (check.stderr, app.output())
        assert app.alive(), app.output()
