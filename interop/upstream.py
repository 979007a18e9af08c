#!/usr/bin/env python3
"""Run the REAL upstream agents-server and the UNMODIFIED upstream pull-wake runner.

Nothing of upstream (electric-sql/electric) lives in this repository: every command takes the
path of an electric checkout (or of a bare mirror plus ``--commit``) and copies what it needs into
a work directory outside the repository (``$PULLWAKE_INTEROP_HOME``, default
``~/.cache/pullwake-interop``). See interop/README.md and DEVELOPERS.md.

    upstream.py prepare --electric PATH [--commit SHA]
    upstream.py server  --port P [--db-port Q]           # Postgres 15 + agents-server, prints URL
    upstream.py runner  --server URL --runner-id ID      # upstream runner, JSON lines on stdout

Stdlib only, so it runs with any Python 3.11 (the project venv is not needed).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

INTEROP_DIR = Path(__file__).resolve().parent
PNPM = ["npx", "-y", "pnpm@10.12.1"]
WORKSPACE_PACKAGES = ("agents-server", "agents-runtime", "agents-mcp")
# The upstream runner's own files; its other imports are type-only (erased by tsx).
RUNNER_FILES = ("pull-wake-runner.ts", "pull-wake-machine.ts", "url.ts", "constants.ts")
# Bump when the layout of a prepared work directory changes, so old caches are rebuilt.
LAYOUT_VERSION = 1
# The electric commit this tooling was written and measured against.
DEFAULT_COMMIT = "dc07a1e6c8ff459b59ce407cdb6bf2f7fd068f36"


class InteropError(Exception):
    """A failure with a one-line explanation for the user (no traceback)."""


def log(message: str) -> None:
    """Progress goes to stderr: stdout carries only what scripts parse (URL, JSON lines)."""
    print(f"[upstream] {message}", file=sys.stderr, flush=True)


def work_home() -> Path:
    return Path(os.environ.get("PULLWAKE_INTEROP_HOME", Path.home() / ".cache/pullwake-interop"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port (a bind succeeds)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def run(cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, turning a failure into an InteropError that shows its output."""
    proc = subprocess.run(list(cmd), text=True, capture_output=True, check=False, **kwargs)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-2000:]
        raise InteropError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return proc


# ----------------------------------------------------------------------------- prepare


@dataclass(frozen=True)
class Source:
    """Where upstream comes from: a git dir + commit, or a plain directory tree."""

    git_dir: Path | None
    commit: str | None
    tree: Path | None

    @property
    def key(self) -> str:
        if self.commit:
            return self.commit[:12]
        assert self.tree is not None
        return "tree-" + hashlib.sha256(str(self.tree).encode()).hexdigest()[:12]

    def describe(self) -> str:
        return f"{self.git_dir} @ {self.commit}" if self.commit else f"working tree {self.tree}"


def resolve_source(electric: Path, commit: str | None) -> Source:
    """A checkout is used as is (its working tree); a bare mirror or --commit goes through git."""
    electric = electric.expanduser().resolve()
    if not electric.exists():
        raise InteropError(f"--electric {electric}: no such directory")
    has_tree = (electric / "packages" / "agents-server" / "package.json").is_file()
    if commit is None and has_tree:
        return Source(git_dir=None, commit=None, tree=electric)
    git_dir = electric
    probe = subprocess.run(
        ["git", "--git-dir", str(git_dir), "rev-parse", "--git-dir"],
        capture_output=True, text=True, check=False,
    )
    if probe.returncode != 0:
        dot_git = electric / ".git"
        if not dot_git.exists():
            raise InteropError(f"--electric {electric}: neither an electric checkout nor a git dir")
        git_dir = dot_git
    rev = commit or ("HEAD" if has_tree else DEFAULT_COMMIT)
    full = run(["git", "--git-dir", str(git_dir), "rev-parse", "--verify", f"{rev}^{{commit}}"])
    return Source(git_dir=git_dir, commit=full.stdout.strip(), tree=None)


