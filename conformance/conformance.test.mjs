// The upstream Durable Streams conformance suite, run against CONFORMANCE_TEST_URL.
// Its CLI finds no tests when installed as a dependency (durable-streams issue #284),
// so the test runner is imported here. See tests/server/ds/test_conformance.py.
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.CONFORMANCE_TEST_URL
if (!baseUrl) throw new Error("set CONFORMANCE_TEST_URL (e.g. http://127.0.0.1:4437)")

runConformanceTests({
  baseUrl,
  subscriptions: process.env.CONFORMANCE_SUBSCRIPTIONS !== "0",
  longPollTimeoutMs: Number(process.env.CONFORMANCE_LONG_POLL_MS ?? "500"),
})
