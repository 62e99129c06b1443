"""Data intake throughput: Segment-spec events per second, and the CSV import's rows per second.

Events: Herald's `/v1/batch` (100 events per request) and single `/v1/track`, on SQLite (and
PostgreSQL when a URL is given), each measured in a phase of its own:

  1. a fresh database (a copy of a migrated SQLite file / a truncated PostgreSQL schema) with
     one workspace and one store whose write key is made by `herald.services.stores`;
  2. the server is the production entry point, `python -m herald.cli serve --no-worker` (one
     uvicorn process; add --with-worker for the in-process worker resolving identities);
  3. --load-procs load processes (this file with --load) each open their share of the
     connections, then all start at one instant; each connection keeps one request in flight
     (HTTP/1.1 keep-alive, raw asyncio protocol on uvloop: a few microseconds per request, far
     cheaper than an HTTP client library). Bodies are those of segment-analytics-python
     (its message shape, `sentAt`, `writeKey`, Basic auth) with a unique, random-looking
     messageId per event, so the dedupe index sees realistic inserts;
  4. after --warmup seconds, the events answered 200 during --duration seconds are counted
     (a 200 with a `rejected` list counts only the accepted ones; anything else counts nothing);
  5. once every response is in, the `events` table must hold exactly the accepted events
     (count and distinct messageIds): none lost, none doubled.

Reference, same run, same load processes, same bodies: `bare`, a minimal ASGI app served by
uvicorn with the same settings as `herald serve` (host, port, log level, proxy headers); it
reads the body, parses it with orjson and answers 200 {"success":true}. ratio = Herald ÷ bare.
`floor` (unless --no-floor): the same Herald server process answering `/bench/bare` (mounted
with HERALD_BENCH_BARE=1: FastAPI routing and Herald's middleware, no parsing, no database) —
it splits the gap between bare and Herald into framework cost and ingestion cost. Both servers
run at --log-level (default Herald's: info, so uvicorn writes an access log line per request,
tens of microseconds each); with --log-level warning the bare endpoint gets much faster and the
ratio much lower.

CSV: `ingest_csv.measure(rows, workdir)` (bench/ingest_csv.py: `herald import contacts`'s code
path into a fresh SQLite file, in a child process of its own, so its peak memory is the
import's): --csv-runs times with --csv-rows rows, and once with a tenth of that, to see whether
memory grows with the file ("flat": peak minus start at full size within 1.5x + 32 MB of the
same at a tenth).

The machines are shared and noisy: each figure is the median of --runs runs [min-max]; the
phases of one run are interleaved (bare, Herald, floor for track, then for batch). CPU cores
used by the server and by the load processes, and how busy the whole machine was, are printed
per phase: on a 2-core machine the load processes share the cores with the server.

    .venv/bin/python bench/ingest.py                       # SQLite (PostgreSQL skipped), 1M-row CSV
    HERALD_BENCH_DATABASE_URL=postgresql://127.0.0.1/test .venv/bin/python bench/ingest.py
    .venv/bin/python bench/ingest.py --quick               # short phases, 1 run, 100k-row CSV
    .venv/bin/python bench/ingest.py --quick --skip-csv --json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SECRET = "bench-" + "0" * 58  # HERALD_SECRET_KEY for the servers (required with PostgreSQL)
OK_BODY = b'{"success":true}'
START_TIMEOUT = 60.0  # server / load process start-up on a loaded machine
STOP_TIMEOUT = 30.0
DRAIN_TIMEOUT = 60.0  # for the requests in flight when a phase ends
GOAL_BATCH = 50_000  # events/s through /v1/batch
GOAL_SINGLE_RATIO = 0.5  # /v1/track vs the bare endpoint
GOAL_CSV = 20_000  # rows/s
STRUCTLOG_INFO = re.compile(r"^\S+ \[(info|debug) *\] ")  # herald's own console log lines


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ---- request bodies (the load processes build them; segment-analytics-python's shapes) ---------
LIBRARY = b'{"library":{"name":"analytics-python","version":"2.4.0"}}'
EVENT_NAMES = (b"Product Viewed", b"Product Added", b"Checkout Started", b"Order Completed")
MESSAGE = (b'{"integrations":{},"properties":{"product_id":"sku-%05d","price":%d.9,"currency":"USD",'
           b'"quantity":%d,"category":"Shoes"},"timestamp":"%s","context":' + LIBRARY
           + b',"userId":"user-%06d","type":"track","event":"%s","messageId":"%s"}')
MASK64 = (1 << 64) - 1
SPREAD = 0x9E3779B97F4A7C15  # odd, so n -> n * SPREAD mod 2**64 is a bijection: unique ids


class Bodies:
    """Request bytes for one load process: every event gets its own messageId
    (<16 hex of a bijection of a counter>-<process salt>), random-looking like a uuid4."""

    def __init__(self, kind: str, batch_size: int, salt: str, write_key: str, path: str, host: str) -> None:
        self.kind, self.batch_size, self.n = kind, batch_size, 0
        self.salt = salt.encode()
        self.write_key = write_key.encode()
        auth = base64.b64encode(f"{write_key}:".encode())
        self.head = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode()
                     + b"\r\nUser-Agent: analytics-python/2.4.0\r\nContent-Type: application/json"
                     + b"\r\nAuthorization: Basic " + auth + b"\r\nContent-Length: ")

    def message(self, stamp: bytes) -> bytes:
        n = self.n = self.n + 1
        mid = b"%016x-%s" % ((n * SPREAD) & MASK64, self.salt)
        return MESSAGE % (n % 50_000, n % 200, 1 + n % 3, stamp, n % 20_000, EVENT_NAMES[n & 3], mid)

    def request(self) -> tuple[bytes, int]:
        """(the whole HTTP request, how many events it carries)"""
        now = datetime.now(UTC)
        stamp = now.isoformat(timespec="milliseconds").encode()
        if self.kind == "track":
            body, count = self.message(stamp), 1
        else:
            count = self.batch_size
            messages = b",".join([self.message(stamp) for _ in range(count)])
            body = (b'{"batch":[' + messages + b'],"sentAt":"' + now.isoformat().encode()
                    + b'","writeKey":"' + self.write_key + b'"}')
        return self.head + str(len(body)).encode() + b"\r\n\r\n" + body, count


# ---- the load process (`--load`): one request in flight per keep-alive connection ------------------
class Loader:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.bodies = Bodies(cfg["kind"], cfg["batch_size"], cfg["salt"], cfg["write_key"], cfg["path"],
                             f"{cfg['host']}:{cfg['port']}")
        self.t_warm = self.t_end = float("inf")
        self.conns: set[Conn] = set()
        self.done: asyncio.Future[None] | None = None
        self.requests = self.sent_events = self.accepted = self.odd_bodies = 0
        self.lost = self.lost_events = self.reconnects = 0
        self.statuses: dict[int, int] = {}
        self.window_requests = self.window_events = 0
        self.latencies: list[float] = []
        self.problems: list[str] = []

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: Conn(self), self.cfg["host"], self.cfg["port"])

    def send(self, conn: Conn) -> None:
        if time.monotonic() >= self.t_end:
            self.finished(conn)
            return
        request, count = self.bodies.request()
        conn.events, conn.t_sent = count, time.monotonic()
        self.requests += 1
        self.sent_events += count
        assert conn.transport is not None
        conn.transport.write(request)

    def response(self, conn: Conn, status: int, body: bytes, closing: bool) -> None:
        t = time.monotonic()
        count, conn.events = conn.events, 0
        self.statuses[status] = self.statuses.get(status, 0) + 1
        accepted = 0
        if status == 200:
            if body == OK_BODY:
                accepted = count
            else:  # a 200 listing rejected messages: only the others were stored
                self.odd_bodies += 1
                with suppress(ValueError, TypeError, AttributeError):
                    accepted = count - len(orjson.loads(body).get("rejected") or ())
                if len(self.problems) < 5:
                    self.problems.append(f"200 with body {body[:200]!r}")
        elif len(self.problems) < 5:
            self.problems.append(f"{status}: {body[:300]!r}")
        self.accepted += accepted
        if self.t_warm <= t < self.t_end:
            self.window_requests += 1
            self.window_events += accepted
            self.latencies.append(t - conn.t_sent)
        if closing:
            self.retire(conn)
        else:
            self.send(conn)

    def lost_connection(self, conn: Conn, exc: Exception | None) -> None:
        if conn.retired:  # closed by us, or after the server said `Connection: close`
            return
        if conn.events:  # a request without its answer: its events may or may not be stored
            self.lost += 1
            self.lost_events += conn.events
            conn.events = 0
            if len(self.problems) < 5:
                self.problems.append(f"connection lost with a request in flight: {exc!r}")
        self.retire(conn)

    def retire(self, conn: Conn) -> None:
        conn.retired = True
        if conn.transport is not None:
            conn.transport.close()
        self.finished(conn)
        if time.monotonic() < self.t_end:  # keep the number of connections
            self.reconnects += 1
            asyncio.get_running_loop().create_task(self.connect())

    def finished(self, conn: Conn) -> None:
        self.conns.discard(conn)
        if not self.conns and self.done is not None and not self.done.done() and time.monotonic() >= self.t_end:
            self.done.set_result(None)


class Conn(asyncio.Protocol):
    """HTTP/1.1 responses with Content-Length (what uvicorn sends for these endpoints)."""

    def __init__(self, loader: Loader) -> None:
        self.loader = loader
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.events = 0
        self.t_sent = 0.0
        self.head_end = -1
        self.need = -1
        self.status = 0
        self.closing = False
        self.retired = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        self.loader.conns.add(self)
        if self.loader.t_warm != float("inf"):  # a reconnect during the phase: carry on
            self.loader.send(self)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                at = head.find(b"\r\ncontent-length:")
                if at < 0:
                    self.loader.problems.append(f"response without Content-Length: {head[:200]!r}")
                    assert self.transport is not None
                    self.transport.close()
                    return
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17:stop if stop >= 0 else len(head)])
                self.status = int(head[9:12])
                self.closing = b"\r\nconnection: close" in head
                self.head_end, self.need = end + 4, end + 4 + length
            if len(buf) < self.need:
                return
            body = bytes(buf[self.head_end:self.need])
            del buf[:self.need]
            self.need = -1
            self.loader.response(self, self.status, body, self.closing)
            if self.closing:
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.loader.lost_connection(self, exc)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def load_main(cfg: dict[str, Any]) -> dict[str, Any]:
    loader = Loader(cfg)
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loader.connect() for _ in range(cfg["connections"])))
    print(f"ready {len(loader.conns)}", flush=True)
    line = await loop.run_in_executor(None, sys.stdin.readline)  # "go <start> <warm> <end>" (monotonic)
    start, loader.t_warm, loader.t_end = (float(x) for x in line.split()[1:4])
    loader.done = loop.create_future()
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    for conn in list(loader.conns):
        loader.send(conn)
    unanswered = 0
    try:
        await asyncio.wait_for(asyncio.shield(loader.done), timeout=loader.t_end - time.monotonic() + DRAIN_TIMEOUT)
    except TimeoutError:
        unanswered = sum(1 for c in loader.conns if c.events)
        loader.lost_events += sum(c.events for c in loader.conns)
        loader.problems.append(f"{unanswered} request(s) unanswered {DRAIN_TIMEOUT:g}s after the end")
    for conn in list(loader.conns):
        if conn.transport is not None:
            conn.transport.close()
    lat = loader.latencies
    return {"requests": loader.requests, "sent_events": loader.sent_events, "accepted_events": loader.accepted,
            "statuses": {str(k): v for k, v in loader.statuses.items()}, "odd_bodies": loader.odd_bodies,
            "lost": loader.lost + unanswered, "lost_events": loader.lost_events, "reconnects": loader.reconnects,
            "window_requests": loader.window_requests, "window_events": loader.window_events,
            "p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99), "problems": loader.problems}


def run_load_process() -> None:
    cfg = json.loads(sys.stdin.readline())
    try:
        import uvloop

        result = uvloop.run(load_main(cfg))
    except ImportError:
        result = asyncio.run(load_main(cfg))
    print(json.dumps(result), flush=True)


# ---- the bare reference server (`--serve-bare`) --------------------------------------------------
async def bare_app(scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[dict[str, Any]], Any]) -> None:
    """Reads the body, parses the JSON, answers 200 {"success":true}. Nothing else."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if body:
        orjson.loads(body)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"16")]})
    await send({"type": "http.response.body", "body": OK_BODY})