def export_paths(src: Source, paths: Sequence[str], dest: Path) -> None:
    """Copy upstream paths (files or directories) into dest, keeping their relative layout."""
    dest.mkdir(parents=True, exist_ok=True)
    if src.commit:
        assert src.git_dir is not None
        with tempfile.TemporaryFile() as tar:
            # stderr kept quiet: a partial mirror warns about blobs of unrelated paths.
            done = subprocess.run(
                ["git", "--git-dir", str(src.git_dir), "archive", src.commit, *paths],
                stdout=tar, stderr=subprocess.PIPE, check=False,
            )
            if done.returncode != 0:
                raise InteropError(f"git archive {src.commit} {' '.join(paths)} failed: "
                                   f"{done.stderr.decode(errors='replace').strip()[-500:]}")
            tar.seek(0)
            with tarfile.open(fileobj=tar) as archive:
                archive.extractall(dest, filter="data")
        return
    assert src.tree is not None
    for rel in paths:
        origin = src.tree / rel
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(
                origin, target, dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("node_modules", "dist", ".streams-data"),
            )
        elif origin.exists():
            shutil.copy2(origin, target)


def upstream_has(src: Source, rel: str) -> bool:
    if src.commit:
        assert src.git_dir is not None
        out = subprocess.run(
            ["git", "--git-dir", str(src.git_dir), "cat-file", "-e", f"{src.commit}:{rel}"],
            capture_output=True, check=False,
        )
        return out.returncode == 0
    assert src.tree is not None
    return (src.tree / rel).exists()


def trim_workspace_deps(package_json: Path, present: set[str]) -> list[str]:
    """Drop `workspace:*` dependencies on packages we did not copy (agents-server lists several
    devDependencies: the agents app, its UI, the conformance tests). Returns what was dropped."""
    data = json.loads(package_json.read_text())
    dropped: list[str] = []
    for section in ("dependencies", "devDependencies", "optionalDependencies"):
        deps: dict[str, str] = data.get(section) or {}
        for name, spec in list(deps.items()):
            if spec.startswith("workspace:") and name not in present:
                del deps[name]
                dropped.append(name)
    package_json.write_text(json.dumps(data, indent=2) + "\n")
    return dropped


def tsconfig_for_source_run() -> dict[str, Any]:
    """tsx resolves the sibling workspace packages to their TypeScript sources (no build step)."""
    return {
        "extends": "./tsconfig.json",
        "compilerOptions": {
            "baseUrl": ".",
            "paths": {
                "@electric-ax/agents-runtime": ["../agents-runtime/src/index.ts"],
                "@electric-ax/agents-runtime/*": ["../agents-runtime/src/*"],
                "@electric-ax/agents-mcp": ["../agents-mcp/src/index.ts"],
                "@electric-ax/agents-mcp/*": ["../agents-mcp/src/*"],
            },
        },
    }


