"""Paths and loaders shared by the stack tests (the files under test, read as data)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from tests.support.repo import DEPLOY, ROOT

__all__ = ["DEPLOY", "ROOT"]  # and the loaders below; the paths come from tests.support.repo

COMPOSE = ROOT / "docker-compose.yml"
COLLECTOR = ROOT / "otel-collector" / "config.yaml"
PULLWAKE_IMAGE = "pullwake:"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    data = load(COMPOSE)
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def pyproject_version() -> str:
    m = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert m
    return m.group(1)


def argv_of(command: Any) -> list[str]:
    """A compose `command` (list or string) as argv."""
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(c) for c in command]


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of every bind mount in short syntax."""
    out = []
    for v in service.get("volumes", []):
        assert isinstance(v, str), f"use the short volume syntax: {v!r}"
        host, container = v.split(":")[:2]
        if host.startswith((".", "/")):
            out.append((host, container))
    return out


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of every port the service publishes,
    in the short syntax HOST_IP:HOST_PORT:CONTAINER_PORT (an address is required: the
    stack publishes on loopback only)."""
    out = []
    for p in service.get("ports", []):
        parts = str(p).split(":")
        assert len(parts) == 3, f"publish as 127.0.0.1:HOST:CONTAINER: {p}"
        out.append((parts[0], int(parts[1]), int(parts[2])))
    return out