def run_bare_server(host: str, port: int, log_level: str) -> None:
    import uvicorn

    uvicorn.run(bare_app, host=host, port=port, log_level=log_level, proxy_headers=True)  # as `herald serve`


# ---- databases ---------------------------------------------------------------------------------
@dataclass
class Backend:
    name: str
    key: str
    info: dict[str, Any]
    fresh: Callable[[], str]  # -> HERALD_DATABASE_URL of an empty database with the store
    count: Callable[[str], tuple[int, int]]  # url -> (rows in events, distinct messageIds)
    write_key: str


def migrate(url: str) -> None:
    """Upgrade to the head schema (a no-op when there; the tree may gain a migration mid-run)."""
    from herald.db.engine import make_engine
    from herald.db.migrate import upgrade

    engine = make_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def make_store(url: str, *, sqlite_synchronous: str = "FULL") -> str:
    """Migrate, create a workspace and a store with a Segment write key; returns the key."""
    from herald.db.engine import make_engine
    from herald.db.migrate import upgrade
    from herald.domain.auth import Principal
    from herald.services import stores as store_service
    from herald.services import workspaces

    engine = make_engine(url, sqlite_synchronous=sqlite_synchronous)
    try:
        upgrade(engine)
        now = datetime.now(UTC)
        with engine.begin() as conn:
            ws = workspaces.create_workspace(conn, name="Bench", slug="bench", now=now)
            who = Principal("key_bench", ws["id"], None)
            store = workspaces.create_store(conn, who, name="Bench store", platform="custom", currency="USD",
                                            timezone="UTC", domain=None, now=now)
            _, key = store_service.create_write_key(conn, who, store["id"])
    finally:
        engine.dispose()
    if url.startswith("sqlite:///"):  # everything into the main file, which is what gets copied
        db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()
    return key


