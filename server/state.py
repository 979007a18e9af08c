"""What every handler shares, stored on the aiohttp app under one key."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from pullwake.server.config import ServerConfig
from pullwake.server.ds.store import DSStore
from pullwake.server.ds.subscriptions import SubscriptionManager
from pullwake.server.livereads import LiveReads
from pullwake.server.observe import SafeObserver, ServerSnapshotSource
from pullwake.server.registry import AsyncRegistry

JSON_TYPE = "application/json"


@dataclass
class ServerState:
    config: ServerConfig
    registry: AsyncRegistry
    ds: DSStore
    subs: SubscriptionManager
    live: LiveReads
    observer: SafeObserver
    snapshots: ServerSnapshotSource
    wake_streams: dict[str, str] = field(default_factory=dict)  # DS path -> runner id

    async def ensure_stream(self, path: str) -> None:
        """Create a JSON stream if missing (upstream `streamClient.ensure`)."""
        key = path.strip("/")
        if not self.ds.exists(key):
            await self.ds.create(key, content_type=JSON_TYPE)


STATE: web.AppKey[ServerState] = web.AppKey("pullwake_state", ServerState)


def state_of(request: web.Request) -> ServerState:
    return request.app[STATE]
