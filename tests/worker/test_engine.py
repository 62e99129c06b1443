"""The work engine, in process, on SQLite and PostgreSQL: exclusive claims, backoff, dead
jobs with their reason, handler outcomes, delayed jobs across a restart, lease fencing and
rescue, heartbeats, periodic kinds, wake-up and stop. Time is a ShiftedClock (or a FrozenClock
when delays are compared exactly), so "three days later" takes no time."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from herald.bootstrap import build
from herald.db import jobs as jobs_db
from herald.db.engine import make_engine
from herald.db.tables import jobs
from herald.domain.clock import Clock, ShiftedClock
from herald.domain.jobs import Backoff, Fail, JobState, Outcome, Retry
from herald.worker.engine import Worker
from herald.worker.registry import JobContext, JobKind, Registry
from tests.conftest import make_settings
from tests.worker.support import FrozenClock, counts, enqueue, row


def worker(engine: Engine, registry: Registry, clock: Clock, **options: Any) -> Worker:
    return Worker(engine, registry, clock=clock, **{"poll_seconds": 0.02, **options})


# ---- exclusive claims --------------------------------------------------------------------------
def test_two_workers_never_run_the_same_job(database_url: str, engine: Engine, clock: ShiftedClock) -> None:
    runs: Counter[int] = Counter()
    by_worker: Counter[str] = Counter()
    both_started = asyncio.Event()  # one loop for both workers, so a plain asyncio.Event works

    def handler_for(name: str) -> Any:
        async def handler(ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
            runs[ctx.job_id] += 1
            by_worker[name] += 1
            if by_worker["one"] and by_worker["two"]:
                both_started.set()
            # Hold the first jobs until both workers have one: a worker whose slots are all taken
            # cannot claim, so the other gets its turn (SQLite's lock is not fair). Bounded wait.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(both_started.wait(), timeout=10)
            await asyncio.sleep(0.001)  # let the two workers' runs interleave
            return None
        return handler

    total = 300
    with engine.begin() as conn:
        jobs_db.enqueue_many(conn, "count", ({"i": i} for i in range(total)), now=clock.now())
    second_engine = make_engine(database_url)  # its own connections: real concurrency at the database
    workers = [
        worker(e, Registry([JobKind("count", handler_for(name))]), clock, batch_size=7, concurrency=10, name=name)
        for e, name in ((engine, "one"), (second_engine, "two"))
    ]

    async def main() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(stop)) for w in workers]
        for _ in range(3000):  # bounded: at most ~30 s
            if (await asyncio.to_thread(counts, engine)).get("completed", 0) == total:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*tasks)

    try:
        asyncio.run(main())
    finally:
        second_engine.dispose()
    assert counts(engine) == {"completed": total}
    assert len(runs) == total
    assert set(runs.values()) == {1}, [j for j, n in runs.items() if n > 1]
    assert by_worker["one"] > 0 and by_worker["two"] > 0  # both took part: they really contended
    assert sum(w.stats["claimed"] for w in workers) == total  # no job was claimed twice
    assert sum(w.stats["completed"] for w in workers) == total
    assert all(w.stats["fenced_off"] == 0 for w in workers)


# ---- failures, retries, dead jobs ----------------------------------------------------------------
def test_retries_back_off_then_the_job_dies_with_its_reason(engine: Engine) -> None:
    clock = FrozenClock()  # delays are read back exactly
    attempts_seen: list[tuple[int, int]] = []

    async def broken(ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        attempts_seen.append((ctx.attempt, ctx.max_attempts))
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
        assert "relay refused us" in state["last_error"]
        delays.append((state["due_at"] - clock.now()).total_seconds())
        clock.advance(state["due_at"] - clock.now() - timedelta(seconds=1))
        assert asyncio.run(w.run_once()) == 0  # one second early: nothing runs
        clock.advance(timedelta(seconds=1))  # exactly due
    assert attempts_seen == [(n, 6) for n in range(1, 7)]
    assert len(delays) == 5
    assert delays == sorted(delays), delays  # never shorter than the previous wait ...
    assert delays[-1] >= 4 * delays[0], delays  # ... and growing
    for attempt, delay in enumerate(delays, start=1):  # equal jitter: in [d/2, d], d = base * 2^(n-1)
        ceiling = 10 * 2 ** (attempt - 1)
        assert ceiling / 2 <= delay <= ceiling, (attempt, delay)
    dead = row(engine, job_id)
    assert dead["state"] == JobState.DEAD
    assert dead["attempts"] == 6
    assert "gave up after 6 attempts" in dead["last_error"]
    assert "ConnectionError: relay refused us" in dead["last_error"]
    assert [e["attempt"] for e in dead["errors"]] == [1, 2, 3, 4, 5, 6]
    assert all("relay refused us" in e["error"] for e in dead["errors"])
    assert dead["finished_at"] == clock.now()
    assert dead["lease_owner"] is None and dead["lease_expires_at"] is None


def test_error_history_keeps_the_latest_attempts(engine: Engine) -> None:
    clock = FrozenClock()

    async def flaky(ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        return Retry(after=0, reason=f"try {ctx.attempt}")

    job_id = enqueue(engine, clock, "flaky", max_attempts=30)
    w = worker(engine, Registry([JobKind("flaky", flaky)]), clock)
    for _ in range(25):
        assert asyncio.run(w.run_once()) == 1
    history = row(engine, job_id)["errors"]
    assert len(history) == jobs_db.MAX_ERROR_HISTORY
    assert [e["attempt"] for e in history] == list(range(26 - jobs_db.MAX_ERROR_HISTORY, 26))
    assert history[-1]["error"] == "try 25"


def test_handler_outcomes(engine: Engine) -> None:
    clock = FrozenClock()

    async def throttled(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        return Retry(after=120, reason="provider said Retry-After: 120")

    async def hopeless(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        return Fail("mailbox does not exist")

    async def slow(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        await asyncio.sleep(30)
        return None

    async def confused(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        return "ok"  # type: ignore[return-value]

    registry = Registry([JobKind("throttled", throttled), JobKind("hopeless", hopeless),
                         JobKind("slow", slow, timeout_seconds=0.05), JobKind("confused", confused)])
    names = ("throttled", "hopeless", "slow", "confused", "nobody-knows-me")
    ids = {name: enqueue(engine, clock, name, max_attempts=5) for name in names}
    assert asyncio.run(worker(engine, registry, clock).run_once()) == len(names)

    retried = row(engine, ids["throttled"])
    assert retried["state"] == JobState.AVAILABLE and retried["attempts"] == 1  # Retry counts as an attempt
    assert abs((retried["due_at"] - (clock.now() + timedelta(seconds=120))).total_seconds()) < 0.001
    assert retried["last_error"] == "provider said Retry-After: 120"

    failed = row(engine, ids["hopeless"])
    assert (failed["state"], failed["attempts"], failed["last_error"]) == (JobState.DEAD, 1, "mailbox does not exist")
    assert failed["finished_at"] is not None  # dead at once, attempts left or not

    timed_out = row(engine, ids["slow"])
    assert timed_out["state"] == JobState.AVAILABLE and timed_out["attempts"] == 1
    assert "timed out" in timed_out["last_error"]
    assert timed_out["due_at"] > clock.now()  # retried with backoff, not at once

    confused = row(engine, ids["confused"])
    assert confused["state"] == JobState.DEAD and "'ok'" in confused["last_error"]

    unknown = row(engine, ids["nobody-knows-me"])
    assert unknown["state"] == JobState.DEAD and "nobody-knows-me" in unknown["last_error"]
    assert unknown["attempts"] == 1


def test_retry_after_counts_as_an_attempt(engine: Engine) -> None:
    clock = FrozenClock()
    calls: list[int] = []

    async def always_throttled(ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        calls.append(ctx.attempt)
        return Retry(after=1, reason="slow down")

    job_id = enqueue(engine, clock, "t", max_attempts=3)
    w = worker(engine, Registry([JobKind("t", always_throttled)]), clock)
    for _ in range(5):  # more rounds than attempts: the job must stop by itself
        asyncio.run(w.run_once())
        clock.advance(timedelta(seconds=2))
    assert calls == [1, 2, 3]
    dead = row(engine, job_id)
    assert dead["state"] == JobState.DEAD
    assert "gave up after 3 attempts" in dead["last_error"] and "slow down" in dead["last_error"]


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

    second = build(make_settings(database_url), clock=clock)
    try:
        w = worker(second.engine, registry, clock)
        clock.advance(timedelta(days=3) - timedelta(minutes=1))
        assert asyncio.run(w.run_once()) == 0
        assert ran == []
        assert row(second.engine, job_id)["state"] == JobState.AVAILABLE
        clock.advance(timedelta(minutes=2))
        assert asyncio.run(w.run_once()) == 1
        assert ran == [job_id]
        done = row(second.engine, job_id)
        assert (done["state"], done["attempts"]) == (JobState.COMPLETED, 1)
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
    before = row(engine, job_id)
    assert (before["state"], before["lease_owner"], before["attempts"]) == (JobState.RUNNING, "B", 2)

    for late in (jobs_db.Finished(job_id, stalled.attempt, JobState.COMPLETED),  # A wakes up, reports
                 jobs_db.Finished(job_id, stalled.attempt, JobState.DEAD, error="late"),
                 jobs_db.Finished(job_id, stalled.attempt, JobState.AVAILABLE, error="late",
                                  due_at=clock.now() + timedelta(days=1))):
        with engine.begin() as conn:
            report = jobs_db.settle(conn, [late], now=clock.now())
        assert (report.written, report.fenced_off) == (0, [job_id]), late
        assert row(engine, job_id) == before  # not one column changed: still B's attempt

    with engine.begin() as conn:
        report = jobs_db.settle(conn, [jobs_db.Finished(job_id, fresh.attempt, JobState.COMPLETED)],
                                now=clock.now())
    assert (report.written, report.fenced_off) == (1, [])
    done = row(engine, job_id)
    assert (done["state"], done["attempts"], done["lease_owner"]) == (JobState.COMPLETED, 2, None)


def test_fencing_sorts_a_mixed_batch(engine: Engine, clock: ShiftedClock) -> None:
    """One settle with completions of a held and of a lost job: only the lost one is refused."""
    held, lost = enqueue(engine, clock, "x"), enqueue(engine, clock, "x")
    lease = timedelta(seconds=30)
    with engine.begin() as conn:
        assert len(jobs_db.claim(conn, owner="A", limit=10, now=clock.now(), lease=lease)) == 2
    with engine.begin() as conn:  # B's attempt 2 of `lost`, as after a rescue
        conn.execute(jobs.update().where(jobs.c.id == lost).values(attempts=2, lease_owner="B"))
        report = jobs_db.settle(conn, [jobs_db.Finished(held, 1, JobState.COMPLETED),
                                       jobs_db.Finished(lost, 1, JobState.COMPLETED)], now=clock.now())
    assert (report.written, report.fenced_off) == (1, [lost])
    assert row(engine, held)["state"] == JobState.COMPLETED
    assert (row(engine, lost)["state"], row(engine, lost)["lease_owner"]) == (JobState.RUNNING, "B")


def test_jobs_of_a_vanished_worker_are_run_again(engine: Engine, clock: ShiftedClock) -> None:
    ran: list[tuple[int, int]] = []

    async def record(ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        ran.append((ctx.job_id, ctx.attempt))
        return None

    job_id = enqueue(engine, clock, "work")
    last_chance = enqueue(engine, clock, "work", max_attempts=1)
    with engine.begin() as conn:  # a worker claims both, then dies without a word
        assert len(jobs_db.claim(conn, owner="ghost", limit=10, now=clock.now(), lease=timedelta(seconds=60))) == 2
    w = worker(engine, Registry([JobKind("work", record)]), clock, lease_seconds=60)
    assert asyncio.run(w.run_once()) == 0  # leases still valid: hands off
    assert row(engine, job_id)["lease_owner"] == "ghost"
    clock.advance(timedelta(seconds=61))
    assert asyncio.run(w.run_once()) == 1
    assert ran == [(job_id, 2)]
    revived = row(engine, job_id)
    assert (revived["state"], revived["attempts"]) == (JobState.COMPLETED, 2)
    dead = row(engine, last_chance)
    assert dead["state"] == JobState.DEAD and dead["attempts"] == 1
    assert "worker lost" in dead["last_error"]
    assert dead["lease_owner"] is None and dead["finished_at"] is not None


def test_running_jobs_keep_their_lease_alive(engine: Engine, clock: ShiftedClock) -> None:
    """A job that runs longer than its lease is not stolen: the heartbeat renews the lease."""
    job_id = enqueue(engine, clock, "long")
    seen_leases: list[Any] = []

    async def long(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        for _ in range(6):  # 1.5 s in all: five times the lease
            await asyncio.sleep(0.25)
            seen_leases.append((await asyncio.to_thread(row, engine, job_id))["lease_expires_at"])
        return None

    w = worker(engine, Registry([JobKind("long", long)]), clock, lease_seconds=0.3)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(w.run(stop))
        for _ in range(1000):  # bounded: ~10 s
            if (await asyncio.to_thread(row, engine, job_id))["state"] == JobState.COMPLETED:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await task

    asyncio.run(main())
    assert (w.stats["completed"], w.stats["fenced_off"]) == (1, 0)
    done = row(engine, job_id)
    assert (done["state"], done["attempts"]) == (JobState.COMPLETED, 1)
    assert len(set(seen_leases)) > 1  # renewed while running


# ---- periodic kinds ------------------------------------------------------------------------------
def test_periodic_kinds_run_once_per_interval_however_many_workers(database_url: str, engine: Engine,
                                                                  clock: ShiftedClock) -> None:
    ticks: list[int] = []

    async def tick(ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        ticks.append(ctx.job_id)
        return None

    def tick_rows() -> int:
        with engine.begin() as conn:
            return conn.execute(select(func.count()).select_from(jobs).where(jobs.c.kind == "tick")).scalar_one()

    registry = Registry([JobKind("tick", tick, every=timedelta(hours=1))])
    other = make_engine(database_url)

    async def both_workers_maintain() -> None:  # concurrently, each on its own connections
        await asyncio.gather(worker(engine, registry, clock).run_once(), worker(other, registry, clock).run_once())

    try:
        asyncio.run(both_workers_maintain())
        asyncio.run(both_workers_maintain())
        assert tick_rows() == 1
        assert len(ticks) == 1
        clock.advance(timedelta(hours=1))
        asyncio.run(both_workers_maintain())
        assert tick_rows() == 2
        assert len(set(ticks)) == len(ticks) == 2
        assert counts(engine) == {"completed": 2}
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


# ---- wake-up and stop ----------------------------------------------------------------------------
def test_wake_and_stop_cut_the_idle_wait_short(engine: Engine, clock: ShiftedClock) -> None:
    """With a one-minute poll, an idle worker still runs new work on wake() and stops on stop.set().
    The bounds (10 s) are far below the poll interval, so the test fails only if a signal is ignored."""
    done: list[int] = []

    async def record(ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        done.append(ctx.job_id)
        return None

    w = worker(engine, Registry([JobKind("r", record)]), clock, poll_seconds=60)

    async def wait_for_done(n: int) -> None:
        for _ in range(1000):  # bounded: ~10 s
            if len(done) >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"only {len(done)} of {n} jobs ran")

    async def main() -> None:
        stop = asyncio.Event()
        first = await asyncio.to_thread(enqueue, engine, clock, "r")
        task = asyncio.create_task(w.run(stop))
        await wait_for_done(1)
        await asyncio.sleep(0.3)  # let the worker settle and go idle
        second = await asyncio.to_thread(enqueue, engine, clock, "r")
        w.wake()
        await wait_for_done(2)
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        assert done == [first, second]

    asyncio.run(main())
    assert counts(engine) == {"completed": 2}
