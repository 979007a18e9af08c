"""Fleet scale, measured: 10,000 runners' series in a real Prometheus, every query timed.

What it does, end to end:

1. generates realistic series for `--runners` runners (a mix: mostly
   healthy runners whose SSE session the server rotates every minute, some
   flapping through failed sessions and backoff, some in the seed bug -
   stream connected while heartbeats fail - and a few that stopped
   reporting) for every runner metric of `pullwake.core.catalog` that
   `/metrics` exports (the scrape path: classic histograms, which promtool
   can backfill) and the server's per-runner metrics, by their catalog prom
   names, label sets and buckets, at `--step` resolution over `--minutes`
   (series no rule or fleet/server panel reads are written every
   `--sparse-step` except for the runner dashboard's runner: same index,
   fewer samples nobody reads);
2. writes them as OpenMetrics files (runner chunks, converted by promtool
   while the next is generated, then deleted) and loads them into a TSDB
   with `promtool tsdb create-blocks-from openmetrics`;
3. starts a real Prometheus on that data directory and backfills every
   recording rule of the generated rule files (`dashboards.build.generate`)
   with `promtool tsdb create-blocks-from rules`, level by level (a rule that
   reads another rule's series is backfilled after it), restarting
   Prometheus on the new blocks each time;
4. times every Prometheus query of the fleet, runner and server dashboards
   as Grafana sends it (range queries over the dashboard's default range at
   `--query-step`, instant queries for instant targets; `$runner_id` is a
   seed-bug runner, `$__rate_interval` 1m) and every rule group (each rule's
   expression as an instant query at the end of the data, in group order,
   Prometheus' own execution times summed: what one evaluation of the group
   costs), after Prometheus merged the overlapping blocks.

Each figure is the best of `--repeat` runs (the machine is shared; the
first line printed is its load).  "series" is how many stored series the
query's selectors match over the data; "samples" is Prometheus' own count of
samples the query read (`stats=all`).  Goal: every fleet panel and every
rule group under 1 s.

    .venv/bin/python bench/bench_fleet.py [--runners 10000] [--minutes 75] [--json]
    .venv/bin/python bench/bench_fleet.py --quick          # 100 runners, no backfill (~10 s)
    .venv/bin/python bench/bench_fleet.py --work DIR       # keep the series, reuse them next run

A 10,000-runner run: about 6 minutes to generate and load 91 million samples,
2 to backfill, 1 to compact, 2 to time (2 shared cores).

Needs `prometheus` and `promtool` (Debian package `prometheus`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pullwake.core import catalog as c
from pullwake.core.protocol import RunnerState, WakeOutcome
from pullwake.dashboards import build
from pullwake.dashboards.config import DEFAULT, Config
from tests.support.procs import Proc, free_port, wait_until

GOAL_S = 1.0
DASHBOARD_RANGE_S = 3600  # every dashboard opens on now-1h
RATE_INTERVAL = "1m"  # Grafana's $__rate_interval for a 15 s scrape: 4 x 15 s
PROFILES = ("healthy", "flapping", "seed_bug", "gone")
# Share of the fleet in each profile (the rest is healthy).
MIX = {"flapping": 0.06, "seed_bug": 0.02, "gone": 0.01}
GONE_BEFORE_END_S = 20 * 60  # a `gone` runner stopped reporting this long before the end
ROTATE_S = 60  # the server's default SSE rotation
HEARTBEAT_S = 10  # the runner's default heartbeat interval
FLAP_CYCLE = ("s", "s", "s", "s", "r", "c", "c", "r")  # 2 min, one sample each


# --- the fleet model -------------------------------------------------------------------
@dataclass(frozen=True)
class Runner:
    """One simulated runner: its profile and the random offsets that make it its own."""

    index: int
    profile: str
    phase: int  # seconds, shifts rotations and heartbeats
    base: int  # counters' value at the start of the data (the runner ran before)
    onset: int  # seed bug: seconds after the start when the heartbeats began to fail
    wake_every: int  # seconds between wakes

    @property
    def id(self) -> str:
        return f"runner-{self.index:05d}"


def fleet(n: int, span: int, seed: int = 1) -> list[Runner]:
    rnd = random.Random(seed)
    profiles: list[str] = []
    for name, share in MIX.items():
        profiles += [name] * max(1, round(n * share))
    profiles += ["healthy"] * (n - len(profiles))
    rnd.shuffle(profiles)
    return [
        Runner(
            i,
            p,
            phase=rnd.randrange(ROTATE_S),
            base=rnd.randrange(50, 5000),
            onset=rnd.randrange(span // 3, span - 5 * 60),
            wake_every=rnd.choice((30, 60, 120, 300)),
        )
        for i, p in enumerate(profiles)
    ]


# Fractions of observations at or below each bucket bound: a log-normal around a median.
def cdf(buckets: Sequence[float], median: float, spread: float = 0.8) -> np.ndarray:
    out = []
    for b in buckets:
        z = (math.log(b) - math.log(median)) / spread
        out.append(0.5 * math.erfc(-z / math.sqrt(2)))
    return np.array(out)


@dataclass
class Series:
    name: str
    labels: dict[str, str]
    values: np.ndarray  # one per sample; NaN = no sample


@dataclass
class Model:
    """Every series of one runner, computed metric by metric from the catalog."""

    times: np.ndarray  # seconds since the start of the data, one per sample
    step: int
    span: int
    extra: dict[str, str] = field(default_factory=dict)

    def states(self, r: Runner) -> np.ndarray:
        """One letter per sample: s(treaming), r(econnecting), c(onnecting)."""
        n = len(self.times)
        if r.profile == "flapping":
            k = (self.times // self.step + r.phase).astype(int) % len(FLAP_CYCLE)
            return np.asarray(np.array(FLAP_CYCLE)[k])
        return np.full(n, "s")

    def seed(self, r: Runner) -> np.ndarray:
        """True where a seed-bug runner's heartbeats have failed since its onset."""
        if r.profile != "seed_bug":
            return np.zeros(len(self.times), dtype=bool)
        return np.asarray(self.times >= r.onset)

    def alive(self, r: Runner) -> np.ndarray:
        if r.profile != "gone":
            return np.ones(len(self.times), dtype=bool)
        return np.asarray(self.times < self.span - GONE_BEFORE_END_S)

    def series(self, metric: c.Metric, r: Runner) -> list[Series]:
        t = self.times + r.phase
        states = self.states(r)
        seed = self.seed(r)
        streaming = states == "s"
        flaps = np.cumsum(states == "c") // 2  # failed sessions so far
        rotations = t // ROTATE_S
        hb_ok_count = np.where(seed, r.onset + r.phase, t) // HEARTBEAT_S
        hb_failed_count = np.where(seed, (t - r.onset - r.phase) // HEARTBEAT_S, 0)
        if r.profile == "flapping":
            hb_failed_count = flaps.copy()
        wakes = np.where(seed, (r.onset + r.phase) // r.wake_every, t // r.wake_every)
        out: list[Series] = []

        def add(values: Any, suffix: str = "", **labels: str) -> None:
            name = metric.prom_name + (f"_{suffix}" if suffix else "")
            out.append(Series(name, labels, np.asarray(values, dtype=float)))

        def hist(count: Any, median: float, **labels: str) -> None:
            assert metric.buckets is not None
            count = np.asarray(count, dtype=float)
            fractions = cdf(metric.buckets, median)
            for bound, f in zip(metric.buckets, fractions, strict=True):
                add(np.floor(count * f), "bucket", le=_le(bound), **labels)
            add(count, "bucket", le="+Inf", **labels)
            add(count * median * 1.1, "sum", **labels)
            add(count, "count", **labels)

        b = r.base
        role = _role(metric)
        if role == "STREAM_CONNECTED":
            add(np.where(streaming | seed, 1, 0))
        elif role == "STREAM_AGE":
            age = np.where(streaming, t % ROTATE_S, 0)
            add(np.where(seed, self.times - r.onset + ROTATE_S, age))
        elif role == "STREAM_IDLE":
            add(np.where(seed, self.times - r.onset + 5, np.where(streaming, t % 15, 3)))
        elif role == "STREAM_IDLE_TIMEOUT":
            add(np.full(len(t), 0 if r.profile == "seed_bug" else 45))  # seed: legacy profile
        elif role == "STREAM_RECONNECTS":
            add(
                b // 60 + np.where(seed, (r.onset + r.phase) // ROTATE_S, rotations),
                reason="rotated",
            )
            if r.profile == "flapping":
                add(flaps + b // 500, reason="error")
                add(flaps // 2 + 1, reason="connect_error")
        elif role == "HEARTBEAT_FAILURES":
            if r.profile == "flapping":
                add(hb_failed_count, error_type="connect")
            elif r.profile == "seed_bug":
                add(hb_failed_count, error_type="timeout")
        elif role == "HEARTBEAT_CONSECUTIVE_FAILURES":
            add(np.where(seed, (self.times - r.onset) // HEARTBEAT_S + 1, 0))
        elif role.startswith("HEARTBEAT_LAST_SUCCESS"):  # whatever BUDGET calls it
            now = self.times + float(self.extra["start"])
            last = now - (t % HEARTBEAT_S)
            add(np.where(seed, float(self.extra["start"]) + r.onset, last))
        elif role == "RUNNER_STATE":
            codes = {
                RunnerState.STREAMING.value: "s",
                RunnerState.RECONNECTING.value: "r",
                RunnerState.CONNECTING.value: "c",
            }
            for state in metric.allowed_values("state") or ():  # what the gauge exports
                add(np.where(states == codes.get(state), 1, 0), state=state)
        elif role == "WAKES":
            add(b // 10 + wakes, outcome=WakeOutcome.HANDLED.value)
            if r.profile == "flapping":  # handlers outliving their claim lease
                add(b // 1000 + flaps // 3, outcome=WakeOutcome.FENCED.value)
        elif role == "WAKE_LATENCY":
            hist(b // 10 + wakes, 0.05 if r.profile != "flapping" else 0.4)
        # --- the server's per-runner series
        elif role == "SERVER_STREAMS_OPEN":
            add(np.where(streaming & ~seed, 1, 0), live_mode="sse")
        elif role in ("SERVER_MESSAGES", "SERVER_WAKES_ANNOUNCED"):
            add(b // 10 + wakes)
        elif role == "SERVER_SUBSCRIPTIONS_PENDING":
            add(np.where(seed, 1 + (self.times - r.onset) // r.wake_every, 0))
        elif role == "SERVER_CLAIMS_ACTIVE":
            add(np.where(wakes % 2 == 0, 1, 0))
        elif role == "SERVER_HEARTBEATS":
            add(b + hb_ok_count)
        elif role == "SERVER_CLAIMS":
            add(b // 10 + wakes, outcome="claimed")
        elif role == "SERVER_COMPLETIONS":
            add(b // 10 + wakes, outcome="done")
            add(b // 10 + wakes, outcome="extended")
        elif role == "SERVER_LEASE_EXPIRIES":
            add(np.full(len(t), b // 1000))
        elif role == "SERVER_LEASE_REMAINING":
            rem = 30 - (t % HEARTBEAT_S)
            add(np.where(seed, 30 - (self.times - r.onset), rem))
        elif role == "SERVER_STREAM_MISMATCH":
            add(np.where(seed, 1, 0))
        elif metric.name == "http.client.request.duration":
            http = {n: n for n in metric.prom_labels}
            ok = {http.get("http_response_status_code", "code"): "200"}
            to = {
                http.get("server_address", "addr"): "server",
                http.get("server_port", "p"): "4437",
            }
            method = http.get("http_request_method", "method")
            hist(b + hb_ok_count, 0.008, **{method: "POST"}, **to, **ok)  # heartbeats
            hist(b // 60 + rotations + flaps, 0.01, **{method: "GET"}, **to, **ok)  # streams
            if r.profile in ("flapping", "seed_bug"):
                err = {http.get("error_type", "error"): "TimeoutError"}
                hist(hb_failed_count, 5.0, **{method: "POST"}, **to, **err)
        else:  # a metric this model does not know yet: one plausible series per runner
            labels = {
                c.prom_label(a): (metric.allowed_values(a) or ("other",))[0]
                for a in metric.attributes
                if a != c.RUNNER_ID and a not in getattr(metric, "optional", ())
            }
            if metric.kind is c.Kind.HISTOGRAM:
                hist(b + t // 30, 0.05, **labels)
            elif metric.kind is c.Kind.COUNTER:
                add(b + t // 30, **labels)
            else:
                add(np.zeros(len(t)), **labels)
        alive = self.alive(r)
        for s in out:
            s.values = np.where(alive, s.values, np.nan)
        return out


def _role(metric: c.Metric) -> str:
    """The catalog constant naming `metric` (names and buckets may change; roles stay)."""
    return _ROLES.get(metric.name, "")


_ROLES: dict[str, str] = {v.name: k for k, v in vars(c).items() if isinstance(v, c.Metric)}


def _le(bound: float) -> str:
    return repr(float(bound))


def modelled(metric: c.Metric) -> bool:
    """What Prometheus stores on the scrape path: the runner metrics on `/metrics`
    (not the ones the series budget sends over OTLP only) and the
    server's metrics that carry `runner.id`.

    The scrape path because promtool backfills OpenMetrics text, which has no
    native histograms: OTLP's exponential histograms (one series each) would
    only make histogram queries cheaper.
    """
    if not getattr(metric, "scraped", True):
        return False
    return metric.component is c.Component.RUNNER or c.RUNNER_ID in metric.attributes


# --- OpenMetrics -> TSDB --------------------------------------------------------------
def write_openmetrics(path: Path, model: Model, runners: Sequence[Runner], plan: Plan) -> int:
    """One file, metric family by family (OpenMetrics wants each family in one piece)."""
    stamps = [str(plan.start + int(x)) for x in model.times]
    sparse = sorted({*range(0, len(stamps), plan.sparse_every), len(stamps) - 1})
    lines = 0
    with path.open("w") as f:
        for metric in c.CATALOG:
            if not modelled(metric):
                continue
            job = "pullwake-" + metric.component.value
            dense = metric.prom_name in plan.dense
            for r in runners:
                instance = r.id if metric.component is c.Component.RUNNER else "server:4437"
                keep = None if dense or r.id in plan.detail else sparse
                for s in model.series(metric, r):
                    labels = {c.prom_label(c.RUNNER_ID): r.id, **s.labels}
                    labels |= {"job": job, "instance": instance}
                    head = s.name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "} "
                    vals = s.values.tolist()
                    pairs = zip(vals, stamps, strict=True)
                    if keep is not None:
                        pairs = zip([vals[i] for i in keep], [stamps[i] for i in keep], strict=True)
                    chunk = [f"{head}{v:.10g} {ts}\n" for v, ts in pairs if v == v]  # NaN: none
                    lines += len(chunk)
                    f.write("".join(chunk))
        f.write("# EOF\n")
    return lines


@dataclass(frozen=True)
class Plan:
    """Where and how densely to write: see `dense_metrics`."""

    start: int
    dense: frozenset[str]  # metrics written at every step for every runner
    detail: frozenset[str]  # runners written densely whatever the metric
    sparse_every: int  # other series: one sample in this many steps


def dense_metrics(config: Config, runner: str) -> frozenset[str]:
    """Metrics read across the fleet: by a rule, the fleet or the server dashboard.

    The others (per-runner histograms of request durations, ...) are only
    read by the runner dashboard for one runner at a time.  Every runner
    still has all of its series (the index is the real size); those series
    are written sparsely for runners other than the dashboard's runner, so a
    10,000-runner run fits in minutes: a query's cost depends on the
    samples it reads, and no fleet-wide query reads them.
    """
    exprs = [r["expr"] for g in rule_groups(config).values() for r in g]
    exprs += [q.expr for q in dashboard_queries(config, runner) if q.group != "dashboard/runner"]
    names = {sel.split("{")[0] for e in exprs for sel in selectors(e)}
    return frozenset(
        m.prom_name for m in c.CATALOG if modelled(m) and names & {m.prom_name, *m.prom_series}
    )


def promtool(*argv: str, timeout: float = 3600) -> str:
    res = subprocess.run(
        ["promtool", *argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    if res.returncode != 0:
        raise SystemExit(f"promtool {argv[:3]} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return res.stdout


# --- Prometheus -----------------------------------------------------------------------
class Prom:
    """A real Prometheus on a loopback port, serving `data` (no scrapes, no rules)."""

    def __init__(self, work: Path, data: Path) -> None:
        self.port = free_port()
        cfg = work / "prometheus.yml"
        cfg.write_text("global:\n  scrape_interval: 15s\n")
        self.proc = Proc(
            [
                "prometheus",
                f"--config.file={cfg}",
                f"--storage.tsdb.path={data}",
                "--storage.tsdb.retention.time=10y",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--query.max-samples=500000000",
                "--query.timeout=5m",
            ],
            work / "prometheus.log",
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Prom:
        self.proc.start()
        wait_until(lambda: self._ready() or not self.proc.alive(), 600, what="prometheus ready")
        if not self.proc.alive():
            raise SystemExit("prometheus exited:\n" + self.proc.output()[-3000:])
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stop(timeout=60)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def api(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        body = urllib.parse.urlencode(params).encode()
        req = urllib.request.Request(self.url + path, data=body, method="POST")
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with urllib.request.urlopen(req, timeout=600) as resp:
                answer: dict[str, Any] = json.load(resp)
        except urllib.error.HTTPError as exc:
            answer = json.load(exc)
        if answer.get("status") != "success":
            raise RuntimeError(f"{path} {params.get('query', '')[:200]}: {answer.get('error')}")
        return answer

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return 0.0


# --- what to time ---------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    group: str  # "dashboard/<uid>" or "rules/<group>"
    title: str
    expr: str
    instant: bool


@functools.cache
def generated(config: Config) -> dict[str, str]:
    """`pullwake dashboards build`'s output for `config` (seconds to make: made once)."""
    return build.generate(config)


def dashboard_queries(config: Config, runner: str) -> list[Query]:
    files = generated(config)
    out: list[Query] = []
    for key in build.DASHBOARDS:
        model = json.loads(files[build.dashboard_path(config, key)])
        for panel in _panels(model.get("panels", [])):
            for t in panel.get("targets") or []:
                expr = t.get("expr")
                if not expr:
                    continue  # Tempo, Alertmanager
                expr = expr.replace("$__rate_interval", RATE_INTERVAL)
                expr = re.sub(r"\$\{?runner_id\}?", runner, expr)
                title = panel.get("title", "?")
                if len(panel["targets"]) > 1:
                    title += f" [{t.get('legendFormat') or t.get('refId', '')}]"
                out.append(Query(f"dashboard/{key}", title, expr, bool(t.get("instant"))))
        for var in model.get("templating", {}).get("list", []):
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", str(var.get("query", "")))
            if m:
                out.append(Query(f"dashboard/{key}", f"variable ${var['name']}", m[1], True))
    return out


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels") or [])


def rule_groups(config: Config) -> dict[str, list[dict[str, Any]]]:
    """Group name -> its rules, from the generated rule files (deploy/prometheus/rules)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rel, text in generated(config).items():
        if rel.startswith("prometheus/rules/"):
            for g in yaml.safe_load(text)["groups"]:
                out[g["name"]] = list(g["rules"])
    return out


def levels(groups: dict[str, list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Recording rules in backfill order: a rule after every rule whose series it reads.

    `promtool tsdb create-blocks-from rules` evaluates each rule against the
    Prometheus it is given, so a rule reading another rule's series needs that
    series loaded first.  Rules sharing a record name (quantiles) share a level.
    """
    rules = [r for g in groups.values() for r in g if "record" in r]
    names = {r["record"] for r in rules}
    depth: dict[str, int] = {}

    def level(name: str, seen: frozenset[str]) -> int:
        if name not in depth:
            exprs = [r["expr"] for r in rules if r["record"] == name]
            reads = {o for o in names - seen - {name} for e in exprs if _reads(e, o)}
            depth[name] = 1 + max((level(o, seen | {name}) for o in reads), default=-1)
        return depth[name]

    out: list[list[dict[str, Any]]] = []
    for r in rules:
        n = level(r["record"], frozenset())
        out += [[] for _ in range(n + 1 - len(out))]
        out[n].append(r)
    return out


def _reads(expr: str, name: str) -> bool:
    return re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", expr) is not None


SELECTOR = re.compile(r"(?<![\w:.\"])([a-zA-Z_][\w]*:[\w:]*|pullwake_\w+)(\{[^}]*\})?")


def selectors(expr: str) -> list[str]:
    """The vector selectors of a query (metric names are catalog or recording names)."""
    return sorted({m[1] + (m[2] or "") for m in SELECTOR.finditer(expr)})


# --- timing ---------------------------------------------------------------------------
@dataclass
class Timed:
    """One row.  `seconds`: a panel's wall time (what Grafana waits for, HTTP and JSON
    included), a rule group's engine time summed over its rules (what one
    evaluation costs); `engine`: Prometheus' own execution time either way."""

    group: str
    title: str
    seconds: float
    engine: float
    series: int
    samples: int
    results: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.seconds < GOAL_S


def run_query(prom: Prom, q: Query, end: int, step: int) -> tuple[float, float, int, int]:
    """(wall seconds, engine seconds, samples read, result series) of one query as
    Grafana would send it.  Engine seconds: Prometheus' own `execTotalTime`, without
    HTTP and JSON - what the same expression costs inside a rule evaluation."""
    params = {"query": q.expr, "stats": "all"}
    if q.instant:
        params["time"] = str(end)
        path = "/api/v1/query"
    else:
        params |= {"start": str(end - DASHBOARD_RANGE_S), "end": str(end), "step": f"{step}s"}
        path = "/api/v1/query_range"
    t0 = time.perf_counter()
    answer = prom.api(path, params)
    elapsed = time.perf_counter() - t0
    data = answer["data"]
    stats = data.get("stats", {})
    samples = int(stats.get("samples", {}).get("totalQueryableSamples", 0))
    engine = float(stats.get("timings", {}).get("execTotalTime", elapsed))
    return elapsed, engine, samples, len(data["result"]) if isinstance(data["result"], list) else 1


def series_touched(prom: Prom, expr: str, end: int, span: int, cache: dict[str, int]) -> int:
    total = 0
    for sel in selectors(expr):
        if sel not in cache:
            answer = prom.api(
                "/api/v1/query",
                {"query": f"count(last_over_time({sel}[{span}s]))", "time": str(end)},
            )
            result = answer["data"]["result"]
            cache[sel] = int(float(result[0]["value"][1])) if result else 0
        total += cache[sel]
    return total


def time_all(
    prom: Prom, config: Config, end: int, span: int, step: int, repeat: int, runner: str
) -> list[Timed]:
    cache: dict[str, int] = {}
    out: list[Timed] = []
    for q in dashboard_queries(config, runner):
        best, best_engine, samples, results, error = math.inf, math.inf, 0, 0, ""
        for _ in range(repeat):
            try:
                s, engine, samples, results = run_query(prom, q, end, step)
            except RuntimeError as exc:
                error = str(exc)[:200]
                break
            best, best_engine = min(best, s), min(best_engine, engine)
        title = q.title + (" (instant)" if q.instant else "")
        touched = series_touched(prom, q.expr, end, span, cache)
        out.append(Timed(q.group, title, best, best_engine, touched, samples, results, error))
    for name, rules in rule_groups(config).items():
        best_total, samples_total, touched, errors, slowest = math.inf, 0, 0, [], ("", 0.0)
        for attempt in range(repeat):
            total, samples_total = 0.0, 0
            for r in rules:
                q = Query(name, r.get("record") or r["alert"], r["expr"], True)
                try:
                    _, s, samples, _ = run_query(prom, q, end, step)
                except RuntimeError as exc:
                    errors.append(str(exc)[:200])
                    continue
                total += s
                samples_total += samples
                if attempt == 0:
                    touched += series_touched(prom, r["expr"], end, span, cache)
                if s > slowest[1]:
                    slowest = (q.title, s)
            best_total = min(best_total, total)
        title = f"{len(rules)} rules, slowest {slowest[0]} {slowest[1]:.3f} s"
        errs = "; ".join(errors)
        row = Timed(f"rules/{name}", title, best_total, best_total, touched, samples_total, 0, errs)
        out.append(row)
    return out


# --- main -----------------------------------------------------------------------------
def generate_tsdb(
    work: Path, data: Path, runners: list[Runner], model: Model, plan: Plan, chunk: int
) -> tuple[int, float, float]:
    """(samples, seconds generating, seconds waiting for promtool).

    promtool converts one chunk while the next one is generated.
    """
    total, gen_s, wait_s = 0, 0.0, 0.0
    running: tuple[subprocess.Popen[bytes], Path] | None = None

    def finish() -> float:
        if running is None:
            return 0.0
        t0 = time.perf_counter()
        proc, path = running
        if proc.wait() != 0:
            raise SystemExit(f"promtool create-blocks-from openmetrics failed on {path}")
        path.unlink()
        return time.perf_counter() - t0

    for i in range(0, len(runners), chunk):
        path = work / f"fleet-{i}.om"
        t0 = time.perf_counter()
        total += write_openmetrics(path, model, runners[i : i + chunk], plan)
        gen_s += time.perf_counter() - t0
        wait_s += finish()
        argv = ["promtool", "tsdb", "create-blocks-from", "openmetrics", "--quiet"]
        running = (subprocess.Popen([*argv, str(path), str(data)]), path)
        print(
            f"  runners {i}-{min(i + chunk, len(runners)) - 1}: {total:,} samples so far "
            f"({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
        )
    wait_s += finish()
    return total, gen_s, wait_s


def backfill(
    work: Path, data: Path, groups: dict[str, list[dict[str, Any]]], start: int, end: int, step: int
) -> float:
    """Every recording rule over [start, end], level by level; seconds taken."""
    t0 = time.perf_counter()
    for n, rules in enumerate(levels(groups)):
        rule_file = work / f"backfill-{n}.yml"
        group = {"name": f"backfill-{n}", "interval": f"{step}s", "rules": rules}
        rule_file.write_text(yaml.safe_dump({"groups": [group]}, sort_keys=False))
        out = work / f"backfill-{n}"
        shutil.rmtree(out, ignore_errors=True)
        with Prom(work, data) as prom:
            promtool(
                "tsdb",
                "create-blocks-from",
                "rules",
                "--quiet",
                f"--url={prom.url}",
                f"--start={start}",
                f"--end={end}",
                f"--output-dir={out}",
                str(rule_file),
            )
        for block in out.iterdir():
            shutil.move(str(block), data / block.name)
        print(f"  backfilled level {n}: {len(rules)} rules", file=sys.stderr)
    return time.perf_counter() - t0


def wait_compacted(prom: Prom, windows: int, timeout: float) -> int:
    """Wait until Prometheus merged the overlapping blocks (at most `timeout` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if prom.metric("prometheus_tsdb_blocks_loaded") <= windows:
            break
        time.sleep(2)
    return int(prom.metric("prometheus_tsdb_blocks_loaded"))


def _key(args: argparse.Namespace) -> list[int]:
    return [args.runners, args.minutes, args.step, args.sparse_step]


def reusable(work: Path, args: argparse.Namespace, plan: Plan) -> dict[str, Any] | None:
    """The previous run's record when its series fit this run (same sizes, dense enough)."""
    try:
        made: dict[str, Any] = json.loads((work / "fleet.json").read_text())
    except (OSError, ValueError):
        return None
    if made.get("args") != _key(args) or not plan.dense <= set(made.get("dense", [])):
        return None
    return made if (work / "raw").is_dir() else None


def table(rows: list[Timed]) -> str:
    w = max(len(f"{r.group} {r.title}") for r in rows)
    head = f"{'query / rule group':<{w}}  {'seconds':>8}  {'engine':>8}  {'series':>9}"
    lines = [f"{head}  {'samples':>12}  {'results':>7}  goal"]
    for r in rows:
        name = f"{r.group} {r.title}"
        mark = "ok" if r.ok else ("ERROR " + r.error if r.error else "SLOW")
        lines.append(
            f"{name:<{w}}  {r.seconds:8.3f}  {r.engine:8.3f}  {r.series:9,}  {r.samples:12,}"
            f"  {r.results:7,}  {mark}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runners", type=int, default=10_000)
    ap.add_argument("--minutes", type=int, default=75, help="history generated (>= 65)")
    ap.add_argument("--step", type=int, default=15, help="seconds between samples (scrape)")
    ap.add_argument("--query-step", type=int, default=15, help="range query step (Grafana)")
    ap.add_argument("--backfill-step", type=int, default=60, help="recording rules backfill")
    ap.add_argument(
        "--sparse-step",
        type=int,
        default=300,
        help="s between samples of series no fleet query reads",
    )
    ap.add_argument("--repeat", type=int, default=3, help="best of N per query")
    ap.add_argument("--chunk", type=int, default=2000, help="runners per OpenMetrics file")
    ap.add_argument("--compact-wait", type=float, default=240, help="max s for compaction")
    ap.add_argument(
        "--no-backfill", action="store_true", help="skip the recording rules' history (smoke test)"
    )
    ap.add_argument("--quick", action="store_true", help="100 runners, no backfill: smoke test")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument(
        "--work", type=Path, help="keep the series here and reuse them when run with the same sizes"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.runners, args.repeat, args.compact_wait, args.no_backfill = 100, 1, 0, True
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (Debian package `prometheus`)")
    load = os.getloadavg()
    print(
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores; "
        f"{args.runners:,} runners, {args.minutes} min at {args.step} s",
        file=sys.stderr,
    )
    config = DEFAULT
    span = args.minutes * 60
    # The data sits inside one 2 h TSDB block window in the past when it fits, so
    # promtool writes one block per chunk and Prometheus merges them into one.
    block, now = 7200, int(time.time())
    start = (now // block - 1) * block + 60 if span <= block - 120 else now - 60 - span
    start -= start % args.step
    end = start + span
    runners = fleet(args.runners, span)
    model = Model(np.arange(0, span + 1, args.step), args.step, span, {"start": str(start)})
    seed_runner = next(r.id for r in runners if r.profile == "seed_bug")

    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-")) if args.work is None else args.work
    tmp.mkdir(parents=True, exist_ok=True)
    raw, data = tmp / "raw", tmp / "data"
    report: dict[str, Any] = {}
    try:
        plan = Plan(
            start,
            dense_metrics(config, seed_runner),
            frozenset({seed_runner}),
            max(1, args.sparse_step // args.step),
        )
        made = reusable(tmp, args, plan)
        if made is None:
            shutil.rmtree(raw, ignore_errors=True)
            samples, gen_s, tool_s = generate_tsdb(tmp, raw, runners, model, plan, args.chunk)
            made = {"args": _key(args), "start": start, "dense": sorted(plan.dense)}
            made |= {"samples": samples, "generate_s": gen_s, "promtool_wait_s": tool_s}
            (tmp / "fleet.json").write_text(json.dumps(made))
        else:
            print(f"  reusing the series in {raw}", file=sys.stderr)
            start = int(made["start"])
            end = start + span
        samples, gen_s, tool_s = made["samples"], made["generate_s"], made["promtool_wait_s"]
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(raw, data)
        groups = rule_groups(config)
        bf_start = end - DASHBOARD_RANGE_S - 300
        bf_start -= (bf_start - end) % args.backfill_step
        bf_s = (
            0.0
            if args.no_backfill
            else backfill(tmp, data, groups, bf_start, end, args.backfill_step)
        )
        with Prom(tmp, data) as prom:
            blocks = wait_compacted(prom, 1 + span // block, args.compact_wait)
            rows = time_all(prom, config, end, span, args.query_step, args.repeat, seed_runner)
            head_series = prom.api(
                "/api/v1/query", {"query": 'count({__name__=~"pullwake_.+"})', "time": str(end)}
            )["data"]["result"]
        load2 = os.getloadavg()
        report = {
            "runners": args.runners,
            "profiles": {p: sum(r.profile == p for r in runners) for p in PROFILES},
            "minutes": args.minutes,
            "step_s": args.step,
            "series_at_end": int(float(head_series[0]["value"][1])) if head_series else 0,
            "samples": samples,
            "generate_s": round(gen_s, 1),
            "promtool_wait_s": round(tool_s, 1),
            "dense_metrics": sorted(plan.dense),
            "backfill_s": None if args.no_backfill else round(bf_s, 1),
            "blocks_when_timed": blocks,
            "load_before": [round(x, 2) for x in load],
            "load_after": [round(x, 2) for x in load2],
            "goal_s": GOAL_S,
            "rows": [r.__dict__ | {"ok": r.ok} for r in rows],
        }
    finally:
        if args.work is None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{report['runners']:,} runners {report['profiles']}, {report['series_at_end']:,} "
            f"series at the end, {report['samples']:,} samples over {args.minutes} min at "
            f"{args.step} s; load {load[0]:.2f} before, {report['load_after'][0]:.2f} after"
        )
        print(table(rows))
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