@contextmanager
def sqlite_backend(synchronous: str, directory: str | None) -> Iterator[Backend]:
    from engine import filesystem

    with tempfile.TemporaryDirectory(prefix="herald-bench-ingest-", dir=directory) as tmp:
        template = Path(tmp) / "template.db"
        key = make_store(f"sqlite:///{template}", sqlite_synchronous=synchronous)

        def fresh() -> str:
            path = Path(tmp) / "phase.db"
            for old in path.parent.glob(path.name + "*"):
                old.unlink()
            shutil.copyfile(template, path)
            migrate(f"sqlite:///{path}")
            return f"sqlite:///{path}"

        def count(url: str) -> tuple[int, int]:
            db = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)
            try:
                rows, distinct = db.execute("SELECT count(*), count(DISTINCT dedupe_key) FROM events").fetchone()
            finally:
                db.close()
            return int(rows), int(distinct)

        info = {"synchronous": synchronous, "journal_mode": "WAL", "version": sqlite3.sqlite_version,
                "filesystem": filesystem(template)}
        yield Backend(f"SQLite sync={synchronous}", f"sqlite-{synchronous.lower()}", info, fresh, count, key)


@contextmanager
def postgres_backend(base_url: str) -> Iterator[Backend]:
    from engine import with_search_path
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from herald.db.engine import make_engine

    schema = f"herald_bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(base_url, pool_size=1)
    created = False
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            created = True
            info = {k: conn.execute(text(f"SHOW {k}")).scalar_one()
                    for k in ("server_version", "synchronous_commit", "fsync", "shared_buffers")}
        url = with_search_path(base_url, schema)
        key = make_store(url)

        def fresh() -> str:
            migrate(url)
            with admin.begin() as conn:
                conn.execute(text(f'TRUNCATE "{schema}".events, "{schema}".jobs'))
            return url

        def count(_url: str) -> tuple[int, int]:
            with admin.begin() as conn:
                rows, distinct = conn.execute(
                    text(f'SELECT count(*), count(DISTINCT dedupe_key) FROM "{schema}".events')).one()
            return int(rows), int(distinct)

        info.update(url=make_url(base_url).render_as_string(hide_password=True), schema=schema)
        yield Backend(f"PostgreSQL {str(info['server_version']).split()[0]}", "postgresql", info, fresh, count, key)
    finally:
        if created:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


