"""Work-engine throughput: `diag.noop` jobs claimed and completed per second.

For each backend (SQLite always; PostgreSQL when a URL is given) and 1 and 2 real worker
processes (`python -m herald.cli worker`, the production entry point):

  1. start the workers against an empty queue and wait until every one has logged
     "worker started" and a warm-up batch has been completed (imports, connections, prepared
     statements and thread pools are then out of the way);
  2. enqueue N `diag.noop` jobs in one transaction, due just after its commit, and time from
     that moment to the last job's `finished_at` (the bench polls every 50 ms, from a separate
     connection that takes no lock, only to know when to stop waiting);
  3. SIGTERM the workers, wait for them to drain and exit, check their logs for warnings and
     the queue for jobs left unfinished.

Reference, same machine, same backend, same run: the floor cost of the same database work
without the engine — this process looping "claim a batch (herald.db.jobs.claim); settle it
completed (herald.db.jobs.settle)" in one transaction per batch of the workers' batch size,
which is exactly the SQL of one worker cycle minus asyncio, threads, handlers and bookkeeping.
ratio = engine ÷ reference: below 1 is what the engine's machinery costs; above 1 (possible
with 2 processes on PostgreSQL) is what running two workers side by side gains.

The machines are shared and noisy: each figure is the median of --runs runs (min and max
shown); the reference and the engine runs are interleaved so drifting load hits both alike.
CPU microseconds per job (worker processes vs the reference process) are printed too: they
move much less with the neighbours' load than jobs per second do.

    .venv/bin/python bench/engine.py                         # SQLite only (PostgreSQL skipped)
    HERALD_BENCH_DATABASE_URL=postgresql://127.0.0.1/test .venv/bin/python bench/engine.py
    .venv/bin/python bench/engine.py --quick --json
    .venv/bin/python bench/engine.py --sqlite-synchronous NORMAL
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.engine import make_url

from herald.db import jobs as jobs_db
from herald.db.engine import make_engine
from herald.db.migrate import upgrade
from herald.db.tables import jobs
from herald.domain.jobs import JobState
from herald.settings import Settings

KIND = "diag.noop"
SECRET = "bench-" + "0" * 58  # HERALD_SECRET_KEY for the workers (required with PostgreSQL)
REPO = Path(__file__).resolve().parent.parent
DEFAULT = {name: f.default for name, f in Settings.model_fields.items()}
POLL = 0.05  # how often the bench looks at the queue while timing
START_TIMEOUT = 90.0  # worker start-up (import, connect, schema check) on a loaded machine
STOP_TIMEOUT = 30.0


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ---- machine ---------------------------------------------------------------------------------
def cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine, from /proc/stat (Linux)."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by a process, from /proc/<pid>/stat (Linux)."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Meter:
    """Wall time, CPU of some processes, and how busy the whole machine was, over a window."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.machine0 = cpu_times()
        self.cpu0 = [process_cpu(p) for p in pids]
        self.self0 = time.process_time()
        self.t0 = time.perf_counter()

    def stop(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self.t0
        cpu1 = [process_cpu(p) for p in self.pids]
        machine1 = cpu_times()
        worker_cpu = None
        if self.pids and None not in self.cpu0 and None not in cpu1:
            worker_cpu = sum(b - a for a, b in zip(self.cpu0, cpu1, strict=True) if a is not None and b is not None)
        busy = None
        if self.machine0 and machine1 and machine1[1] > self.machine0[1]:
            busy = (machine1[0] - self.machine0[0]) / (machine1[1] - self.machine0[1])
        return {
            "seconds": wall,
            "bench_cpu_cores": (time.process_time() - self.self0) / wall,
            "worker_cpu_cores": None if worker_cpu is None else worker_cpu / wall,
            "machine_busy": busy,
        }


def machine_info() -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpus": os.cpu_count(), "nproc": affinity, "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version, "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# ---- backends --------------------------------------------------------------------------------
@dataclass
class Backend:
    name: str  # as printed in the table
    key: str  # short, for file names and JSON
    url: str  # what the workers get as HERALD_DATABASE_URL
    engine: Engine  # the bench's own writes and the reference loop (herald's make_engine)
    unfinished: Callable[[], int]  # no-op jobs still available or running; must not take locks
    info: dict[str, Any] = field(default_factory=dict)
    after_reset: Callable[[], None] = lambda: None

    def reset(self) -> None:
        """An empty queue; only called while no worker runs."""
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(text("TRUNCATE jobs"))  # no dead rows or index entries carried over
            else:
                conn.execute(jobs.delete())
        self.after_reset()

    def enqueue(self, n: int, *, delay: float = 0.0) -> datetime:
        """Insert n no-op jobs in one transaction, due `delay` seconds from now; returns when
        they became claimable: the later of their due time and the commit."""
        due = datetime.now(UTC) + timedelta(seconds=delay)
        with self.engine.begin() as conn:
            jobs_db.enqueue_many(conn, KIND, ({} for _ in range(n)), now=due)
        return max(due, datetime.now(UTC))

    def others(self) -> list[dict[str, Any]]:
        """Jobs other than the no-ops (the workers' periodic maintenance) that did not complete."""
        with self.engine.begin() as conn:
            rows = conn.execute(select(jobs.c.id, jobs.c.kind, jobs.c.state, jobs.c.attempts, jobs.c.due_at,
                                       jobs.c.lease_owner, jobs.c.lease_expires_at, jobs.c.last_error)
                                .where(jobs.c.kind != KIND, jobs.c.state != JobState.COMPLETED.value)).mappings()
            return [dict(r) for r in rows]

    def finished_span(self, after: datetime) -> tuple[datetime, datetime, int]:
        """Of the no-op jobs finished after `after`: the first and last `finished_at` (the `now` of
        the transaction that settled them), and how many jobs the first settle wrote."""
        with self.engine.begin() as conn:
            since = jobs.c.kind == KIND, jobs.c.finished_at > after
            first, last = conn.execute(select(func.min(jobs.c.finished_at), func.max(jobs.c.finished_at))
                                       .where(*since)).one()
            if first is None:
                raise RuntimeError("no job has finished")
            n_first = conn.execute(select(func.count()).where(*since, jobs.c.finished_at == first)).scalar_one()
        return first, last, n_first

    def counts(self) -> dict[str, int]:
        with self.engine.begin() as conn:
            return noop_counts(conn)


def noop_counts(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(jobs.c.state, func.count()).where(jobs.c.kind == KIND).group_by(jobs.c.state))
    return {state: n for state, n in rows}


# Polled every 50 ms: the first is index-only (ix_jobs_finished); the second, exact but reading
# rows, only once few are left (the workers also run their periodic maintenance job).
UNFINISHED = "SELECT count(*) FROM jobs WHERE state IN ('available', 'running')"
UNFINISHED_NOOP = UNFINISHED + f" AND kind = '{KIND}'"


def unfinished_noop(count: Callable[[str], int]) -> int:
    left = count(UNFINISHED)
    return count(UNFINISHED_NOOP) if left <= 10 else left


@contextmanager
def sqlite_backend(synchronous: str, directory: str | None) -> Iterator[Backend]:
    with tempfile.TemporaryDirectory(prefix="herald-bench-", dir=directory) as tmp:
        path = Path(tmp) / "bench.db"
        url = f"sqlite:///{path}"
        engine = make_engine(url, sqlite_synchronous=synchronous)
        # A plain autocommit connection: herald's engine opens every transaction with BEGIN
        # IMMEDIATE (the write lock), which would make the bench's polls compete with the workers.
        reader = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        try:
            upgrade(engine)
            with engine.connect() as conn:
                sync = conn.exec_driver_sql("PRAGMA synchronous").scalar_one()
                journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar_one()
            sync_name = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, str(sync))

            def unfinished() -> int:
                return unfinished_noop(lambda sql: int(reader.execute(sql).fetchone()[0]))

            def checkpoint() -> None:  # every run starts with an empty WAL
                reader.execute("PRAGMA wal_checkpoint(TRUNCATE)")

            yield Backend(f"SQLite sync={sync_name}", f"sqlite-{sync_name.lower()}", url, engine, unfinished,
                          {"file": str(path), "filesystem": filesystem(path), "journal_mode": journal,
                           "synchronous": sync_name, "version": sqlite3.sqlite_version}, checkpoint)
        finally:
            reader.close()
            engine.dispose()