def prepare(src: Source, *, force: bool = False) -> Path:
    """Build (once) the work directory for this source: a pnpm workspace with the three upstream
    packages, and a copy of the upstream runner files next to our node_modules. Returns it."""
    home = work_home()
    root = home / src.key
    stamp = root / "prepared.json"
    expect = {"layout": LAYOUT_VERSION, "source": src.describe()}
    if not force and stamp.is_file() and src.commit:
        with contextlib.suppress(ValueError):
            if json.loads(stamp.read_text()) == expect:
                link_current(root)
                return root
    log(f"preparing {src.describe()} in {root}")
    ws = root / "ws"
    if src.commit and ws.exists():
        # A commit never changes: start clean (a half-built workspace from an interrupted run).
        shutil.rmtree(ws)
    ws.mkdir(parents=True, exist_ok=True)
    export_paths(src, [f"packages/{p}" for p in WORKSPACE_PACKAGES], ws)
    present = set()
    for p in WORKSPACE_PACKAGES:
        name = json.loads((ws / "packages" / p / "package.json").read_text())["name"]
        present.add(name)
    for p in WORKSPACE_PACKAGES:
        dropped = trim_workspace_deps(ws / "packages" / p / "package.json", present)
        if dropped:
            log(f"packages/{p}: dropped uncopied workspace deps {', '.join(dropped)}")
    root_pkg: dict[str, Any] = {"private": True, "packageManager": "pnpm@10.12.1"}
    # Upstream's lockfile pins the versions it was tested with (e.g. @durable-streams/server
    # 0.3.7, client 0.2.6); pnpm keeps those resolutions for the packages we copied.
    for rel in ("pnpm-lock.yaml", ".npmrc"):
        if upstream_has(src, rel):
            export_paths(src, [rel], ws)
    if upstream_has(src, "patches"):
        export_paths(src, ["patches"], ws)
        patched = _upstream_patched_dependencies(src)
        if patched:
            root_pkg["pnpm"] = {"patchedDependencies": patched}
    (ws / "package.json").write_text(json.dumps(root_pkg, indent=2) + "\n")
    (ws / "pnpm-workspace.yaml").write_text("packages:\n  - 'packages/*'\n")
    server_dir = ws / "packages" / "agents-server"
    (server_dir / "tsconfig.interop.json").write_text(
        json.dumps(tsconfig_for_source_run(), indent=2) + "\n"
    )
    log("pnpm install (first time: a minute or so)")
    t0 = time.monotonic()
    run([*PNPM, "install", "--no-frozen-lockfile", "--ignore-scripts"], cwd=ws)
    log(f"pnpm install done in {time.monotonic() - t0:.0f}s")
    if not tsx_loader(root).is_file():
        raise InteropError(f"tsx not found after install: {tsx_loader(root)}")
    # The upstream runner, run against OUR pinned node_modules (interop/package-lock.json).
    rsrc = root / "runner" / "src"
    if rsrc.exists():
        shutil.rmtree(rsrc)
    with tempfile.TemporaryDirectory() as tmp:
        export_paths(src, [f"packages/agents-runtime/src/{f}" for f in RUNNER_FILES], Path(tmp))
        rsrc.mkdir(parents=True)
        for f in RUNNER_FILES:
            shutil.copy2(Path(tmp) / "packages/agents-runtime/src" / f, rsrc / f)
    (root / "runner" / "package.json").write_text('{"private": true, "type": "module"}\n')
    link = root / "runner" / "node_modules"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(INTEROP_DIR / "node_modules")
    stamp.write_text(json.dumps(expect) + "\n")
    link_current(root)
    log(f"ready: {root}")
    return root


def _upstream_patched_dependencies(src: Source) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        export_paths(src, ["package.json"], Path(tmp))
        data = json.loads((Path(tmp) / "package.json").read_text())
    patched: dict[str, str] = (data.get("pnpm") or {}).get("patchedDependencies") or {}
    return patched


def link_current(root: Path) -> None:
    current = work_home() / "current"
    tmp = work_home() / f".current.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(root)
    tmp.replace(current)


def tsx_loader(root: Path) -> Path:
    return root / "ws/packages/agents-server/node_modules/tsx/dist/esm/index.mjs"


def prepared_root(electric: str | None, commit: str | None) -> Path:
    """The work directory to run from: prepare it from --electric, else the last prepared one."""
    if electric:
        return prepare(resolve_source(Path(electric), commit))
    current = work_home() / "current"
    if not (current / "prepared.json").is_file():
        raise InteropError(
            f"nothing prepared in {work_home()}: run `upstream.py prepare --electric PATH` first "
            "(or pass --electric)"
        )
    return current.resolve()


# ----------------------------------------------------------------------------- processes


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """GET url; the status, or None if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, http.client.HTTPException):
        return None


def stop_process(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM,
                 grace: float = 8.0) -> None:
    """Signal one process we started, wait, then SIGKILL if it lingers (also if SIGSTOPped)."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
        proc.send_signal(signal.SIGCONT)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _as_postgres() -> dict[str, Any]:
    """Postgres refuses to run as root: drop to user postgres when we are root."""
    if os.geteuid() == 0:
        return {"user": "postgres", "group": "postgres"}
    return {}


