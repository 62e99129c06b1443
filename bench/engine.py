"""Work-engine throughput: no-op jobs claimed and completed per second.

For each backend (SQLite; PostgreSQL when a URL is given) and 1 and 2 real `herald worker`
processes: enqueue N `diag.noop` jobs in one transaction into a queue the (already running,
warmed-up) workers watch, and time from that commit until the last job is `completed`.

Reference, same machine, same run: the floor cost of the same database work without the
engine — one process looping "claim a batch; settle it completed" (db/jobs.py, one transaction
per batch, exactly the SQL of one worker cycle) with no asyncio, threads or handlers. The ratio
engine ÷ reference is what the engine's machinery costs (or, with two processes, gains).

Machines are shared and noisy: every figure is the median of --runs runs, with min and max.

    python bench/engine.py                       # SQLite only
    HERALD_BENCH_DATABASE_URL=postgresql://127.0.0.1/test python bench/engine.py
    python bench/engine.py --quick --json
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, text

from herald.db import jobs as jobs_db
from herald.db.engine import make_engine
from herald.db.migrate import upgrade
from herald.domain.jobs import JobState

SECRET = "bench-" + "0" * 58
BATCH = 100  # the worker's default HERALD_WORKER_BATCH_SIZE


@dataclass
class Result:
    backend: str
    what: str  # "engine, 1 process" | "engine, 2 processes" | "reference"
    rates: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


# ---- databases -----------------------------------------------------------------------------
@dataclass
class Backend:
    name: str
    url: str
    engine: Engine
    count_completed: Callable[[], int]


@contextmanager
def sqlite_backend(synchronous: str) -> Iterator[Backend]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        url = f"sqlite:///{path}"
        engine = make_engine(url, sqlite_synchronous=synchronous)
        upgrade(engine)
        reader = sqlite3.connect(path, check_same_thread=False)  # WAL: reads never wait on writers

        def count() -> int:
            return int(reader.execute("SELECT count(*) FROM jobs WHERE state = 'completed'").fetchone()[0])

        try:
            yield Backend(f"SQLite (synchronous={synchronous})", url, engine, count)
        finally:
            reader.close()
            engine.dispose()


@contextmanager
def postgres_backend(base_url: str) -> Iterator[Backend]:
    schema = f"herald_bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(base_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base_url else "?"
    url = f"{base_url}{sep}options={quote(f'-csearch_path={schema}')}"
    engine = make_engine(url)
    try:
        upgrade(engine)

        def count() -> int:
            with engine.connect() as conn:
                return int(conn.execute(text("SELECT count(*) FROM jobs WHERE state = 'completed'")).scalar_one())

        yield Backend("PostgreSQL", url, engine, count)
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def reset(backend: Backend) -> None:
    with backend.engine.begin() as conn:
        conn.execute(text("DELETE FROM jobs"))


def enqueue(backend: Backend, n: int) -> None:
    with backend.engine.begin() as conn:
        jobs_db.enqueue_many(conn, "diag.noop", ({} for _ in range(n)), now=datetime.now(UTC))


def wait_for(backend: Backend, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while backend.count_completed() < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{backend.name}: {backend.count_completed()} of {n} jobs done after {timeout}s")
        time.sleep(0.01)


# ---- the two measurements ------------------------------------------------------------------
def reference_rate(backend: Backend, n: int) -> float:
    """One process: claim a batch, settle it completed, one transaction per batch."""
    reset(backend)
    enqueue(backend, n)
    lease = timedelta(seconds=60)
    done = 0
    started = time.perf_counter()
    while done < n:
        with backend.engine.begin() as conn:
            now = datetime.now(UTC)
            claimed = jobs_db.claim(conn, owner="reference", limit=BATCH, now=now, lease=lease)
            jobs_db.settle(conn, [jobs_db.Finished(j.id, j.attempt, JobState.COMPLETED) for j in claimed], now=now)
        if not claimed:
            raise RuntimeError("reference loop found no due jobs before finishing")
        done += len(claimed)
    return n / (time.perf_counter() - started)


@contextmanager
def workers(backend: Backend, count: int, logs: Path, synchronous: str) -> Iterator[None]:
    env = {**os.environ, "HERALD_DATABASE_URL": backend.url, "HERALD_SECRET_KEY": SECRET,
           "HERALD_WORKER_POLL_SECONDS": "0.05", "HERALD_SQLITE_SYNCHRONOUS": synchronous,
           "HERALD_LOG_LEVEL": "warning"}
    procs = []
    try:
        for i in range(count):
            log = (logs / f"worker-{backend.name[:6]}-{count}-{i}.log").open("wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "herald.cli", "worker"], env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
        reset(backend)  # warm up: every process imported, connected and claiming
        enqueue(backend, 20 * count)
        wait_for(backend, 20 * count, timeout=60)
        yield
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


def engine_rate(backend: Backend, n: int) -> float:
    reset(backend)
    started = time.perf_counter()
    enqueue(backend, n)
    wait_for(backend, n, timeout=300)
    return n / (time.perf_counter() - started)


# ---- driver -----------------------------------------------------------------------------------
def measure(backend: Backend, n: int, runs: int, logs: Path, synchronous: str) -> list[Result]:
    reference = Result(backend.name, "reference (claim+settle loop, 1 process)")
    for _ in range(runs):
        reference.rates.append(reference_rate(backend, n))
    results = [reference]
    for count in (1, 2):
        result = Result(backend.name, f"engine, {count} worker process{'es' if count > 1 else ''}")
        with workers(backend, count, logs, synchronous):
            for _ in range(runs):
                result.rates.append(engine_rate(backend, n))
        results.append(result)
    return results


def machine() -> dict[str, str]:
    return {"cpus": str(os.cpu_count()), "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "platform": platform.platform()}


def postgres_version(url: str) -> str:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar_one())
    finally:
        engine.dispose()


def print_table(results: list[Result], n: int, runs: int) -> None:
    print(f"\n{n} no-op jobs per run, median of {runs} run(s) [min-max], jobs/s")
    print(f"{'backend':<28} {'measurement':<44} {'jobs/s':>8}  {'[min-max]':<17} {'vs reference':>12}")
    reference: dict[str, float] = {}
    for r in results:
        if r.what.startswith("reference"):
            reference[r.backend] = r.median
        ratio = r.median / reference[r.backend]
        spread = f"[{min(r.rates):.0f}-{max(r.rates):.0f}]"
        print(f"{r.backend:<28} {r.what:<44} {r.median:>8.0f}  {spread:<17} {ratio:>11.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per run (default 20000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--postgres", default=os.environ.get("HERALD_BENCH_DATABASE_URL", ""),
                        help="PostgreSQL URL (default $HERALD_BENCH_DATABASE_URL); a scratch schema is used")
    parser.add_argument("--sqlite-synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument("--quick", action="store_true", help="5000 jobs, 1 run")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    n, runs = (5000, 1) if args.quick else (args.jobs, args.runs)
    info = machine()
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as logdir:
        logs = Path(logdir)
        with sqlite_backend(args.sqlite_synchronous) as backend:
            results += measure(backend, n, runs, logs, args.sqlite_synchronous)
        if args.postgres:
            info["postgresql"] = postgres_version(args.postgres)
            with postgres_backend(args.postgres) as backend:
                results += measure(backend, n, runs, logs, args.sqlite_synchronous)
        else:
            info["postgresql"] = "skipped: set HERALD_BENCH_DATABASE_URL or --postgres to include it"
    if args.json:
        print(json.dumps({"machine": info, "jobs": n, "runs": runs,
                          "results": [{"backend": r.backend, "measurement": r.what, "median": r.median,
                                       "rates": r.rates} for r in results]}, indent=2))
        return
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print_table(results, n, runs)


if __name__ == "__main__":
    main()
