"""What every handler shares, stored on the aiohttp app under one key."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from wakeserver.config import ServerConfig
from wakeserver.live import LiveReads, Notifier
from wakeserver.observe import SafeObserver, ServerSnapshotSource
from wakeserver.store import AsyncStore


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
