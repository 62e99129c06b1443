"""The work engine, in process, on SQLite and PostgreSQL: exclusive claims, backoff, dead
jobs with their reason, handler outcomes, delayed jobs across a restart, lease fencing and
rescue, periodic kinds. Time is a ShiftedClock, so "three days later" takes no time."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from herald.bootstrap import build
from herald.db import jobs as jobs_db
from herald.db.engine import make_engine
from herald.db.tables import jobs
from herald.domain.clock import ShiftedClock
from herald.domain.jobs import Backoff, Fail, JobState, Outcome, Retry
from herald.worker.engine import Worker
from herald.worker.registry import JobContext, JobKind, Registry
from tests.conftest import make_settings


def enqueue(engine: Engine, clock: ShiftedClock, kind: str, payload: dict[str, Any] | None = None,
            **options: Any) -> int:
    with engine.begin() as conn:
        job_id = jobs_db.enqueue(conn, kind, payload or {}, now=clock.now(), **options)
    assert job_id is not None
    return job_id


def row(engine: Engine, job_id: int) -> dict[str, Any]:
    with engine.begin() as conn:
        found = jobs_db.get(conn, job_id)
    assert found is not None
    return found


def worker(engine: Engine, registry: Registry, clock: ShiftedClock, **options: Any) -> Worker:
    return Worker(engine, registry, clock=clock, poll_seconds=0.02, **options)


# ---- exclusive claims --------------------------------------------------------------------------
def test_two_workers_never_run_the_same_job(database_url: str, engine: Engine, clock: ShiftedClock) -> None:
    runs: Counter[int] = Counter()
    by_worker: Counter[str] = Counter()

    def handler_for(name: str) -> Any:
        async def handler(ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
            runs[ctx.job_id] += 1
            by_worker[name] += 1
            await asyncio.sleep(0.001)
            return None
        return handler

    total = 300
    with engine.begin() as conn:
        jobs_db.enqueue_many(conn, "count", ({"i": i} for i in range(total)), now=clock.now())
    second_engine = make_engine(database_url)  # its own connections: real concurrency at the database

    async def main() -> None:
        stop = asyncio.Event()
        w1 = worker(engine, Registry([JobKind("count", handler_for("one"))]), clock, batch_size=7, concurrency=10)
        w2 = worker(second_engine, Registry([JobKind("count", handler_for("two"))]), clock, batch_size=7,
                    concurrency=10)
        tasks = [asyncio.create_task(w.run(stop)) for w in (w1, w2)]
        for _ in range(3000):  # bounded: at most 30 s
            with engine.begin() as conn:
                if jobs_db.counts_by_state(conn).get("completed", 0) == total:
                    break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*tasks)

    try:
        asyncio.run(main())
    finally:
        second_engine.dispose()
    assert len(runs) == total
    assert set(runs.values()) == {1}, [j for j, n in runs.items() if n > 1]
    assert by_worker["one"] > 0 and by_worker["two"] > 0  # both took part
    with engine.begin() as conn:
        assert jobs_db.counts_by_state(conn) == {"completed": total}


# ---- failures, retries, dead jobs ----------------------------------------------------------------
def test_retries_back_off_then_the_job_dies_with_its_reason(engine: Engine, clock: ShiftedClock) -> None:
    async def broken(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        raise ConnectionError("relay refused us")

    registry = Registry([JobKind("broken", broken, backoff=Backoff(base=10, cap=100_000))])
    job_id = enqueue(engine, clock, "broken", max_attempts=6)
    w = worker(engine, registry, clock)
    delays: list[float] = []
    for _ in range(6):
        assert asyncio.run(w.run_once()) == 1
        state = row(engine, job_id)
        if state["state"] == JobState.DEAD:
            break
        assert state["state"] == JobState.AVAILABLE
        delays.append((state["due_at"] - clock.now()).total_seconds())
        assert asyncio.run(w.run_once()) == 0  # not due yet: nothing runs early
        clock.advance(state["due_at"] - clock.now() + timedelta(seconds=1))
    assert len(delays) == 5
    assert delays == sorted(delays), delays  # never shorter than the previous wait
    for attempt, delay in enumerate(delays, start=1):
        ceiling = 10 * 2 ** (attempt - 1)
        assert ceiling / 2 <= delay <= ceiling, (attempt, delay)
    dead = row(engine, job_id)
    assert dead["state"] == JobState.DEAD
    assert dead["attempts"] == 6
    assert "gave up after 6 attempts" in dead["last_error"]
    assert "relay refused us" in dead["last_error"]
    assert [e["attempt"] for e in dead["errors"]] == [1, 2, 3, 4, 5, 6]
    assert dead["finished_at"] is not None


def test_handler_outcomes(engine: Engine, clock: ShiftedClock) -> None:
    async def throttled(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        return Retry(after=120, reason="provider said Retry-After: 120")

    async def hopeless(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        return Fail("mailbox does not exist")

    async def slow(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        await asyncio.sleep(5)
        return None

    registry = Registry([JobKind("throttled", throttled), JobKind("hopeless", hopeless),
                         JobKind("slow", slow, timeout_seconds=0.05)])
    ids = {name: enqueue(engine, clock, name) for name in ("throttled", "hopeless", "slow", "nobody-knows-me")}
    asyncio.run(worker(engine, registry, clock).run_once())

    retried = row(engine, ids["throttled"])
    assert retried["state"] == JobState.AVAILABLE and retried["attempts"] == 1
    assert abs((retried["due_at"] - clock.now()).total_seconds() - 120) < 1
    assert retried["last_error"] == "provider said Retry-After: 120"

    failed = row(engine, ids["hopeless"])
    assert (failed["state"], failed["last_error"]) == (JobState.DEAD, "mailbox does not exist")

    timed_out = row(engine, ids["slow"])
    assert timed_out["state"] == JobState.AVAILABLE and "timed out" in timed_out["last_error"]

    unknown = row(engine, ids["nobody-knows-me"])
    assert unknown["state"] == JobState.DEAD and "nobody-knows-me" in unknown["last_error"]


def test_retry_after_counts_as_an_attempt(engine: Engine, clock: ShiftedClock) -> None:
    async def always_throttled(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        return Retry(after=1)

    registry = Registry([JobKind("t", always_throttled)])
    job_id = enqueue(engine, clock, "t", max_attempts=3)
    w = worker(engine, registry, clock)
    for _ in range(3):
        asyncio.run(w.run_once())
        clock.advance(timedelta(seconds=2))
    assert row(engine, job_id)["state"] == JobState.DEAD


# ---- time ---------------------------------------------------------------------------------------
def test_a_job_due_in_three_days_runs_then_and_not_before(database_url: str, clock: ShiftedClock) -> None:
    ran: list[int] = []

    async def remind(ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        ran.append(ctx.job_id)
        return None

    registry = Registry([JobKind("remind", remind)])
    first = build(make_settings(database_url), clock=clock)
    job_id = enqueue(first.engine, clock, "remind", due_at=clock.now() + timedelta(days=3))
    assert asyncio.run(worker(first.engine, registry, clock).run_once()) == 0
    first.close()  # a restart: nothing about the job lives in the process

    clock.advance(timedelta(days=3) - timedelta(minutes=1))
    second = build(make_settings(database_url), clock=clock)
    try:
        w = worker(second.engine, registry, clock)
        assert asyncio.run(w.run_once()) == 0
        assert ran == []
        clock.advance(timedelta(minutes=2))
        assert asyncio.run(w.run_once()) == 1
        assert ran == [job_id]
        assert row(second.engine, job_id)["state"] == JobState.COMPLETED
    finally:
        second.close()


# ---- leases --------------------------------------------------------------------------------------
def test_a_lost_lease_cannot_overwrite_the_newer_attempt(engine: Engine, clock: ShiftedClock) -> None:
    job_id = enqueue(engine, clock, "x")
    lease = timedelta(seconds=30)
    with engine.begin() as conn:
        (stalled,) = jobs_db.claim(conn, owner="A", limit=10, now=clock.now(), lease=lease)
    clock.advance(timedelta(seconds=31))
    with engine.begin() as conn:
        assert jobs_db.rescue_expired(conn, now=clock.now()) == (1, 0)
        (fresh,) = jobs_db.claim(conn, owner="B", limit=10, now=clock.now(), lease=lease)
    assert (stalled.attempt, fresh.attempt) == (1, 2)
    with engine.begin() as conn:  # A wakes up and reports success for its old attempt
        report = jobs_db.settle(conn, [jobs_db.Finished(job_id, stalled.attempt, JobState.COMPLETED)],
                                now=clock.now())
        assert report.fenced_off == [job_id] and report.written == 0
        failed = jobs_db.Finished(job_id, stalled.attempt, JobState.DEAD, error="late")
        assert jobs_db.settle(conn, [failed], now=clock.now()).fenced_off == [job_id]
    assert row(engine, job_id)["state"] == JobState.RUNNING  # still B's
    with engine.begin() as conn:
        report = jobs_db.settle(conn, [jobs_db.Finished(job_id, fresh.attempt, JobState.COMPLETED)],
                                now=clock.now())
    assert report.written == 1 and report.fenced_off == []
    assert row(engine, job_id)["state"] == JobState.COMPLETED


def test_jobs_of_a_vanished_worker_are_run_again(engine: Engine, clock: ShiftedClock) -> None:
    ran: list[int] = []

    async def record(ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        ran.append(ctx.attempt)
        return None

    job_id = enqueue(engine, clock, "work")
    last_chance = enqueue(engine, clock, "work", max_attempts=1)
    with engine.begin() as conn:  # a worker claims both, then dies without a word
        assert len(jobs_db.claim(conn, owner="ghost", limit=10, now=clock.now(), lease=timedelta(seconds=60))) == 2
    w = worker(engine, Registry([JobKind("work", record)]), clock, lease_seconds=60)
    assert asyncio.run(w.run_once()) == 0  # leases still valid: hands off
    clock.advance(timedelta(seconds=61))
    assert asyncio.run(w.run_once()) == 1
    assert ran == [2]
    assert row(engine, job_id)["state"] == JobState.COMPLETED
    dead = row(engine, last_chance)
    assert dead["state"] == JobState.DEAD and "worker lost" in dead["last_error"]


def test_running_jobs_keep_their_lease_alive(engine: Engine, clock: ShiftedClock) -> None:
    """A job that runs longer than the lease is not stolen: the heartbeat renews it."""
    job_id = enqueue(engine, clock, "long")
    seen_leases: list[Any] = []

    async def long(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        for _ in range(6):
            await asyncio.sleep(0.15)
            seen_leases.append(row(engine, job_id)["lease_expires_at"])
        return None

    async def main() -> None:
        stop = asyncio.Event()
        w = worker(engine, Registry([JobKind("long", long)]), clock, lease_seconds=0.3)
        task = asyncio.create_task(w.run(stop))
        for _ in range(500):  # bounded: 5 s
            if row(engine, job_id)["state"] == JobState.COMPLETED:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await task
        assert w.stats["completed"] == 1 and w.stats["fenced_off"] == 0

    asyncio.run(main())
    assert row(engine, job_id)["attempts"] == 1
    assert len(set(seen_leases)) > 1  # renewed while running


# ---- periodic kinds ------------------------------------------------------------------------------
def test_periodic_kinds_run_once_per_interval_however_many_workers(database_url: str, engine: Engine,
                                                                  clock: ShiftedClock) -> None:
    async def tick(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        return None

    registry = Registry([JobKind("tick", tick, every=timedelta(hours=1))])
    other = make_engine(database_url)
    try:
        for e in (engine, other, engine):
            asyncio.run(worker(e, registry, clock).run_once())
        with engine.begin() as conn:
            assert conn.execute(select(func.count()).select_from(jobs).where(jobs.c.kind == "tick")).scalar() == 1
        clock.advance(timedelta(hours=1))
        for e in (other, engine):
            asyncio.run(worker(e, registry, clock).run_once())
        with engine.begin() as conn:
            assert conn.execute(select(func.count()).select_from(jobs).where(jobs.c.kind == "tick")).scalar() == 2
    finally:
        other.dispose()


def test_prune_keeps_dead_jobs_and_recent_ones(engine: Engine, clock: ShiftedClock) -> None:
    done = enqueue(engine, clock, "x")
    dead = enqueue(engine, clock, "x")
    with engine.begin() as conn:
        jobs_db.claim(conn, owner="w", limit=10, now=clock.now(), lease=timedelta(seconds=60))
        jobs_db.settle(conn, [jobs_db.Finished(done, 1, JobState.COMPLETED),
                              jobs_db.Finished(dead, 1, JobState.DEAD, error="no")], now=clock.now())
        assert jobs_db.prune_finished(conn, before=clock.now() - timedelta(hours=1)) == 0
        assert jobs_db.prune_finished(conn, before=clock.now() + timedelta(hours=1)) == 1
        assert jobs_db.counts_by_state(conn) == {"dead": 1}
