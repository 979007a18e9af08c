"""A first run from a fresh clone: the README's two commands, and what each installs.

`make -n` (dry run) in a directory with the Makefile and pyproject.toml but no
.venv shows every command a fresh machine would run, without running them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.repo import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

DEV_TOOLS = ("pytest", "mypy", "ruff", "hypothesis")


def dry_run(tmp_path: Path, target: str) -> list[str]:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    # Run as a top-level make even under `make test`: a nested make prints
    # "Entering directory" lines around the commands.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", target],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def installs(lines: list[str]) -> list[str]:
    return [ln for ln in lines if re.search(r"\bpip\b.*\binstall\b", ln)]


def test_make_demo_installs_only_what_the_demo_runs_and_says_so(tmp_path: Path) -> None:
    lines = dry_run(tmp_path, "demo")
    pips = installs(lines)
    assert pips and all("[dev]" not in ln for ln in pips), pips
    assert not [t for t in DEV_TOOLS if any(t in ln for ln in pips)]
    # each install is announced before it starts
    first = lines.index(pips[0])
    assert any(ln.startswith("echo") and "installing" in ln for ln in lines[:first]), lines
    assert lines[-1].endswith("pullwake demo") or "pullwake demo" in lines[-1], lines


def test_make_test_adds_the_dev_tools(tmp_path: Path) -> None:
    lines = dry_run(tmp_path, "test")
    pips = installs(lines)
    assert any("[dev]" in ln for ln in pips), pips
    assert any("pytest" in ln for ln in lines[lines.index(pips[-1]) :])


def test_dev_extras_hold_the_tools_and_runtime_does_not() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    runtime = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    dev = text.split("dev = [", 1)[1].split("]", 1)[0]
    for tool in DEV_TOOLS:
        assert tool not in runtime and tool in dev, tool


def test_the_readme_setup_is_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("\n## Set-up", 1)[1].split("\n## ", 1)[0]
    blocks = setup.split("```")[1::2]
    assert len(blocks) == 1, setup  # one block of commands in the set-up section
    block = blocks[0]
    commands = [ln.split("#", 1)[0].strip() for ln in block.splitlines()[1:] if ln.strip()]
    assert commands == ["make demo", "make test"], block