class Postgres:
    """A throwaway Postgres 15 cluster on loopback (initdb once per data dir)."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").is_file():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres", "postgres")
            # postgres must traverse every parent (mkdtemp makes them 0700).
            os.chmod(self.data_dir.parent, 0o755)
        run(["initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--no-sync"], **_as_postgres())

    def start(self) -> None:
        if not port_free(self.port):
            raise InteropError(f"Postgres port 127.0.0.1:{self.port} is already in use")
        log_file = (self.data_dir.parent / "postgres.log").open("ab")
        self.proc = subprocess.Popen(
            ["postgres", "-D", str(self.data_dir), "-h", "127.0.0.1", "-p", str(self.port),
             "-k", str(self.data_dir), "-c", "fsync=off"],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, **_as_postgres(),
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise InteropError(f"postgres exited ({self.proc.returncode}); see "
                                   f"{self.data_dir.parent / 'postgres.log'}")
            probe = subprocess.run(
                ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                 "-d", "postgres", "-Atc", "select 1"],
                capture_output=True, text=True, check=False,
            )
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise InteropError(f"postgres on 127.0.0.1:{self.port} not ready in 30 s")
            time.sleep(0.2)

    def create_database(self, name: str) -> str:
        exists = run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d",
                      "postgres", "-Atc", f"select 1 from pg_database where datname='{name}'"])
        if exists.stdout.strip() != "1":
            run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d",
                 "postgres", "-c", f'CREATE DATABASE "{name}"'])
        return f"postgresql://postgres:postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT)  # SIGINT = postgres "fast" shutdown


class AgentsServer:
    """The real agents-server run from source (tsx), with its embedded Durable Streams server.

    State that must survive a restart (the Postgres database, the streams data dir) is kept by
    the caller; start() can be called again after a kill to restart on the same port."""

    def __init__(self, root: Path, *, port: int, ds_port: int, database_url: str,
                 streams_dir: Path, log_path: Path, extra_env: dict[str, str] | None = None,
                 ) -> None:
        self.root = root
        self.port = port
        self.ds_port = ds_port
        self.database_url = database_url
        self.streams_dir = streams_dir
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        # Someone else's server on the port would answer the health check in our stead.
        for port, what in ((self.port, "agents-server"), (self.ds_port, "streams")):
            if not port_free(port):
                raise InteropError(f"{what} port 127.0.0.1:{port} is already in use")
        server_dir = self.root / "ws/packages/agents-server"
        env = dict(os.environ)
        # Upstream reads several spellings of the DS URL; none may leak in from our shell,
        # or the server would not embed its own DS.
        for name in ("ELECTRIC_AGENTS_DURABLE_STREAMS_URL", "DURABLE_STREAMS_URL", "STREAMS_URL"):
            env.pop(name, None)
        env.update({
            "DATABASE_URL": self.database_url,
            "ELECTRIC_AGENTS_HOST": "127.0.0.1",
            "ELECTRIC_AGENTS_PORT": str(self.port),
            "ELECTRIC_AGENTS_STREAMS_HOST": "127.0.0.1",
            "ELECTRIC_AGENTS_STREAMS_PORT": str(self.ds_port),
            "ELECTRIC_AGENTS_STREAMS_DATA_DIR": str(self.streams_dir),
            "TSX_TSCONFIG_PATH": str(server_dir / "tsconfig.interop.json"),
        })
        env.update(self.extra_env)
        self.streams_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            ["node", "--import", str(tsx_loader(self.root)), "src/entrypoint.ts"],
            cwd=server_dir, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while self.proc.poll() is not None or http_status(
                self.url + "/_electric/health", timeout=1.0) != 200:
            if self.proc.poll() is not None:
                raise InteropError(f"agents-server exited ({self.proc.returncode}); see "
                                   f"{self.log_path}")
            if time.monotonic() > deadline:
                raise InteropError(f"agents-server not healthy in {timeout:.0f} s; see "
                                   f"{self.log_path}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)


@dataclass
class Stack:
    """Postgres + agents-server with their state in one run directory."""

    postgres: Postgres
    server: AgentsServer
    run_dir: Path
    keep: bool

    def stop(self) -> None:
        self.server.stop()
        self.postgres.stop()
        if not self.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def start_stack(root: Path, *, port: int, db_port: int | None = None, ds_port: int | None = None,
                run_dir: Path | None = None, keep: bool = False) -> Stack:
    """Start Postgres (fresh cluster + fresh database) and the real agents-server."""
    if run_dir is None:
        run_dir = Path(tempfile.mkdtemp(prefix="pullwake-upstream-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    pg = Postgres(run_dir / "pgdata", db_port or free_port())
    server: AgentsServer | None = None
    try:
        pg.init()
        pg.start()
        db_url = pg.create_database("agents")
        server = AgentsServer(root, port=port, ds_port=ds_port or free_port(),
                              database_url=db_url, streams_dir=run_dir / "streams",
                              log_path=run_dir / "agents-server.log")
        server.start()
    except BaseException:
        if server is not None:
            server.stop()
        pg.stop()
        raise
    return Stack(postgres=pg, server=server, run_dir=run_dir, keep=keep)


@contextlib.contextmanager
def terminating_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so `finally` cleanup runs for all three."""
    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def runner_command(root: Path, server: str, runner_id: str, extra: Sequence[str] = ()) -> list[str]:
    """The node command hosting the upstream runner (interop/runner-host.mjs)."""
    loader = INTEROP_DIR / "node_modules/tsx/dist/esm/index.mjs"
    if not loader.is_file():
        raise InteropError(f"{loader} missing: run `(cd {INTEROP_DIR} && npm ci)` first")
    return ["node", "--import", str(loader), str(INTEROP_DIR / "runner-host.mjs"),
            "--runner-src", str(root / "runner/src"), "--server", server,
            "--runner-id", runner_id, *extra]


