"""Real `herald worker` processes: SIGKILL mid-job loses nothing (the job runs again after the
lease, in process or in another real worker), SIGTERM drains in-flight work, and a drain past
its grace period gives jobs back. Every wait is bounded; each worker's log is printed (pytest
shows it when the test fails)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from herald.db.tables import jobs
from herald.domain.clock import ShiftedClock
from herald.domain.jobs import JobState, Outcome
from herald.worker.engine import Worker
from herald.worker.registry import JobContext, JobKind, Registry
from tests.conftest import TEST_SECRET
from tests.worker.support import counts, enqueue, row

pytestmark = pytest.mark.slow

DEADLINE = 30.0  # seconds; generous, never reached when things work


@contextmanager
def worker_process(database_url: str, tmp_path: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """A `herald worker` subprocess; killed if still running at the end, its log printed."""
    log_path = tmp_path / f"worker-{time.monotonic_ns()}.log"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    full_env = {**inherited, "HERALD_DATABASE_URL": database_url, "HERALD_SECRET_KEY": TEST_SECRET,
                "HERALD_SQLITE_SYNCHRONOUS": "NORMAL", "HERALD_WORKER_POLL_SECONDS": "0.1",
                "HERALD_LOG_LEVEL": "info", **env}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "herald.cli", "worker"], env=full_env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        print(f"---- {log_path.name} (exit {proc.returncode}) ----")
        print(log_path.read_text(errors="replace"))


def worker_logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("worker-*.log")))


def wait_until(predicate: Callable[[], bool], what: str, seconds: float = DEADLINE) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def is_running_first_attempt(engine: Engine, job_id: int) -> bool:
    r = row(engine, job_id)
    return r["state"] == JobState.RUNNING and r["attempts"] == 1


def kill_mid_job(database_url: str, engine: Engine, job_id: int, tmp_path: Path) -> dict[str, Any]:
    """Start a real worker with a 2 s lease, let it take the job, SIGKILL it. Returns the row."""
    with worker_process(database_url, tmp_path, HERALD_JOB_LEASE_SECONDS="2") as proc:
        # ... and settle its own periodic maintenance job first, so that only this job is orphaned
        wait_until(lambda: is_running_first_attempt(engine, job_id) and counts(engine).get("running") == 1,
                   "the worker to take the job")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=DEADLINE) == -signal.SIGKILL
    orphan = row(engine, job_id)
    assert (orphan["state"], orphan["attempts"]) == (JobState.RUNNING, 1)  # the dead worker still "holds" it
    assert orphan["lease_owner"] is not None and orphan["lease_expires_at"] is not None
    return orphan


def test_sigkill_mid_job_the_job_runs_again_after_the_lease(database_url: str, engine: Engine,
                                                            clock: ShiftedClock, tmp_path: Path) -> None:
    job_id = enqueue(engine, clock, "diag.sleep", {"seconds": 30})
    orphan = kill_mid_job(database_url, engine, job_id, tmp_path)

    reruns: list[int] = []

    async def quick_sleep(ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        reruns.append(ctx.attempt)
        return None

    # A rescuer whose clock is set from the row itself, so "before" and "after" the lease are exact
    # whatever the machine's speed.
    expires: datetime = orphan["lease_expires_at"]
    rescuer_clock = ShiftedClock(expires - timedelta(seconds=1) - datetime.now(UTC))
    rescuer = Worker(engine, Registry([JobKind("diag.sleep", quick_sleep)]), clock=rescuer_clock, lease_seconds=2)
    assert asyncio.run(rescuer.run_once()) == 0  # the lease has not run out yet: hands off
    assert row(engine, job_id)["state"] == JobState.RUNNING
    rescuer_clock.advance(timedelta(seconds=2))  # ... now it has
    assert asyncio.run(rescuer.run_once()) == 1
    assert reruns == [2]
    done = row(engine, job_id)
    assert (done["state"], done["attempts"]) == (JobState.COMPLETED, 2)
    assert "worker lost" in (done["last_error"] or "")
    assert counts(engine, kind="diag.sleep") == {"completed": 1}  # nothing lost, nothing duplicated


def test_sigkilled_worker_is_replaced_by_another_process(database_url: str, engine: Engine, clock: ShiftedClock,
                                                         tmp_path: Path) -> None:
    """The same end to end: a second real worker, on real time, takes over after the lease."""
    job_id = enqueue(engine, clock, "diag.sleep", {"seconds": 30})
    kill_mid_job(database_url, engine, job_id, tmp_path)
    with engine.begin() as conn:  # so that the rerun does not take 30 s; read by the worker at claim time
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(payload={"seconds": 0.1}))
    with worker_process(database_url, tmp_path, HERALD_JOB_LEASE_SECONDS="2"):
        wait_until(lambda: row(engine, job_id)["state"] == JobState.COMPLETED, "another worker to finish it")
    done = row(engine, job_id)
    assert (done["state"], done["attempts"]) == (JobState.COMPLETED, 2)
    assert "worker lost" in (done["last_error"] or "")
    assert counts(engine, kind="diag.sleep") == {"completed": 1}


def test_sigterm_drains_in_flight_jobs(database_url: str, engine: Engine, clock: ShiftedClock,
                                       tmp_path: Path) -> None:
    job_id = enqueue(engine, clock, "diag.sleep", {"seconds": 1.5})
    with worker_process(database_url, tmp_path, HERALD_WORKER_SHUTDOWN_GRACE_SECONDS="20") as proc:
        wait_until(lambda: is_running_first_attempt(engine, job_id), "the worker to take the job")
        proc.send_signal(signal.SIGTERM)
        later = enqueue(engine, clock, "diag.sleep", {"seconds": 0.1})  # arrives while it drains
        assert proc.wait(timeout=DEADLINE) == 0
    log = worker_logs(tmp_path)
    assert "draining in-flight jobs" in log  # the job was still running when the signal came
    done = row(engine, job_id)
    assert (done["state"], done["attempts"]) == (JobState.COMPLETED, 1)  # finished during the drain
    assert done["lease_owner"] is None
    # Enqueued after the signal: untouched, or run to the end if a claim was already in flight.
    assert (row(engine, later)["state"], row(engine, later)["attempts"]) in {(JobState.AVAILABLE, 0),
                                                                              (JobState.COMPLETED, 1)}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_drain_past_the_grace_period_gives_jobs_back(database_url: str, engine: Engine, clock: ShiftedClock,
                                                     tmp_path: Path, sig: signal.Signals) -> None:
    job_id = enqueue(engine, clock, "diag.sleep", {"seconds": 30})
    with worker_process(database_url, tmp_path, HERALD_WORKER_SHUTDOWN_GRACE_SECONDS="0.5") as proc:
        wait_until(lambda: is_running_first_attempt(engine, job_id), "the worker to take the job")
        proc.send_signal(sig)
        assert proc.wait(timeout=DEADLINE) == 0
    assert "released unfinished jobs" in worker_logs(tmp_path)
    released = row(engine, job_id)
    assert released["state"] == JobState.AVAILABLE  # not stuck 'running' until a lease expires
    assert released["attempts"] == 0  # the interrupted run is not held against the job
    assert released["lease_owner"] is None and released["lease_expires_at"] is None
    assert released["due_at"] <= clock.now()  # due again at once