# ---- processes -----------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM it if the bench dies, even by SIGKILL (Linux)."""
    with suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def popen(cmd: list[str], env: dict[str, str], log: Path | None, **kw: Any) -> subprocess.Popen[bytes]:
    out: Any = log.open("wb") if log is not None else subprocess.PIPE
    try:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT if log else None,
                                preexec_fn=die_with_parent if sys.platform == "linux" else None, **kw)
    finally:
        if log is not None:
            out.close()


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def tail(self, lines: int = 20) -> str:
        with suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def complaints(self) -> list[str]:
        """Lines of the server's log that are not uvicorn's INFO lines (start/stop, access log)."""
        out = []
        with suppress(OSError), self.log.open(errors="replace") as fh:
            for line in fh:
                if line.startswith("INFO:") or not line.strip() or STRUCTLOG_INFO.search(line):
                    continue
                out.append(line.rstrip())
        return out


@contextmanager
def server(kind: str, args: argparse.Namespace, logdir: Path, tag: str, url: str | None = None) -> Iterator[Server]:
    """kind: "herald" (`herald serve`, HERALD_BENCH_BARE=1 too when it serves the floor) or "bare"."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    if kind == "bare":
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-bare", "127.0.0.1", str(port), args.log_level]
    else:
        cmd = [sys.executable, "-m", "herald.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        if not args.with_worker:
            cmd.insert(4, "--no-worker")
        env.update({"HERALD_DATABASE_URL": url or "", "HERALD_SECRET_KEY": SECRET,
                    "HERALD_SQLITE_SYNCHRONOUS": args.sqlite_synchronous, "HERALD_LOG_LEVEL": args.log_level})
        if kind == "floor":
            env["HERALD_BENCH_BARE"] = "1"
    log = logdir / f"{tag}-server.log"
    proc = popen(cmd, env, log, stdin=subprocess.DEVNULL)
    srv = Server(proc, port, log)
    try:
        wait_listening(srv)
        yield srv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def wait_listening(srv: Server) -> None:
    """Until GET /healthz answers 200 (the bare app answers 200 to anything)."""
    import http.client

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if srv.proc.poll() is not None:
            raise RuntimeError(f"server exited with {srv.proc.returncode} before listening:\n{srv.tail()}")
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not listening after {START_TIMEOUT:g}s:\n{srv.tail()}")
        time.sleep(0.05)


@contextmanager
def load_processes(cfgs: list[dict[str, Any]]) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = dict(os.environ)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for cfg in cfgs:
            proc = popen([sys.executable, str(Path(__file__).resolve()), "--load"], env, None,
                         stdin=subprocess.PIPE)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(cfg).encode() + b"\n")
            proc.stdin.flush()
            procs.append(proc)
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def read_line(proc: subprocess.Popen[bytes], timeout: float, what: str) -> str:
    """One line of a child's stdout, within `timeout` seconds."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise RuntimeError(f"{what}: nothing within {timeout:g}s")
    line = proc.stdout.readline().decode()
    if not line:
        raise RuntimeError(f"{what}: the process exited ({proc.wait()})")
    return line


# ---- one phase ------------------------------------------------------------------------------------
@dataclass
class Phase:
    target: str  # "bare" | "floor" | a backend key
    kind: str  # "track" | "batch"

    @property
    def path(self) -> str:
        if self.target == "floor":
            return "/bench/bare"
        return "/v1/track" if self.kind == "track" else "/v1/batch"