# ----------------------------------------------------------------------------- CLI


def cmd_prepare(args: argparse.Namespace) -> int:
    root = prepare(resolve_source(Path(args.electric), args.commit), force=args.force)
    print(root)
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    root = prepared_root(args.electric, args.commit)
    run_dir = Path(args.work_dir) if args.work_dir else None
    with terminating_signals():
        stack = None
        try:
            stack = start_stack(root, port=args.port, db_port=args.db_port, ds_port=args.ds_port,
                                run_dir=run_dir, keep=args.keep or run_dir is not None)
            log(f"agents-server pid {stack.server.pid}, postgres 127.0.0.1:"
                f"{stack.postgres.port}, logs in {stack.run_dir}")
            print(stack.server.url, flush=True)
            assert stack.server.proc is not None
            code = stack.server.proc.wait()
            log(f"agents-server exited ({code})")
            return 1
        except KeyboardInterrupt:
            log("stopping")
            return 0
        finally:
            if stack is not None:
                stack.stop()


def cmd_runner(args: argparse.Namespace) -> int:
    root = prepared_root(args.electric, args.commit)
    extra: list[str] = []
    for flag in ("label", "principal", "heartbeat_interval_ms", "work_ms", "status_port",
                 "offset"):
        value = getattr(args, flag)
        if value is not None:
            extra += ["--" + flag.replace("_", "-"), str(value)]
    if args.trace:
        extra.append("--trace")
    cmd = runner_command(root, args.server, args.runner_id, extra)
    proc = subprocess.Popen(cmd)
    with terminating_signals():
        try:
            return proc.wait()
        except KeyboardInterrupt:
            stop_process(proc, signal.SIGTERM)
            return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="upstream.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def source_args(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument("--electric", required=required, metavar="PATH",
                       help="electric-sql/electric checkout, or a bare mirror with --commit")
        p.add_argument("--commit", metavar="SHA",
                       help=f"commit to use (bare mirror default: {DEFAULT_COMMIT[:12]})")

    p = sub.add_parser("prepare", help="build the pnpm workspace (cached per commit)")
    source_args(p, required=True)
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("server", help="Postgres + the real agents-server; prints its URL")
    source_args(p, required=False)
    p.add_argument("--port", type=int, required=True, help="agents-server port (127.0.0.1)")
    p.add_argument("--db-port", type=int, help="Postgres port (default: a free one)")
    p.add_argument("--ds-port", type=int, help="embedded Durable Streams port (default: free)")
    p.add_argument("--work-dir", metavar="DIR",
                   help="keep Postgres data, streams and logs here (default: a temp dir, removed)")
    p.add_argument("--keep", action="store_true", help="do not remove the temp dir at exit")
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("runner", help="host the unmodified upstream pull-wake runner")
    source_args(p, required=False)
    p.add_argument("--server", required=True, metavar="URL", help="agents-server base URL")
    p.add_argument("--runner-id", required=True)
    p.add_argument("--label")
    p.add_argument("--principal", help="electric-principal header (default: none = dev-local)")
    p.add_argument("--heartbeat-interval-ms", type=int,
                   help="runner heartbeat interval (upstream default 30000)")
    p.add_argument("--work-ms", type=int, help="how long each handled wake 'works' (default 0)")
    p.add_argument("--status-port", type=int, help="serve getHealth() on 127.0.0.1:PORT")
    p.add_argument("--offset", help="wake stream start offset (default: as upstream, -1)")
    p.add_argument("--trace", action="store_true", help="log every HTTP request as JSON")
    p.set_defaults(func=cmd_runner)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except InteropError as exc:
        print(f"upstream.py: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