def filesystem(path: Path) -> str:
    """The mount point and type holding `path` (fsync cost depends on it), from /proc/mounts."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    best = max((m for m in mounts if str(path).startswith(m[0].rstrip("/") + "/") or m[0] == "/"),
               key=lambda m: len(m[0]), default=None)
    return f"{best[1]} at {best[0]}" if best else "unknown"


def with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}', safe='')}"


@contextmanager
def postgres_backend(base_url: str) -> Iterator[Backend]:
    schema = f"herald_bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(base_url, pool_size=1)
    engine: Engine | None = None
    created = False
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            created = True
            info = {key: conn.execute(text(f"SHOW {key}")).scalar_one()
                    for key in ("server_version", "synchronous_commit", "fsync", "shared_buffers")}
        url = with_search_path(base_url, schema)
        engine = make_engine(url)
        upgrade(engine)
        poller = engine.connect().execution_options(isolation_level="AUTOCOMMIT")

        def unfinished() -> int:
            return unfinished_noop(lambda sql: int(poller.execute(text(sql)).scalar_one()))

        try:
            yield Backend(f"PostgreSQL {info['server_version'].split()[0]}", "postgresql", url, engine, unfinished,
                          {**info, "url": make_url(base_url).render_as_string(hide_password=True),
                           "schema": schema})
        finally:
            poller.close()
    finally:
        if engine is not None:
            engine.dispose()
        if created:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def timing(backend: Backend, n: int, start: datetime) -> dict[str, float]:
    """Times from the jobs' own `finished_at` stamps (same clock, no polling granularity).

    seconds: start (the jobs claimable) -> the last settle; rate = n / seconds (the headline figure).
    first_settle_after: start -> the first settle (start latency, e.g. an idle worker's next poll).
    steady_rate: jobs settled between the first and the last settle ÷ that span (no start latency)."""
    first, last, n_first = backend.finished_span(start)
    seconds = (last - start).total_seconds()
    span = (last - first).total_seconds()
    return {"rate": n / seconds, "seconds": seconds, "first_settle_after": (first - start).total_seconds(),
            "steady_rate": (n - n_first) / span if span > 0 else float("nan")}


# ---- the reference: the same SQL, no engine ---------------------------------------------------------
def reference_run(backend: Backend, n: int, batch: int) -> dict[str, Any]:
    backend.reset()
    start = backend.enqueue(n)
    lease = timedelta(seconds=DEFAULT["job_lease_seconds"])
    done = 0
    meter = Meter([])
    while done < n:
        with backend.engine.begin() as conn:
            now = datetime.now(UTC)
            claimed = jobs_db.claim(conn, owner="bench-reference", limit=batch, now=now, lease=lease)
            jobs_db.settle(conn, [jobs_db.Finished(j.id, j.attempt, JobState.COMPLETED) for j in claimed], now=now)
        if not claimed:
            raise RuntimeError(f"reference: only {done} of {n} jobs found")
        done += len(claimed)
    usage = meter.stop()
    counts = backend.counts()
    if counts != {JobState.COMPLETED.value: n}:
        raise RuntimeError(f"reference: expected {n} completed, found {counts}")
    return {**usage, "seconds_wall": usage["seconds"], **timing(backend, n, start)}


# ---- the engine: real worker processes ----------------------------------------------------------
@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log: Path

    def records(self) -> list[dict[str, Any] | str]:
        """The worker's log lines: JSON records (HERALD_LOG_JSON) or raw text (e.g. a traceback)."""
        out: list[dict[str, Any] | str] = []
        with suppress(OSError):
            for line in self.log.read_text(errors="replace").splitlines():
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                out.append(record if isinstance(record, dict) else line)
        return out

    def tail(self, lines: int = 15) -> str:
        with suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def worker_env(backend: Backend, args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}  # nothing leaks in
    env.update({
        "HERALD_DATABASE_URL": backend.url,
        "HERALD_SECRET_KEY": SECRET,
        "HERALD_SQLITE_SYNCHRONOUS": args.sqlite_synchronous,
        "HERALD_WORKER_BATCH_SIZE": str(args.batch_size),
        "HERALD_WORKER_CONCURRENCY": str(args.concurrency),
        "HERALD_WORKER_POLL_SECONDS": str(args.poll_seconds),
        "HERALD_LOG_LEVEL": "info",
        "HERALD_LOG_JSON": "true",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM it (drain, exit) if the bench dies, even by SIGKILL (Linux)."""
    with suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextmanager
def worker_processes(backend: Backend, count: int, args: argparse.Namespace, logdir: Path,
                     tag: str) -> Iterator[list[WorkerProcess]]:
    env = worker_env(backend, args)
    workers: list[WorkerProcess] = []
    try:
        for i in range(count):
            log = logdir / f"{tag}-worker{i}.log"
            with log.open("wb") as fh:
                proc = subprocess.Popen([sys.executable, "-m", "herald.cli", "worker"], env=env, cwd=REPO,
                                        stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                        preexec_fn=die_with_parent if sys.platform == "linux" else None)
            workers.append(WorkerProcess(proc, log))
        yield workers
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for w in workers:
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(timeout=10)


def wait_started(workers: list[WorkerProcess]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        pending = [w for w in workers
                   if not any(isinstance(r, dict) and r.get("event") == "worker started" for r in w.records())]
        if not pending:
            return
        for w in pending:
            if w.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {w.proc.returncode} before starting:\n{w.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker not started after {START_TIMEOUT:g}s:\n{pending[0].tail()}")
        time.sleep(0.05)


def wait_drained(backend: Backend, workers: list[WorkerProcess], timeout: float, what: str) -> float:
    """Poll until no job is available or running; returns perf_counter() when that was seen."""
    deadline = time.perf_counter() + timeout
    while True:
        left = backend.unfinished()
        now = time.perf_counter()
        if left == 0:
            return now
        dead = [w for w in workers if w.proc.poll() is not None]
        if dead:
            raise RuntimeError(f"{what}: a worker exited ({dead[0].proc.returncode}) with {left} jobs left:\n"
                               f"{dead[0].tail()}")
        if now > deadline:
            raise RuntimeError(f"{what}: {left} jobs still unfinished after {timeout:g}s; {backend.counts()}")
        time.sleep(POLL)


def engine_run(backend: Backend, count: int, n: int, args: argparse.Namespace, logdir: Path,
               tag: str) -> dict[str, Any]:
    backend.reset()
    warmup = 10 * args.batch_size * count  # ≥10 cycles per process: psycopg prepares after 5 uses
    with worker_processes(backend, count, args, logdir, tag) as workers:
        wait_started(workers)
        t = time.perf_counter()
        backend.enqueue(warmup)
        lead = 0.2 + 2 * (time.perf_counter() - t) * n / warmup
        wait_drained(backend, workers, args.timeout, f"{tag} warm-up")
        # The N jobs are due a little after the commit (`lead`, twice the expected insert time):
        # the clock starts when they become claimable with the workers polling as usual, not
        # stuck behind the insert (on SQLite it holds the write lock; a worker waiting for it
        # sleeps in SQLite's busy handler, up to 100 ms at a time, an artefact of the bench).
        start = backend.enqueue(n, delay=lead)
        time.sleep(max(0.0, (start - datetime.now(UTC)).total_seconds()))
        meter = Meter([w.proc.pid for w in workers])
        seen = wait_drained(backend, workers, args.timeout, tag)
        usage = meter.stop()
    counts = backend.counts()
    if counts != {JobState.COMPLETED.value: warmup + n}:
        raise RuntimeError(f"{tag}: expected {warmup + n} completed, found {counts}")
    anomalies = [f"{tag}: {o['kind']} job {o['id']} left {o['state']}: {o}" for o in backend.others()]
    timed, polled = timing(backend, n, start), seen - meter.t0
    if not 0 < timed["seconds"] <= polled + 0.01:
        anomalies.append(f"{tag}: clock disagreement: last finished_at {timed['seconds']:.3f}s after the start, "
                         f"but seen drained after {polled:.3f}s")
    usage.update(timed, seconds_polled=polled, lead_seconds=lead)
    stopped: list[dict[str, Any]] = []
    for i, w in enumerate(workers):
        if w.proc.returncode != 0:
            anomalies.append(f"{tag} worker{i}: exit status {w.proc.returncode}")
        for r in w.records():
            if isinstance(r, str):
                anomalies.append(f"{tag} worker{i}: {r}")
            elif r.get("event") == "worker stopped":
                stopped.append(r)
            elif r.get("level") not in ("info", "debug"):
                anomalies.append(f"{tag} worker{i}: {r.get('level')}: {r.get('event')} "
                                 + json.dumps({k: v for k, v in r.items() if k not in ("event", "level")}))
    if len(stopped) != count:
        anomalies.append(f"{tag}: {count - len(stopped)} worker(s) did not log 'worker stopped'")
    return {**usage, "warmup_jobs": warmup,
            "completed_per_process": [r.get("completed") for r in stopped],
            "fenced_off": sum(int(r.get("fenced_off") or 0) for r in stopped), "anomalies": anomalies}


# ---- driver ------------------------------------------------------------------------------------
@dataclass
class Series:
    backend: str
    measurement: str  # "reference" | "engine"
    workers: int  # processes (the reference is one process, no worker)
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


def bench_backend(backend: Backend, args: argparse.Namespace, logdir: Path,
                  anomalies: list[str]) -> list[Series]:
    reference = Series(backend.name, "reference", 1)
    engines = {k: Series(backend.name, "engine", k) for k in args.workers}
    for run in range(1, args.runs + 1):
        say(f"{backend.name}: run {run}/{args.runs}: reference ...")
        reference.runs.append(reference_run(backend, args.jobs, args.batch_size))
        say(f"  reference {reference.runs[-1]['rate']:,.0f} jobs/s")
        for k, series in engines.items():
            tag = f"{backend.key}-{k}proc-run{run}"
            result = engine_run(backend, k, args.jobs, args, logdir, tag)
            anomalies.extend(result["anomalies"])
            series.runs.append(result)
            say(f"  engine, {k} process{'es' if k > 1 else ''}: {result['rate']:,.0f} jobs/s "
                f"(per process {result['completed_per_process']}, fenced off {result['fenced_off']})")
    return [reference, *engines.values()]


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def fmt_spread(s: Series) -> str:
    return f"{fmt_rate(s.median)} [{fmt_rate(min(s.rates))}-{fmt_rate(max(s.rates))}]"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def cpu_us_per_job(s: Series, key: str) -> float | None:
    values = [r[key] * 1e6 / r["rate"] for r in s.runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def num(x: float | None, spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def report(results: list[Series], info: dict[str, Any], backends: dict[str, dict[str, Any]],
           skipped: dict[str, str], anomalies: list[str], args: argparse.Namespace) -> None:
    m = info["machine"]
    print("Herald work engine: no-op jobs claimed + completed per second")
    print(f"machine: {m['cpus']} CPUs (nproc {m['nproc']}), {m['platform']}, Python {m['python']}, "
          f"SQLite {m['sqlite']}, PostgreSQL {m.get('postgresql', '-')}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in m['loadavg_start'] or [])} at start, "
          f"{' '.join(f'{x:.2f}' for x in m['loadavg_end'] or [])} at end")
    print(f"per run: {args.jobs:,} `{KIND}` jobs enqueued in one transaction; median of {args.runs} run(s) "
          f"[min-max]; workers: batch {args.batch_size}, concurrency {args.concurrency}, poll {args.poll_seconds:g}s")
    for name, b in backends.items():
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in b.items()))
    for name, why in skipped.items():
        print(f"{name}: skipped ({why})")
    print()
    header = (f"{'backend':<20} {'workers':>7}  {'engine jobs/s':<25} {'reference jobs/s':<25} {'ratio':>5}  "
              f"{'steady':>6}  {'CPU us/job eng/ref':>18}  {'busy':>4}")
    print(header)
    print("-" * len(header))
    refs = {s.backend: s for s in results if s.measurement == "reference"}
    for s in results:
        ref = refs.get(s.backend)
        if s.measurement != "engine" or ref is None:
            continue
        steady = statistics.median(r["steady_rate"] for r in s.runs) / statistics.median(
            r["steady_rate"] for r in ref.runs)
        cpu = f"{num(cpu_us_per_job(s, 'worker_cpu_cores'))} / {num(cpu_us_per_job(ref, 'bench_cpu_cores'))}"
        print(f"{s.backend:<20} {s.workers:>7}  {fmt_spread(s):<25} {fmt_spread(ref):<25} "
              f"{s.median / ref.median:>5.2f}  {steady:>6.2f}  {cpu:>18}  {pct(s.median_of('machine_busy')):>4}")
    print(f"""
engine    = N ÷ seconds from when the N jobs became claimable (just after their commit) to the last one's
            finished_at, with K `herald worker` processes already started and warmed up
reference = this process looping claim({args.batch_size}) + settle(completed), one transaction per batch
            (herald.db.jobs, no engine), timed the same way; the same reference figures for 1 and 2 workers
ratio     = engine median ÷ reference median (same backend, same run)
steady    = the same ratio without the start latency: jobs ÷ seconds between the first and the last settle
CPU       = CPU microseconds per job of the worker processes / of the reference process (the database
            server's CPU is not in it: for PostgreSQL that is a separate process; SQLite runs inside)
busy      = how busy all the machine's cores were during the engine runs (the database, other tenants)""")
    print("\ndetails (median over runs):")
    for s in results:
        if s.measurement == "engine":
            mid = sorted(s.runs, key=lambda r: r["rate"])[len(s.runs) // 2]
            latency = num(s.median_of("first_settle_after"), ".3f")
            print(f"  {s.backend}, {s.workers} worker(s): first settle {latency}s "
                  f"after the jobs became due; jobs completed per process (incl. warm-up) in the median run: "
                  f"{mid['completed_per_process']}; fenced off: {sum(r['fenced_off'] for r in s.runs)}")
    if anomalies:
        print(f"\nanomalies ({len(anomalies)}):")
        for a in anomalies[:40]:
            print(f"  {a}")
        if len(anomalies) > 40:
            print(f"  ... and {len(anomalies) - 40} more")
    else:
        print("\nanomalies: none (every worker exited 0, no warning or error in their logs, every job completed)")


def to_json(results: list[Series], info: dict[str, Any], backends: dict[str, dict[str, Any]],
            skipped: dict[str, str], anomalies: list[str], args: argparse.Namespace) -> str:
    refs = {s.backend: s for s in results if s.measurement == "reference"}
    rows = []
    for s in results:
        ref = refs.get(s.backend)
        row: dict[str, Any] = {
            "backend": s.backend, "measurement": s.measurement, "workers": s.workers,
            "median": s.median, "min": min(s.rates), "max": max(s.rates), "rates": s.rates, "runs": s.runs,
        }
        if s.measurement == "engine" and ref is not None:
            row["reference_median"] = ref.median
            row["ratio"] = s.median / ref.median
            row["paired_ratios"] = [e / r for e, r in zip(s.rates, ref.rates, strict=False)]
        rows.append(row)
    config = {"jobs": args.jobs, "runs": args.runs, "batch_size": args.batch_size,
              "concurrency": args.concurrency, "poll_seconds": args.poll_seconds,
              "sqlite_synchronous": args.sqlite_synchronous, "workers": args.workers}
    return json.dumps({"machine": info["machine"], "config": config, "backends": backends, "skipped": skipped,
                       "results": rows, "anomalies": anomalies}, indent=2, default=str)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, help="jobs per run (default 20000; 5000 with --quick)")
    p.add_argument("--runs", type=int, help="runs per measurement; the median is reported (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="5000 jobs, 1 run (unless --jobs/--runs say otherwise)")
    p.add_argument("--postgres", metavar="URL",
                   default=os.environ.get("HERALD_BENCH_DATABASE_URL") or os.environ.get("HERALD_TEST_DATABASE_URL"),
                   help="PostgreSQL URL (default $HERALD_BENCH_DATABASE_URL, else $HERALD_TEST_DATABASE_URL); "
                        "a scratch schema is created and dropped")
    p.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    p.add_argument("--sqlite-synchronous", choices=["FULL", "NORMAL"], default=DEFAULT["sqlite_synchronous"],
                   help="PRAGMA synchronous for SQLite (default FULL, Herald's default)")
    p.add_argument("--sqlite-dir", help="where the scratch SQLite file goes (default: the temp dir)")
    p.add_argument("--workers", default="1,2", help="worker process counts (default 1,2)")
    p.add_argument("--batch-size", type=int, default=DEFAULT["worker_batch_size"],
                   help="HERALD_WORKER_BATCH_SIZE for the workers and the reference's batch")
    p.add_argument("--concurrency", type=int, default=DEFAULT["worker_concurrency"],
                   help="HERALD_WORKER_CONCURRENCY for the workers")
    p.add_argument("--poll-seconds", type=float, default=0.05,
                   help="HERALD_WORKER_POLL_SECONDS: how soon an idle worker notices the enqueue (default 0.05)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds allowed for one measured run")
    p.add_argument("--log-dir", help="keep the worker logs here (default: a temp dir, deleted)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = p.parse_args()
    args.jobs = args.jobs or (5000 if args.quick else 20_000)
    args.runs = args.runs or (1 if args.quick else 3)
    args.workers = [int(x) for x in args.workers.split(",") if x.strip()]
    if args.jobs < 1 or args.runs < 1 or not args.workers or min(args.workers) < 1:
        p.error("--jobs, --runs and --workers must be positive")
    return args


def interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwind: stop the workers, drop the scratch schema


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, interrupted)
    info: dict[str, Any] = {"machine": machine_info()}
    results: list[Series] = []
    backends: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    anomalies: list[str] = []
    failed = False
    plans: list[tuple[str, Callable[[], Any]]] = []
    if args.no_sqlite:
        skipped["SQLite"] = "--no-sqlite"
    else:
        plans.append(("SQLite", lambda: sqlite_backend(args.sqlite_synchronous, args.sqlite_dir)))
    if args.postgres:
        plans.append(("PostgreSQL", lambda: postgres_backend(args.postgres)))
    else:
        skipped["PostgreSQL"] = "no URL: pass --postgres URL or set HERALD_BENCH_DATABASE_URL"
    with ExitStack() as stack:
        logdir = Path(args.log_dir) if args.log_dir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="herald-bench-logs-")))
        logdir.mkdir(parents=True, exist_ok=True)
        for label, open_backend in plans:
            try:
                with open_backend() as backend:
                    backends[backend.name] = backend.info
                    if label == "PostgreSQL":
                        info["machine"]["postgresql"] = backend.info["server_version"]
                    results += bench_backend(backend, args, logdir, anomalies)
            except Exception as exc:  # report what we have, and why the rest is missing
                failed = True
                anomalies.append(f"{label}: FAILED: {type(exc).__name__}: {exc}")
                say(f"{label}: FAILED: {exc}")
    info["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results = [s for s in results if s.runs]
    if args.json:
        print(to_json(results, info, backends, skipped, anomalies, args))
    else:
        report(results, info, backends, skipped, anomalies, args)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
