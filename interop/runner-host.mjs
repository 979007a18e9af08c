// Hosts the UNMODIFIED upstream pull-wake runner (electric agents-runtime's pull-wake-runner.ts,
// copied by `upstream.py prepare` into a work dir outside this repository) the way upstream's
// BuiltinAgentsServer does: register, createPullWakeRunner(...), start(). This file is ours; only
// the runner it loads is upstream's. Run with tsx (it imports .ts files):
//
//   node --import interop/node_modules/tsx/dist/esm/index.mjs interop/runner-host.mjs \
//        --runner-src DIR --server URL --runner-id ID [options]
//
// The runtime is a stand-in for upstream's agent runtime: dispatchWake() logs the claim
// notification as a JSON line, optionally "works" for --work-ms (sending {epoch} callback
// heartbeats every 10 s like upstream's process-wake.ts), then completes the wake through the
// notification's callback with {epoch, acks, done: true} and the claim token as Bearer.
// stdout carries one JSON object per line ({"event": ...}); nothing else is printed there.

import { createHash } from 'node:crypto'
import { createServer } from 'node:http'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'

const { values: opts } = parseArgs({
  options: {
    'runner-src': { type: 'string' },
    server: { type: 'string' },
    'runner-id': { type: 'string' },
    label: { type: 'string' },
    principal: { type: 'string' },
    'heartbeat-interval-ms': { type: 'string' },
    'work-ms': { type: 'string', default: '0' },
    'status-port': { type: 'string' },
    offset: { type: 'string' },
    trace: { type: 'boolean', default: false },
  },
})
for (const required of ['runner-src', 'server', 'runner-id']) {
  if (!opts[required]) {
    process.stderr.write(`runner-host: --${required} is required\n`)
    process.exit(2)
  }
}

const baseUrl = opts.server.replace(/\/+$/, '')
const runnerId = opts['runner-id']
const workMs = Number(opts['work-ms'])
const CALLBACK_HEARTBEAT_MS = 10_000 // upstream process-wake.ts default
const startedAt = Date.now()

function emit(record) {
  process.stdout.write(JSON.stringify({ ts: Date.now(), ...record }) + '\n')
}

// Every request the runner, its stream client and this host make, when --trace is given.
const realFetch = globalThis.fetch
if (opts.trace) {
  globalThis.fetch = async (input, init) => {
    const url = typeof input === 'string' ? input : input.url ?? String(input)
    const method = init?.method ?? (typeof input === 'object' && input.method) ?? 'GET'
    const t0 = Date.now()
    try {
      const response = await realFetch(input, init)
      emit({ event: 'http', method, url, status: response.status, ms: Date.now() - t0 })
      return response
    } catch (err) {
      emit({ event: 'http', method, url, error: String(err?.cause ?? err), ms: Date.now() - t0 })
      throw err
    }
  }
}

const baseHeaders = {}
if (opts.principal) baseHeaders['electric-principal'] = opts.principal

async function register() {
  // Upstream aborts on the first failure; retrying while the server starts is our addition.
  const deadline = Date.now() + 60_000
  for (;;) {
    try {
      const response = await fetch(`${baseUrl}/_electric/runners`, {
        method: 'POST',
        headers: { ...baseHeaders, 'content-type': 'application/json' },
        body: JSON.stringify({
          id: runnerId,
          label: opts.label ?? `upstream runner ${runnerId}`,
          kind: 'local',
          admin_status: 'enabled',
          sandbox_profiles: [],
        }),
      })
      const text = await response.text()
      if (response.ok) return JSON.parse(text)
      throw new Error(`register: ${response.status} ${text}`)
    } catch (err) {
      if (Date.now() > deadline) throw err
      emit({ event: 'error', where: 'register', message: String(err?.message ?? err) })
      await sleep(500)
    }
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms)
    signal?.addEventListener('abort', () => {
      clearTimeout(timer)
      resolve()
    }, { once: true })
  })
}

// ---------------------------------------------------------------- the stand-in runtime

const active = new Map() // streamPath -> promise of the running wake
const lastDone = new Map() // streamPath -> offset acknowledged by our last successful done
const counters = { wakes: 0, done_ok: 0, done_failed: 0 }
let wakesController = new AbortController()

function subscriptionId(entityUrl) {
  // How the agents-server names a runner's subscription to one entity (dispatch-policy.ts).
  return `runner:${runnerId}:${createHash('sha256').update(entityUrl).digest('hex').slice(0, 16)}`
}