def run_phase(phase: Phase, backend: Backend | None, args: argparse.Namespace, logdir: Path,
              tag: str) -> dict[str, Any]:
    from engine import Meter

    url = backend.fresh() if backend is not None else None
    kind = "bare" if phase.target == "bare" else "floor" if phase.target == "floor" else "herald"
    connections = args.track_connections if phase.kind == "track" else args.batch_connections
    procs = min(args.load_procs, connections)
    anomalies: list[str] = []
    with server(kind, args, logdir, tag, url) as srv:
        cfgs = [{"host": "127.0.0.1", "port": srv.port, "path": phase.path, "kind": phase.kind,
                 "batch_size": args.batch_size, "connections": connections // procs + (i < connections % procs),
                 "salt": f"{uuid.uuid4().hex[:8]}{i:02d}", "write_key": backend.write_key if backend else "wk_bare"}
                for i in range(procs)]
        with load_processes(cfgs) as loads:
            for i, proc in enumerate(loads):
                ready = read_line(proc, START_TIMEOUT, f"{tag} load process {i}")
                if not ready.startswith("ready"):
                    raise RuntimeError(f"{tag} load process {i}: {ready!r}")
            start = time.monotonic() + 0.2
            warm, end = start + args.warmup, start + args.warmup + args.duration
            for proc in loads:
                assert proc.stdin is not None
                proc.stdin.write(f"go {start} {warm} {end}\n".encode())
                proc.stdin.flush()
            time.sleep(max(0.0, warm - time.monotonic()))
            server_meter, load_meter = Meter([srv.proc.pid]), Meter([p.pid for p in loads])
            time.sleep(max(0.0, end - time.monotonic()))
            server_use, load_use = server_meter.stop(), load_meter.stop()
            results = [json.loads(read_line(p, DRAIN_TIMEOUT + 30, f"{tag} load process {i} result"))
                       for i, p in enumerate(loads)]
        rows = backend.count(url) if kind == "herald" and backend is not None and url is not None else None
    total = {k: sum(r[k] for r in results) for k in ("requests", "sent_events", "accepted_events", "odd_bodies",
                                                     "lost", "lost_events", "reconnects", "window_requests",
                                                     "window_events")}
    statuses: dict[str, int] = {}
    for r in results:
        for code, n in r["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
        anomalies += [f"{tag}: {p}" for p in r["problems"]]
    if rows is not None:
        stored, distinct = rows
        low, high = total["accepted_events"], total["accepted_events"] + total["lost_events"]
        if not (low <= stored <= high and distinct == stored):
            anomalies.append(f"{tag}: events table holds {stored} rows ({distinct} distinct messageIds) but "
                             f"{low} events were accepted (+{total['lost_events']} of unknown fate)")
    if not total["window_events"]:
        raise RuntimeError(f"no event accepted while counting; answers by status: {statuses}; "
                           f"{'; '.join(anomalies[:5])}")
    if set(statuses) - {"200"}:
        anomalies.append(f"{tag}: answers by status: {statuses}")
    anomalies += [f"{tag} server: {line}" for line in srv.complaints()[:10]]
    # uvicorn re-raises the SIGTERM it handled once it has shut down: -15 is the graceful exit
    if srv.proc.returncode not in (0, -signal.SIGTERM):
        anomalies.append(f"{tag}: server exit status {srv.proc.returncode}")
    elif args.log_level in ("debug", "info") and "Application shutdown complete" not in srv.tail(5):
        anomalies.append(f"{tag}: the server did not log a complete shutdown:\n{srv.tail(5)}")
    window = args.duration
    server_cpu = server_use["worker_cpu_cores"]
    rate = total["window_events"] / window
    return {"target": phase.target, "kind": phase.kind, "rate": rate,
            "requests_per_s": total["window_requests"] / window, **total, "statuses": statuses,
            "stored": rows[0] if rows else None,
            "p50_ms": statistics.median([r["p50"] for r in results if r["p50"] is not None] or [float("nan")]) * 1e3,
            "p99_ms": max([r["p99"] for r in results if r["p99"] is not None] or [float("nan")]) * 1e3,
            "server_cpu_cores": server_cpu, "load_cpu_cores": load_use["worker_cpu_cores"],
            "machine_busy": server_use["machine_busy"],
            "server_cpu_us_per_event": server_cpu * 1e6 / rate if server_cpu is not None and rate else None,
            "connections": connections, "load_procs": procs, "anomalies": anomalies}


# ---- CSV -------------------------------------------------------------------------------------------
def csv_measure(rows: int, workdir: Path, synchronous: str) -> dict[str, Any]:
    """ingest_csv.measure runs the import in a child process of its own (its peak RSS is the
    import's) and reuses the generated file of the same size."""
    from ingest_csv import measure  # bench/ingest_csv.py

    extra = {} if synchronous == "FULL" else {"synchronous": synchronous}
    result: dict[str, Any] = measure(rows, workdir, **extra)
    return result


def csv_growth(r: dict[str, Any]) -> float:
    return float(r["peak_rss_mb"]) - float(r["rss_start_mb"])


# ---- driver ----------------------------------------------------------------------------------------
@dataclass
class Series:
    target: str
    kind: str
    label: str
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return [r["rate"] for r in self.runs]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    def median_of(self, key: str) -> float | None:
        values = [r[key] for r in self.runs if r.get(key) is not None]
        return statistics.median(values) if values else None


def fmt(x: float | None, spec: str = ",.0f") -> str:
    return "-" if x is None or x != x else format(x, spec)


def run_table(title: str, rows: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    header = (f"{'measurement':<34} {'events/s':>10} {'req/s':>9} {'vs bare':>7} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'srv CPU':>7} {'us/evt':>7} {'load CPU':>8} {'busy':>5}")
    out = [title, header, "-" * len(header)]
    bare = {r["kind"]: r["rate"] for r in rows if r["target"] == "bare"}
    for r in rows:
        ratio = r["rate"] / bare[r["kind"]] if bare.get(r["kind"]) else None
        out.append(f"{labels[r['target']] + ' ' + r['kind']:<34} {fmt(r['rate']):>10} {fmt(r['requests_per_s']):>9} "
                   f"{fmt(ratio, '.0%'):>7} {fmt(r['p50_ms'], '.1f'):>7} {fmt(r['p99_ms'], '.1f'):>7} "
                   f"{fmt(r['server_cpu_cores'], '.2f'):>7} {fmt(r['server_cpu_us_per_event'], '.0f'):>7} "
                   f"{fmt(r['load_cpu_cores'], '.2f'):>8} {fmt(r['machine_busy'], '.0%'):>5}")
    return out


def median_table(series: list[Series], runs: int) -> list[str]:
    header = (f"{'measurement':<34} {'events/s median [min-max]':<40} {'vs bare':>7} {'p99 ms':>7} "
              f"{'srv CPU':>7} {'us/evt':>7} {'load CPU':>8} {'busy':>5}")
    out = [header, "-" * len(header)]
    bare = {s.kind: s for s in series if s.target == "bare"}
    for s in series:
        ref = bare.get(s.kind)
        ratio = s.median / ref.median if ref and ref.median else None
        spread = f"{fmt(s.median)} [{fmt(min(s.rates))}-{fmt(max(s.rates))}]"
        if len(s.runs) < runs:
            spread += f" ({len(s.runs)} runs)"
        out.append(f"{s.label + ' ' + s.kind:<34} {spread:<40} {fmt(ratio, '.0%'):>7} "
                   f"{fmt(s.median_of('p99_ms'), '.1f'):>7} {fmt(s.median_of('server_cpu_cores'), '.2f'):>7} "
                   f"{fmt(s.median_of('server_cpu_us_per_event'), '.0f'):>7} "
                   f"{fmt(s.median_of('load_cpu_cores'), '.2f'):>8} {fmt(s.median_of('machine_busy'), '.0%'):>5}")
    return out


def goals(series: list[Series], csv: dict[str, Any] | None, primary: str | None) -> list[tuple[str, str, bool | None]]:
    """(goal, figure, met) — the event goals on SQLite (the first backend), PostgreSQL shown too."""
    found = {(s.target, s.kind): s for s in series}
    out: list[tuple[str, str, bool | None]] = []
    for s in series:
        if s.target in ("bare", "floor"):
            continue
        tag = "" if s.target == primary else f" ({s.label}, informative)"
        if s.kind == "batch":
            out.append((f"/v1/batch >= {GOAL_BATCH:,} events/s{tag}", f"{s.median:,.0f} events/s ({s.label})",
                        s.median >= GOAL_BATCH))
        else:
            bare = found.get(("bare", "track"))
            if bare is not None and bare.median > 0:
                ratio = s.median / bare.median
                out.append((f"/v1/track >= {GOAL_SINGLE_RATIO:.0%} of bare{tag}",
                            f"{ratio:.0%} ({s.median:,.0f} vs {bare.median:,.0f} requests/s, {s.label})",
                            ratio >= GOAL_SINGLE_RATIO))
    if csv is not None:
        if csv.get("error"):
            out.append((f"CSV import >= {GOAL_CSV:,} rows/s, flat memory", f"not measured: {csv['error']}", None))
        else:
            rate = statistics.median(r["rows_per_s"] for r in csv["runs"])
            out.append((f"CSV import >= {GOAL_CSV:,} rows/s", f"{rate:,.0f} rows/s ({csv['rows']:,} rows)",
                        rate >= GOAL_CSV))
            if csv.get("small"):
                full = statistics.median(csv_growth(r) for r in csv["runs"])
                small = csv_growth(csv["small"])
                out.append(("CSV import memory flat",
                            f"peak - start: {full:.0f} MB at {csv['rows']:,} rows, {small:.0f} MB at "
                            f"{csv['small']['rows']:,} rows (flat: within 1.5x + 32 MB)", full <= 1.5 * small + 32))
    return out


def report(series: list[Series], per_run: list[list[dict[str, Any]]], csv: dict[str, Any] | None,
           info: dict[str, Any], backends: dict[str, dict[str, Any]], skipped: dict[str, str],
           anomalies: list[str], args: argparse.Namespace, labels: dict[str, str], primary: str | None) -> None:
    m = info["machine"]
    print("Herald data intake: Segment-spec events per second; CSV import rows per second")
    print(f"machine: {m['cpus']} CPUs (nproc {m['nproc']}), {m['platform']}, Python {m['python']}, "
          f"SQLite {m['sqlite']}, PostgreSQL {m.get('postgresql', '-')}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in m['loadavg_start'] or [])} at start, "
          f"{' '.join(f'{x:.2f}' for x in m['loadavg_end'] or [])} at end")
    print(f"per phase: {args.warmup:g}s warm-up then {args.duration:g}s counted; {args.load_procs} load processes; "
          f"track: {args.track_connections} connections x 1 event; batch: {args.batch_connections} connections x "
          f"{args.batch_size} events; server: `herald serve{'' if args.with_worker else ' --no-worker'}`, "
          f"log level {args.log_level}; median of {args.runs} run(s) [min-max]")
    for name, b in backends.items():
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in b.items()))
    for name, why in skipped.items():
        print(f"{name}: skipped ({why})")
    for i, rows in enumerate(per_run, 1):
        print()
        print("\n".join(run_table(f"run {i}:", rows, labels)))
    if series:
        print(f"\nmedians of {args.runs} run(s):")
        print("\n".join(median_table(series, args.runs)))
    if csv is not None and not csv.get("error"):
        print(f"\nCSV import ({csv['rows']:,} rows, {len(csv['runs'])} run(s)):")
        for i, r in enumerate(csv["runs"], 1):
            print(f"  run {i}: {r['rows_per_s']:,.0f} rows/s, {float(r['seconds']):.1f}s, "
                  f"RSS {float(r['rss_start_mb']):.0f} MB at start, peak {float(r['peak_rss_mb']):.0f} MB")
        if csv.get("small"):
            s = csv["small"]
            print(f"  {s['rows']:,} rows: {s['rows_per_s']:,.0f} rows/s, RSS {float(s['rss_start_mb']):.0f} MB "
                  f"at start, peak {float(s['peak_rss_mb']):.0f} MB")
    print("""
events/s = events answered 200 (and accepted) during the counted seconds ÷ those seconds
vs bare  = ÷ the bare endpoint's figure for the same kind of request, same run (median ÷ median)
bare     = minimal ASGI app (read body, orjson.loads, 200 {"success":true}) on uvicorn, as `herald serve` runs it
floor    = Herald's server answering /bench/bare (FastAPI routing + middleware; no parsing, no database)
srv CPU  = CPU cores used by the server process; us/evt = its CPU microseconds per event
load CPU = CPU cores used by all the load processes; busy = how busy all the machine's cores were""")
    print("\ngoals:")
    for goal, figure, met in goals(series, csv, primary):
        verdict = "not measured" if met is None else "met" if met else "NOT met"
        print(f"  {verdict:<12} {goal}: {figure}")
    if anomalies:
        print(f"\nanomalies ({len(anomalies)}):")
        for a in anomalies[:40]:
            print(f"  {a}")
        if len(anomalies) > 40:
            print(f"  ... and {len(anomalies) - 40} more")
    else:
        print("\nanomalies: none (every answer 200 {\"success\":true}, every events table held exactly the "
              "accepted events, nothing in the servers' logs but INFO lines)")


