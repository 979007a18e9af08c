"""What every handler shares, stored on the aiohttp app under one key."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from pullwake.server.config import ServerConfig
from pullwake.server.live import LiveReads, Notifier
from pullwake.server.observe import SafeObserver, ServerSnapshotSource
from pullwake.server.store import AsyncStore


@dataclass
class ServerState:
    config: ServerConfig
    db: AsyncStore
    live: LiveReads
    notifier: Notifier
    observer: SafeObserver
    snapshots: ServerSnapshotSource


STATE: web.AppKey[ServerState] = web.AppKey("pullwake_state", ServerState)


def state_of(request: web.Request) -> ServerState:
    return request.app[STATE]
