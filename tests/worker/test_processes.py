"""Real `herald worker` processes: SIGKILL mid-job loses nothing (the job runs again after the
lease), SIGTERM drains in-flight work, and a drain past its grace period gives jobs back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from herald.db import jobs as jobs_db
from herald.domain.clock import ShiftedClock
from herald.domain.jobs import JobState, Outcome
from herald.worker.engine import Worker
from herald.worker.registry import JobContext, JobKind, Registry
from tests.conftest import TEST_SECRET

pytestmark = pytest.mark.slow


@contextmanager
def worker_process(database_url: str, tmp_path: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    log_path = tmp_path / f"worker-{time.monotonic_ns()}.log"
    full_env = {**os.environ, "HERALD_DATABASE_URL": database_url, "HERALD_SECRET_KEY": TEST_SECRET,
                "HERALD_SQLITE_SYNCHRONOUS": "NORMAL", "HERALD_WORKER_POLL_SECONDS": "0.05",
                "HERALD_LOG_LEVEL": "info", **env}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "herald.cli", "worker"], env=full_env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    except BaseException:
        print(log_path.read_text(errors="replace"))  # shown by pytest on failure
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def wait_until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def job(engine: Engine, job_id: int) -> dict[str, Any]:
    with engine.begin() as conn:
        found = jobs_db.get(conn, job_id)
    assert found is not None
    return found


def enqueue_sleep(engine: Engine, clock: ShiftedClock, seconds: float) -> int:
    with engine.begin() as conn:
        job_id = jobs_db.enqueue(conn, "diag.sleep", {"seconds": seconds}, now=clock.now())
    assert job_id is not None
    return job_id


def test_sigkill_mid_job_loses_nothing(database_url: str, engine: Engine, clock: ShiftedClock,
                                       tmp_path: Path) -> None:
    job_id = enqueue_sleep(engine, clock, 60)
    with worker_process(database_url, tmp_path, HERALD_JOB_LEASE_SECONDS="2") as proc:
        wait_until(lambda: job(engine, job_id)["state"] == JobState.RUNNING, 30, "the worker to take the job")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    assert job(engine, job_id)["state"] == JobState.RUNNING  # the dead worker still "holds" it

    reruns: list[int] = []

    async def quick_sleep(ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        reruns.append(ctx.attempt)
        return None

    rescuer = Worker(engine, Registry([JobKind("diag.sleep", quick_sleep)]), clock=clock, lease_seconds=2)
    assert asyncio.run(rescuer.run_once()) == 0  # the lease has not run out yet
    clock.advance(timedelta(seconds=3))  # ... now it has
    assert asyncio.run(rescuer.run_once()) == 1
    assert reruns == [2]
    done = job(engine, job_id)
    assert (done["state"], done["attempts"]) == (JobState.COMPLETED, 2)
    assert "worker lost" in (done["last_error"] or "")


def test_sigkilled_worker_is_replaced_by_another_process(database_url: str, engine: Engine, clock: ShiftedClock,
                                                         tmp_path: Path) -> None:
    """The same, with a second real process taking over on real time."""
    job_id = enqueue_sleep(engine, clock, 1.0)
    with engine.begin() as conn:  # a first worker that will never come back took it
        jobs_db.claim(conn, owner="killed", limit=1, now=clock.now(), lease=timedelta(seconds=1))
    with worker_process(database_url, tmp_path, HERALD_JOB_LEASE_SECONDS="1"):
        wait_until(lambda: job(engine, job_id)["state"] == JobState.COMPLETED, 30, "another worker to finish it")
    assert job(engine, job_id)["attempts"] == 2


def test_sigterm_drains_in_flight_jobs(database_url: str, engine: Engine, clock: ShiftedClock,
                                       tmp_path: Path) -> None:
    job_id = enqueue_sleep(engine, clock, 1.5)
    with worker_process(database_url, tmp_path, HERALD_WORKER_SHUTDOWN_GRACE_SECONDS="20") as proc:
        wait_until(lambda: job(engine, job_id)["state"] == JobState.RUNNING, 30, "the worker to take the job")
        later = enqueue_sleep(engine, clock, 0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert job(engine, job_id)["state"] == JobState.COMPLETED  # finished during the drain
    assert job(engine, job_id)["attempts"] == 1
    assert job(engine, later)["state"] in (JobState.AVAILABLE, JobState.COMPLETED)  # never left running


def test_drain_past_the_grace_period_gives_jobs_back(database_url: str, engine: Engine, clock: ShiftedClock,
                                                     tmp_path: Path) -> None:
    job_id = enqueue_sleep(engine, clock, 60)
    with worker_process(database_url, tmp_path, HERALD_WORKER_SHUTDOWN_GRACE_SECONDS="0.5") as proc:
        wait_until(lambda: job(engine, job_id)["state"] == JobState.RUNNING, 30, "the worker to take the job")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    released = job(engine, job_id)
    assert released["state"] == JobState.AVAILABLE
    assert released["attempts"] == 0  # the interrupted run is not held against the job
    assert released["lease_owner"] is None