def parse_args() -> argparse.Namespace:
    from herald.settings import Settings

    default = {name: f.default for name, f in Settings.model_fields.items()}
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, help="runs; the median is reported (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="1 run, 1s warm-up + 3s per phase, 100,000-row CSV (unless other options say otherwise)")
    p.add_argument("--duration", type=float, help="counted seconds per phase (default 10; 3 with --quick)")
    p.add_argument("--warmup", type=float, help="seconds of load before counting (default 3; 1 with --quick)")
    p.add_argument("--load-procs", type=int, default=2, help="load processes (default 2)")
    p.add_argument("--track-connections", type=int, default=128, help="connections for /v1/track (default 128)")
    p.add_argument("--batch-connections", type=int, default=16, help="connections for /v1/batch (default 16)")
    p.add_argument("--batch-size", type=int, default=100, help="events per /v1/batch request (default 100)")
    p.add_argument("--only", choices=["track", "batch"], help="measure one kind of request only")
    p.add_argument("--no-floor", action="store_true", help="skip the /bench/bare floor phases")
    p.add_argument("--with-worker", action="store_true",
                   help="`herald serve` with its in-process worker (resolves identities while ingesting)")
    p.add_argument("--log-level", default=default["log_level"], choices=["debug", "info", "warning", "error"],
                   help="HERALD_LOG_LEVEL / uvicorn log level of both servers (default info, as `herald serve`: "
                        "uvicorn writes an access log line per request)")
    p.add_argument("--postgres", metavar="URL", default=os.environ.get("HERALD_BENCH_DATABASE_URL"),
                   help="PostgreSQL URL (default $HERALD_BENCH_DATABASE_URL); a scratch schema is created and dropped")
    p.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    p.add_argument("--sqlite-synchronous", choices=["FULL", "NORMAL"], default=default["sqlite_synchronous"],
                   help="HERALD_SQLITE_SYNCHRONOUS (default FULL, Herald's default)")
    p.add_argument("--sqlite-dir", help="where the scratch SQLite files go (default: the temp dir)")
    p.add_argument("--csv-rows", type=int, help="rows of the CSV import (default 1,000,000; 100,000 with --quick)")
    p.add_argument("--csv-runs", type=int, help="CSV import runs (default: --runs)")
    p.add_argument("--skip-csv", action="store_true", help="no CSV import figure")
    p.add_argument("--skip-events", action="store_true", help="the CSV import figure only")
    p.add_argument("--log-dir", help="keep the servers' logs here (default: a temp dir, deleted)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = p.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    args.csv_rows = args.csv_rows or (100_000 if args.quick else 1_000_000)
    args.csv_runs = args.csv_runs or args.runs
    if min(args.runs, args.load_procs, args.track_connections, args.batch_connections, args.batch_size,
           args.csv_rows, args.csv_runs) < 1 or args.duration <= 0 or args.warmup < 0:
        p.error("counts and durations must be positive")
    return args


def interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwind: stop the servers, drop the scratch schema


def measure_events(args: argparse.Namespace, logdir: Path, backends: dict[str, Backend], labels: dict[str, str],
                   anomalies: list[str]) -> tuple[list[Series], list[list[dict[str, Any]]]]:
    kinds = [args.only] if args.only else ["track", "batch"]
    targets = ["bare", *backends, *([] if args.no_floor else ["floor"])]
    series = {(t, k): Series(t, k, labels[t]) for k in kinds for t in targets}
    floor_backend = next(iter(backends.values()), None)
    per_run: list[list[dict[str, Any]]] = []
    for run in range(1, args.runs + 1):
        rows = []
        for kind in kinds:
            for target in targets:
                if target == "floor" and floor_backend is None:
                    continue
                tag = f"run{run}-{target}-{kind}"
                say(f"run {run}/{args.runs}: {labels[target]} {kind} ...")
                backend = floor_backend if target == "floor" else backends.get(target)
                try:
                    result = run_phase(Phase(target, kind), backend, args, logdir, tag)
                except Exception as exc:
                    anomalies.append(f"{tag}: FAILED: {type(exc).__name__}: {exc}")
                    say(f"  FAILED: {exc}")
                    continue
                anomalies.extend(result["anomalies"])
                series[(target, kind)].runs.append(result)
                rows.append(result)
                say(f"  {result['rate']:,.0f} events/s, {result['requests_per_s']:,.0f} requests/s, "
                    f"server {fmt(result['server_cpu_cores'], '.2f')} cores, "
                    f"load {fmt(result['load_cpu_cores'], '.2f')} cores, busy {fmt(result['machine_busy'], '.0%')}")
        per_run.append(rows)
    return [s for s in series.values() if s.runs], per_run


def measure_csv(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    if not (BENCH / "ingest_csv.py").exists():
        return {"error": "bench/ingest_csv.py is not there"}
    out: dict[str, Any] = {"rows": args.csv_rows, "runs": []}
    try:
        small = max(10_000, args.csv_rows // 10)
        if small < args.csv_rows:
            say(f"CSV import: {small:,} rows ...")
            out["small"] = csv_measure(small, workdir, args.sqlite_synchronous)
            say(f"  {out['small']['rows_per_s']:,.0f} rows/s")
        for run in range(1, args.csv_runs + 1):
            say(f"CSV import run {run}/{args.csv_runs}: {args.csv_rows:,} rows ...")
            result = csv_measure(args.csv_rows, workdir, args.sqlite_synchronous)
            out["runs"].append(result)
            say(f"  {result['rows_per_s']:,.0f} rows/s, peak RSS {float(result['peak_rss_mb']):.0f} MB")
    except Exception as exc:
        if not out["runs"]:
            return {"error": f"{type(exc).__name__}: {exc}"}
        out["warning"] = f"{type(exc).__name__}: {exc}"
    return out


def main() -> int:
    from engine import machine_info

    args = parse_args()
    signal.signal(signal.SIGTERM, interrupted)
    info: dict[str, Any] = {"machine": machine_info()}
    backend_info: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    anomalies: list[str] = []
    labels = {"bare": "bare", "floor": "floor (Herald /bench/bare)"}
    series: list[Series] = []
    per_run: list[list[dict[str, Any]]] = []
    csv: dict[str, Any] | None = None
    primary: str | None = None
    failed = False
    with ExitStack() as stack:
        logdir = Path(args.log_dir) if args.log_dir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="herald-bench-ingest-logs-")))
        logdir.mkdir(parents=True, exist_ok=True)
        backends: dict[str, Backend] = {}
        if not args.skip_events:
            if args.no_sqlite:
                skipped["SQLite"] = "--no-sqlite"
            else:
                b = stack.enter_context(sqlite_backend(args.sqlite_synchronous, args.sqlite_dir))
                backends[b.key] = b
            if args.postgres:
                try:
                    b = stack.enter_context(postgres_backend(args.postgres))
                    backends[b.key] = b
                    info["machine"]["postgresql"] = b.info["server_version"]
                except Exception as exc:
                    failed = True
                    anomalies.append(f"PostgreSQL: FAILED: {type(exc).__name__}: {exc}")
            else:
                skipped["PostgreSQL"] = "no URL: pass --postgres URL or set HERALD_BENCH_DATABASE_URL"
            for key, b in backends.items():
                labels[key] = b.name
                backend_info[b.name] = b.info
            primary = next(iter(backends), None)
            series, per_run = measure_events(args, logdir, backends, labels, anomalies)
        if args.skip_csv:
            skipped["CSV import"] = "--skip-csv"
        else:
            csv = measure_csv(args, Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="herald-bench-csv-", dir=args.sqlite_dir))))
            if csv.get("error"):
                anomalies.append(f"CSV import: {csv['error']}")
            elif csv.get("warning"):
                anomalies.append(f"CSV import: {csv['warning']}")
    info["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    failed = failed or any("FAILED" in a for a in anomalies)
    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("json", "postgres")}
        print(json.dumps({"machine": info["machine"], "config": config, "backends": backend_info,
                          "skipped": skipped, "series": [{"target": s.target, "kind": s.kind, "label": s.label,
                                                          "median": s.median, "rates": s.rates, "runs": s.runs}
                                                         for s in series],
                          "csv": csv, "goals": [{"goal": g, "figure": f, "met": m}
                                                for g, f, m in goals(series, csv, primary)],
                          "anomalies": anomalies}, indent=2, default=str))
    else:
        report(series, per_run, csv, info, backend_info, skipped, anomalies, args, labels, primary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))  # engine.py (shared helpers), ingest_csv.py
    if sys.argv[1:2] == ["--load"]:
        run_load_process()
    elif sys.argv[1:2] == ["--serve-bare"]:
        run_bare_server(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(main())