async function serverAckedOffset(notification) {
  // What the server has acknowledged for this stream when the claim was made: the DS
  // subscription's acked_offset (the holder is us, so it cannot move until we ack).
  const entityUrl = notification.entity?.url
  if (!entityUrl) return null
  try {
    const response = await realFetch(
      `${baseUrl}/__ds/subscriptions/${encodeURIComponent(subscriptionId(entityUrl))}`,
      { headers: baseHeaders, signal: AbortSignal.timeout(2_000) },
    )
    if (!response.ok) return null
    const body = await response.json()
    const path = notification.streamPath.replace(/^\//, '')
    return body.streams?.find((s) => s.path === path)?.acked_offset ?? null
  } catch {
    return null
  }
}

async function callback(notification, options, body) {
  const headers = new Headers(await options.claimHeaders?.())
  headers.set('content-type', 'application/json')
  if (options.claimTokenHeader) headers.set(options.claimTokenHeader, notification.claimToken)
  else headers.set('authorization', `Bearer ${notification.claimToken}`)
  const t0 = Date.now()
  try {
    const response = await fetch(notification.callback, {
      method: 'POST',
      headers,
      body: JSON.stringify(body),
    })
    const text = await response.text()
    return { status: response.status, body: text, ms: Date.now() - t0 }
  } catch (err) {
    return { status: null, error: String(err?.cause ?? err), ms: Date.now() - t0 }
  }
}

async function handleWake(notification, options, signal) {
  const streamPath = notification.streamPath
  const ackedBefore = await serverAckedOffset(notification)
  counters.wakes++
  emit({
    event: 'wake',
    runner_id: runnerId,
    stream: streamPath,
    offset: notification.streams?.find((s) => s.path === streamPath)?.offset ?? null,
    acked_before: ackedBefore,
    local_acked_before: lastDone.get(streamPath) ?? null,
    notification,
  })
  if (workMs > 0) {
    const until = Date.now() + workMs
    while (Date.now() < until && !signal.aborted) {
      await sleep(Math.min(CALLBACK_HEARTBEAT_MS, until - Date.now()), signal)
      if (Date.now() < until && !signal.aborted) {
        const beat = await callback(notification, options, { epoch: notification.epoch })
        emit({ event: 'callback_heartbeat', stream: streamPath, epoch: notification.epoch, ...beat })
      }
    }
  }
  const acks = (notification.streams ?? [])
    .filter((s) => s.offset && s.offset !== '-1')
    .map((s) => ({ path: s.path, offset: s.offset }))
  const result = await callback(notification, options, {
    epoch: notification.epoch,
    acks,
    done: true,
  })
  const ok = result.status !== null && result.status >= 200 && result.status < 300
  if (ok) {
    counters.done_ok++
    const mine = acks.find((a) => a.path === streamPath)
    if (mine) lastDone.set(streamPath, mine.offset)
  } else {
    counters.done_failed++
  }
  emit({ event: 'done', stream: streamPath, epoch: notification.epoch, wake_id: notification.wakeId, ok, ...result })
}

const runtime = {
  dispatchWake(notification, options) {
    const streamPath = notification.streamPath
    const run = handleWake(notification, options, wakesController.signal)
      .catch((err) => emit({ event: 'error', where: 'wake', message: String(err?.stack ?? err) }))
      .finally(() => {
        if (active.get(streamPath) === run) active.delete(streamPath)
      })
    active.set(streamPath, run)
  },
  isWakeActive(streamPath) {
    return active.has(streamPath)
  },
  abortWakes() {
    wakesController.abort()
    wakesController = new AbortController()
  },
  async drainWakes() {
    await Promise.allSettled([...active.values()])
  },
}

// ---------------------------------------------------------------- main

const { createPullWakeRunner } = await import(
  pathToFileURL(join(opts['runner-src'], 'pull-wake-runner.ts')).href
)

const registered = await register().catch((err) => {
  emit({ event: 'error', where: 'register', message: String(err?.message ?? err) })
  process.exit(1)
})
emit({ event: 'registered', runner: registered })

const runner = createPullWakeRunner({
  baseUrl,
  runnerId,
  runtime,
  headers: baseHeaders,
  heartbeatIntervalMs: opts['heartbeat-interval-ms'] ? Number(opts['heartbeat-interval-ms']) : undefined,
  // As BuiltinAgentsServer: the register answer's wake_stream_offset (absent upstream -> -1).
  offset: opts.offset ?? registered?.wake_stream_offset,
  onError: (error) => emit({ event: 'error', where: 'runner', message: String(error?.message ?? error) }),
})
runner.start()
emit({ event: 'started', runner_id: runnerId, server: baseUrl, pid: process.pid })

// Health transitions as JSON lines: what the runner itself knows about its stream.
const WATCHED = ['status', 'stream_connected', 'last_heartbeat_ok', 'reconnect_count', 'last_error']
let previous = {}
setInterval(() => {
  const health = runner.getHealth()
  if (WATCHED.some((k) => health[k] !== previous[k])) {
    emit({ event: 'health', ...health })
    previous = health
  }
}, 100).unref()

if (opts['status-port']) {
  createServer((req, res) => {
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ ...runner.getHealth(), host: { ...counters, active: active.size, uptime_ms: Date.now() - startedAt } }))
  }).listen(Number(opts['status-port']), '127.0.0.1')
}

let stopping = false
async function shutdown(signal) {
  if (stopping) process.exit(1)
  stopping = true
  emit({ event: 'stopping', signal })
  await Promise.race([runner.stop().catch(() => {}), sleep(5_000)])
  emit({ event: 'stopped' })
  process.exit(0)
}
process.on('SIGINT', () => void shutdown('SIGINT'))
process.on('SIGTERM', () => void shutdown('SIGTERM'))
