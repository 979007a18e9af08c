// Reads a Durable Stream with the upstream stream client (npm @durable-streams/client 0.2.6,
// the one the upstream pull-wake runner uses) and prints what it read, one JSON object a line:
//   {"event":"request","url":...,"live":"long-poll"|"sse"|null,"status":...}  every HTTP request
//   {"event":"item","item":<JSON item>,"offset":<batch offset>,"upToDate":bool} every item read
//   {"event":"done","count":N}  after --count items (exit 0); {"event":"error",...} (exit 1)
// Used by tests/e2e/test_upstream_stream_client.py against our server.
//
//   node interop/read-stream.mjs --url URL --live long-poll|sse [--offset -1] --count N
//        [--timeout-ms 30000] [--header name:value ...]

import { parseArgs } from 'node:util'
import { stream } from '@durable-streams/client'

const { values: opts } = parseArgs({
  options: {
    url: { type: 'string' },
    live: { type: 'string', default: 'long-poll' },
    offset: { type: 'string', default: '-1' },
    count: { type: 'string' },
    'timeout-ms': { type: 'string', default: '30000' },
    header: { type: 'string', multiple: true, default: [] },
  },
})
if (!opts.url || !opts.count || !['long-poll', 'sse'].includes(opts.live)) {
  process.stderr.write('usage: read-stream.mjs --url URL --live long-poll|sse --count N\n')
  process.exit(2)
}

const emit = (record) => process.stdout.write(JSON.stringify(record) + '\n')
const want = Number(opts.count)
const headers = {}
for (const h of opts.header) {
  const i = h.indexOf(':')
  headers[h.slice(0, i).trim()] = h.slice(i + 1).trim()
}

const controller = new AbortController()
const timer = setTimeout(() => {
  emit({ event: 'error', message: `timeout: ${seen} of ${want} items` })
  controller.abort()
  process.exit(1)
}, Number(opts['timeout-ms']))

// Every request the client makes, so a test can tell catch-up, long-poll and SSE apart.
const tracingFetch = async (input, init) => {
  const url = typeof input === 'string' ? input : input.url ?? String(input)
  const live = new URL(url).searchParams.get('live')
  try {
    const response = await fetch(input, init)
    emit({ event: 'request', url, live, status: response.status })
    return response
  } catch (err) {
    if (!controller.signal.aborted) emit({ event: 'request', url, live, error: String(err) })
    throw err
  }
}

let seen = 0
try {
  const res = await stream({
    url: opts.url,
    headers,
    offset: opts.offset,
    live: opts.live,
    json: true,
    signal: controller.signal,
    fetch: tracingFetch,
    // Never fall back from SSE to long-poll silently: the test must read in the mode it asked.
    sseResilience: { maxShortConnections: 1_000_000, logWarnings: false },
    onError: (err) => {
      emit({ event: 'error', message: String(err?.message ?? err) })
      return {}
    },
  })
  await new Promise((resolve, reject) => {
    res.subscribeJson((batch) => {
      for (const item of batch.items) {
        seen++
        emit({ event: 'item', item, offset: batch.offset, upToDate: batch.upToDate })
        if (seen >= want) {
          resolve()
          return
        }
      }
    })
    res.closed.then(() => reject(new Error(`stream closed after ${seen} items`)), reject)
  })
  clearTimeout(timer)
  emit({ event: 'done', count: seen })
  controller.abort()
  process.exit(0)
} catch (err) {
  emit({ event: 'error', message: String(err?.message ?? err) })
  process.exit(1)
}
