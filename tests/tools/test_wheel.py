"""pullwake as a user gets it: a built wheel, installed into a fresh venv, used from
an empty directory.

The wheel is built from a copy of the package sources (`pip wheel --no-deps
--no-build-isolation`, so setuptools comes from the project venv and the build
leaves no build/ or egg-info in the checkout) and installed with `--no-deps
--no-index` into a new venv made without pip (the project venv's pip installs
into it with `--python`).  No network: the dependencies are not installed
again; a `.pth` file in the new venv's site-packages appends the project venv's
site-packages to `sys.path`.  Why not `--system-site-packages`: that exposes the
*base* interpreter's site-packages, which hold none of the dependencies.  A
path line in a `.pth` file is only appended to `sys.path` - the `.pth` files in
that directory (among them the editable install's finder of the checkout) are
not run, and the new venv's own site-packages comes first, so `import pullwake`
can only find the wheel's copy; the test asserts that too.

From the empty directory it runs `pullwake dashboards build --out DIR`,
`pullwake demo --duration 6` and `pullwake stack up --duration 15` (the last
when the Prometheus binaries are installed), then checks that nothing was written
into the directory or into site-packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.repo import ROOT

pytestmark = pytest.mark.slow

# What the wheel is built from: the package and the root folders it links to.
SOURCES = ("pyproject.toml", "README.md", "pullwake", "runner", "server", "dashboards")
SOURCES_LINKED = ("otel-collector",)  # pullwake/otel_collector -> ../otel-collector


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    site: Path

    @property
    def pullwake(self) -> str:
        return str(self.venv / "bin" / "pullwake")

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")


def _run(argv: list[str], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,  # type: ignore[arg-type]
    )


def _user_env(venv: Path) -> dict[str, str]:
    """A shell's environment with the new venv first on PATH and nothing pointing at
    the checkout (no PYTHONPATH, no virtualenv of the test run)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["OTEL_SDK_DISABLED"] = "true"  # the demo and stack set what they need themselves
    return env


def _files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("wheel")
    src, dist, venv = base / "src", base / "dist", base / "venv"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.db", "*.db-*")
    for name in (*SOURCES, *SOURCES_LINKED):
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    pip = [sys.executable, "-m", "pip"]
    built = _run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert "warning" not in built.stderr.lower(), built.stderr  # packaging metadata is clean
    (wheel,) = dist.glob("pullwake-*.whl")

    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    assert made.returncode == 0, made.stderr
    py = venv / "bin" / "python"
    site = Path(
        _run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            timeout=30,
        ).stdout.strip()
    )
    deps = sysconfig.get_paths()["purelib"]  # the project venv's: aiohttp, OTel, ...
    (site / "_pullwake_test_deps.pth").write_text(deps + "\n")
    inst = _run(
        [*pip, "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        timeout=300,
    )
    assert inst.returncode == 0, inst.stdout + inst.stderr
    yield Installed(wheel, venv, site)


def test_the_wheel_holds_one_top_level_name_and_its_data(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as z:
        names = z.namelist()
        top_level = z.read(next(n for n in names if n.endswith(".dist-info/top_level.txt")))
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"pullwake"}
    assert top_level.decode().split() == ["pullwake"]
    data = [n for n in names if not n.endswith(".py") and ".dist-info/" not in n]
    assert sorted(data) == ["pullwake/otel_collector/config.yaml", "pullwake/py.typed"]
    for needed in (
        "pullwake/py.typed",
        "pullwake/otel_collector/config.yaml",
        "pullwake/runner/__init__.py",
        "pullwake/server/__init__.py",
        "pullwake/dashboards/build.py",
        "pullwake/tools/stackrun.py",
    ):
        assert needed in names


@pytest.fixture
def user(installed: Installed, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """An empty working directory and a user's environment; afterwards, nothing may have
    been written into either the directory or site-packages."""
    empty = tmp_path / "empty"
    empty.mkdir()
    site_before = _files(installed.site)
    yield empty, _user_env(installed.venv)
    assert list(empty.iterdir()) == []
    assert _files(installed.site) == site_before


def test_imports_come_from_the_wheel(
    installed: Installed, user: tuple[Path, dict[str, str]]
) -> None:
    empty, env = user
    probe = "import pullwake, pullwake.runner, pullwake.server, pullwake.dashboards.build as b;"
    probe += "from pullwake.tools.stackrun import collector_source as c;"
    probe += "assert c()['service']['pipelines'];"  # package data, read through the package
    probe += "print(pullwake.__file__, pullwake.runner.__file__, b.__file__)"
    where = _run([installed.python, "-c", probe], timeout=60, cwd=empty, env=env)
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert Path(path).is_relative_to(installed.site), where.stdout


def test_dashboards_build_and_demo_from_an_empty_directory(
    installed: Installed, user: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    empty, env = user
    out = tmp_path / "out"
    build = [installed.pullwake, "dashboards", "build", "--out", str(out)]
    done = _run(build, timeout=120, cwd=empty, env=env)
    assert done.returncode == 0, done.stderr
    assert (out / "prometheus/rules/pullwake-alerts.yml").is_file()
    assert (out / "alertmanager/alertmanager.yml").is_file()
    assert (out / "grafana/provisioning/dashboards/dashboards.yml").is_file()
    check = _run([*build, "--check"], timeout=120, cwd=empty, env=env)
    assert check.returncode == 0, check.stderr

    demo = [installed.pullwake, "demo", "--duration", "6", "--workdir", str(tmp_path / "demo")]
    ran = _run(demo, timeout=120, cwd=empty, env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "stopping (done)" in ran.stdout, ran.stdout


@pytest.mark.prometheus
@pytest.mark.skipif(
    not shutil.which("prometheus")
    or not (shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")),
    reason="needs the prometheus and prometheus-alertmanager binaries",
)
def test_stack_up_from_an_empty_directory(
    installed: Installed, user: tuple[Path, dict[str, str]]
) -> None:
    """Rules, Alertmanager config and (if Grafana is there) dashboards are generated into
    the stack's own temporary workdir, the collector config comes from package data."""
    empty, env = user
    stack = [installed.pullwake, "stack", "up", "--duration", "15"]
    ran = _run(stack, timeout=180, cwd=empty, env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "pullwake stack is up" in ran.stdout, ran.stdout
    assert "--duration 15s reached" in ran.stdout, ran.stdout
    workdir = next(ln.split("workdir ", 1)[1] for ln in ran.stdout.splitlines() if "workdir " in ln)
    assert not Path(workdir).exists()  # a temporary workdir is removed at exit
