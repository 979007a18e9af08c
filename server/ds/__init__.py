"""Durable Streams server core: stream store, subscriptions, HTTP routes.

`store` (durable streams on SQLite), `subscriptions` (pull-wake/webhook
subscription manager), `http` (aiohttp routes), `signing` (webhook Ed25519).
See /work/team/DS_API.md for the API the agents layer calls.
"""
