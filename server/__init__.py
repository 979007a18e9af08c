"""The pull-wake server: runners API, durable wake streams, claims, health.

Modules, one concern each:

- `config`    ServerConfig (what the CLI builds)
- `store`     SQLite (WAL, synchronous=FULL): runners, streams, events, wakes
- `claimstore` claim state in that store: claim, complete, expire (re-announce)
- `api`       runners API: register/list/get/heartbeat/enable/disable/health/publish
- `claims`    claim / complete, and the sweeper that re-announces expired claims
- `streams`   Durable Streams reads: catch-up, long-poll, SSE (keepalive, rotation)
- `live`      in-memory open live reads per runner (the server's view) + Notifier
- `health`    pure health derivation (liveness, status, issues, stream mismatch)
- `auth`      electric-principal, owner checks, optional bearer token
- `validate`  request bodies and fields (pure), diagnostics whitelist
- `errors`    the JSON error shape and the middleware that guarantees it
- `observe`   the telemetry seam: ServerObserver, ServerSnapshotSource
- `otel`      OpenTelemetry observer, /metrics, trace continuation (telemetry's part)
- `app`       create_app(config, observer=..., setup=...)
- `serve`     run until SIGINT/SIGTERM, fast shutdown
- `cli`       `pullwake server`, `pullwake publish`
"""
