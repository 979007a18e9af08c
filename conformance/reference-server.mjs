// The reference server (npm @durable-streams/server 0.3.7, what the agents-server embeds),
// file-backed, webhooks on, for a conformance baseline:
//   node reference-server.mjs PORT DATA_DIR [LONG_POLL_MS]
import { DurableStreamTestServer } from "@durable-streams/server"

const [port, dataDir, longPoll] = process.argv.slice(2)
const server = new DurableStreamTestServer({
  port: Number(port ?? 4438),
  host: "127.0.0.1",
  dataDir: dataDir ?? "./.reference-data",
  longPollTimeout: Number(longPoll ?? 500),
  webhooks: true,
})
const url = await server.start()
console.log(`reference listening on ${url}`)
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, async () => { await server.stop(); process.exit(0) })
