"""The server: an agents-server 0.6.4 look-alike over an embedded Durable Streams server.

Modules, one concern each:

- `config`      ServerConfig (what the CLI builds)
- `registry`    the control plane in SQLite: runners, liveness, entity types, entities, claims
- `runners`     the runners API: register/list/get/heartbeat/enable/disable/health
- `entities`    the entity API subset that makes wakes: types, spawn, send, signal
- `claims`      claim (per DS subscription) and the wake callbacks
- `health`      pure health derivation (liveness, status, upstream's issues)
- `diagnostics` the runner diagnostics whitelist
- `auth`        electric-principal resolution for every request, owner checks, bearer token
- `principal`   principal parsing (key and URL form) and canonical URLs
- `bodies`      request bodies as upstream's withSchema reads them
- `schema`      body schemas with Ajv's messages
- `jsdate`      `new Date(string)` for heartbeat lease times
- `errors`      the JSON error shape and the middleware that guarantees it
- `view`        `/_pullwake/runners/:id/stream`: the server's own view of a wake stream
- `livereads`   open live reads per runner (fed by DS's read hooks)
- `observe`     the telemetry seam: ServerObserver, ServerSnapshotSource
- `otel`        OpenTelemetry observer, /metrics, trace continuation (telemetry's part)
- `publish`     `pullwake publish`: messages through the entity API
- `app`         create_app(config, observer=..., setup=...)
- `serve`       run until SIGINT/SIGTERM, fast shutdown
- `cli`         `pullwake server`, `pullwake publish`
- `ds/`         the Durable Streams server (streams, reads, pull-wake subscriptions)
"""
