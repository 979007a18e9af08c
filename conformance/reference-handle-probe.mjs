// Drives the reference's file-backed store (npm @durable-streams/server 0.3.7,
// FileBackedStreamStore) directly, without HTTP, to show which error its HTTP layer turns
// into 404 "Stream not found" when more streams are appended than it keeps files open:
//   node reference-handle-probe.mjs STREAMS [MAX_FILE_HANDLES] [APPENDERS] [ROUNDS]
// MAX_FILE_HANDLES: omitted = the store's default (what DurableStreamTestServer uses).
// Prints one JSON line: appends, accepted, frames a catch-up read returns, frames in the
// segment files (refused appends' frames included), failures by error message (paths
// folded); the data dir is removed.
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import { FileBackedStreamStore } from "@durable-streams/server"

const [streams, maxHandles, appenders, rounds] = process.argv.slice(2)
const n = Number(streams ?? 1000)
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "reference-handle-probe-"))
const options = { dataDir }
if (maxHandles !== undefined && maxHandles !== "default") options.maxFileHandles = Number(maxHandles)
const store = new FileBackedStreamStore(options)
const failures = {}
let appends = 0
let accepted = 0
let stored = 0
let onDisk = 0
try {
  for (let k = 0; k < n; k++) await store.create(`/probe/${k}`, { contentType: "application/json" })
  const work = []
  for (let r = 0; r < Number(rounds ?? 3); r++) for (let k = 0; k < n; k++) work.push([k, r])
  let next = 0
  const worker = async () => {
    while (next < work.length) {
      const [k, r] = work[next++]
      appends++
      try {
        await store.append(`/probe/${k}`, Buffer.from(JSON.stringify({ s: k, i: r })), {
          contentType: "application/json",
        })
        accepted++
      } catch (err) {
        const key = String(err?.message ?? err).replace(/ for \/.*$/, " for <segment file>")
        failures[key] = (failures[key] ?? 0) + 1
      }
    }
  }
  await Promise.all(Array.from({ length: Number(appenders ?? 16) }, worker))
  // frames a reader gets from the segment files: refused appends' frames are among them
  for (let k = 0; k < n; k++) stored += store.read(`/probe/${k}`).messages.length
  // frames in the segment files ([4-byte length][data][\n] each)
  const dir = path.join(dataDir, "streams")
  for (const f of fs.readdirSync(dir)) {
    const buf = fs.readFileSync(path.join(dir, f))
    for (let at = 0; at + 4 <= buf.length; at += 4 + buf.readUInt32BE(at) + 1) onDisk++
  }
} finally {
  await store.close()
  fs.rmSync(dataDir, { recursive: true, force: true })
}
console.log(JSON.stringify({ streams: n, maxFileHandles: options.maxFileHandles ?? "default (100)", appends, accepted, stored, onDisk, failures }))
