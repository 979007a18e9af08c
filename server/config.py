"""Server settings: one frozen object built by the CLI and read by every module."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 4437
    db: str = "./pullwake.db"
    # Upstream falls back to system:dev-local whenever its DS server is embedded
    # (ours always is); --no-dev-principal makes a missing principal a 401.
    dev_principal_fallback: bool = True
    long_poll_timeout: float = 30.0  # a long-poll with no data answers 204 after this
    keepalive_interval: float = 5.0  # ours: SSE comment this often (not in compat mode)
    sse_rotate_seconds: float = 60.0  # ours: SSE responses end cleanly this often
    compat_upstream: bool = False  # reproduce the real server's idle behaviour exactly
    default_lease_ms: int = 30_000  # runner liveness lease when a heartbeat names none
    claim_lease_ms: int | None = None  # pullwake-only: DS claim lease (None = DS's 30 s)
    stream_grace_seconds: float = 2.0  # a long-poll client counts as open between polls
    public_url: str | None = None  # base of the claim `callback` URLs (default: listen address)
    auth_token: str | None = None  # PULLWAKE_AUTH_TOKEN: required bearer token (ours)
    shutdown_timeout: float = 1.0  # grace for in-flight requests on SIGINT/SIGTERM
