"""The worker loop: claim due jobs in batches, run them concurrently on asyncio, write outcomes.

One cycle = one database transaction that first settles the outcomes finished since the last
cycle and then claims up to the number of free slots. A heartbeat extends the leases of jobs
still held; a maintenance step revives jobs whose worker vanished and enqueues periodic kinds.
On stop the worker claims nothing more, waits up to the grace period for running jobs, settles
them, and gives back (releases) any it had to cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from herald.db import jobs as jobs_db
from herald.domain.clock import Clock, SystemClock
from herald.domain.jobs import Fail, JobState, Retry
from herald.worker.registry import JobContext, JobKind, Registry

log = structlog.get_logger("herald.worker")
T = TypeVar("T")
MAX_NAME = 64
MAX_RETRY_AFTER = timedelta(days=30).total_seconds()


class Worker:
    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        *,
        clock: Clock | None = None,
        concurrency: int = 50,
        batch_size: int = 100,
        poll_seconds: float = 0.5,
        lease_seconds: float = 60.0,
        shutdown_grace_seconds: float = 30.0,
        name: str | None = None,
        background: Sequence[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = (),
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.clock = clock or SystemClock()
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.lease = timedelta(seconds=lease_seconds)
        self.grace = shutdown_grace_seconds
        default_name = f"{socket.gethostname()[:40]}:{os.getpid()}:{os.urandom(2).hex()}"
        self.name = (name or default_name)[:MAX_NAME]  # it must fit jobs.lease_owner
        # Long-lived companions of `run` (e.g. the SMPP receipt consumers): each is called with an
        # event set once the jobs have drained, and is awaited (at most the grace period) after that.
        self.background = tuple(background)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._held: dict[int, int] = {}  # job id -> attempt, claimed and not yet settled
        self._outcomes: list[jobs_db.Finished] = []
        self._interrupted: list[tuple[int, int]] = []
        self._wake: asyncio.Event | None = None
        self._last_maintenance = 0.0
        self.stats = {"claimed": 0, "completed": 0, "retried": 0, "dead": 0, "fenced_off": 0}

    # ---- public -----------------------------------------------------------------------
    def wake(self) -> None:
        """Called (thread-safe via loop.call_soon_threadsafe) when new work was enqueued."""
        if self._wake is not None:
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        self._wake = asyncio.Event()
        log.info("worker started", worker=self.name, concurrency=self.concurrency)
        drained = asyncio.Event()  # leases are renewed until the drain is over, not just until stop
        heartbeat = asyncio.create_task(self._heartbeat(drained))
        companions = [asyncio.create_task(companion(drained)) for companion in self.background]
        try:
            while not stop.is_set():
                try:
                    progressed = await self._cycle()
                except DBAPIError as exc:
                    log.warning("database unavailable; retrying", error=str(exc.orig))
                    progressed = False
                    await _sleep_or_stop(stop, min(5.0, self.poll_seconds * 4))
                except Exception:  # a bug must not silently end the worker (in `serve` nobody would notice)
                    log.exception("worker cycle failed; retrying")
                    progressed = False
                    await _sleep_or_stop(stop, min(5.0, self.poll_seconds * 4))
                if not progressed:
                    await self._idle(stop)
        finally:
            await self._drain()
            drained.set()
            heartbeat.cancel()
            await self._stop_companions(companions)
            log.info("worker stopped", worker=self.name, **self.stats)

    async def run_once(self) -> int:
        """Claim one batch, run it to the end, settle it. Returns how many jobs ran (tests, CLI)."""
        self._wake = self._wake or asyncio.Event()
        await self._maintain(force=True)
        claimed = await self._settle_and_claim(self.batch_size)
        for job in claimed:
            self._start(job)
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self._settle_and_claim(0)
        return len(claimed)

    # ---- the cycle --------------------------------------------------------------------
    async def _cycle(self) -> bool:
        await self._maintain()
        free = min(self.concurrency - len(self._tasks), self.batch_size)
        had_outcomes = bool(self._outcomes)
        if free <= 0 and not had_outcomes:
            return False  # full and nothing finished: no transaction (on SQLite it would take the write lock)
        claimed = await self._settle_and_claim(free)
        for job in claimed:
            self._start(job)
        if claimed:
            await asyncio.sleep(0)  # let the new handlers take their first step
        return bool(claimed) or had_outcomes

    async def _settle_and_claim(self, limit: int) -> list[jobs_db.ClaimedJob]:
        """One transaction: write finished outcomes, then claim up to `limit` due jobs.

        Bookkeeping happens here, on the event loop; the thread only runs SQL."""
        outcomes, self._outcomes = self._outcomes, []
        try:
            report, claimed = await self._tx(self._settle_and_claim_tx, outcomes, limit)
        except BaseException:
            self._outcomes = outcomes + self._outcomes  # rolled back: keep them for the next try
            raise
        self._count(outcomes, report)
        for o in outcomes:
            self._held.pop(o.job_id, None)
        for job in claimed:
            self._held[job.id] = job.attempt
        self.stats["claimed"] += len(claimed)
        return claimed

    def _settle_and_claim_tx(self, conn: Connection, outcomes: list[jobs_db.Finished],
                             limit: int) -> tuple[jobs_db.SettleReport, list[jobs_db.ClaimedJob]]:
        now = self.clock.now()
        report = jobs_db.settle(conn, outcomes, now=now) if outcomes else jobs_db.SettleReport()
        claimed = jobs_db.claim(conn, owner=self.name, limit=limit, now=now, lease=self.lease)
        return report, claimed

    def _count(self, outcomes: list[jobs_db.Finished], report: jobs_db.SettleReport) -> None:
        for o in outcomes:
            key = {JobState.COMPLETED: "completed", JobState.AVAILABLE: "retried"}.get(o.state, "dead")
            self.stats[key] += 1
        if report.fenced_off:
            self.stats["fenced_off"] += len(report.fenced_off)
            log.warning("outcome discarded: lease was lost to another attempt", jobs=report.fenced_off)

    async def _idle(self, stop: asyncio.Event) -> None:
        assert self._wake is not None
        if self._outcomes:
            return
        self._wake.clear()
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=self.poll_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    # ---- running one job --------------------------------------------------------------
    def _start(self, job: jobs_db.ClaimedJob) -> None:
        self._tasks[job.id] = asyncio.create_task(self._execute(job), name=f"job-{job.id}")

    async def _execute(self, job: jobs_db.ClaimedJob) -> None:
        try:
            outcome = await self._outcome_of(job)
            # Append only now: `self._outcomes` is swapped for a new list by every settle, so the
            # list must be looked up after the await, never bound before it.
            self._outcomes.append(outcome)
        except asyncio.CancelledError:
            self._interrupted.append((job.id, job.attempt))
            raise
        finally:
            self._tasks.pop(job.id, None)
            if self._wake is not None:
                self._wake.set()

    async def _outcome_of(self, job: jobs_db.ClaimedJob) -> jobs_db.Finished:
        kind = self.registry.get(job.kind)
        if kind is None:
            return self._finish(job, JobState.DEAD,
                                error=f"unknown job kind {job.kind!r} (not registered in worker/kinds.py)")
        try:
            return await self._call(job, kind)
        except Exception as exc:  # a bug of ours, not the handler's: never leave the job held forever
            log.exception("engine error while finishing a job", job_id=job.id, kind=job.kind)
            return self._finish(job, JobState.DEAD, error=f"engine error: {type(exc).__name__}: {exc}")

    async def _call(self, job: jobs_db.ClaimedJob, kind: JobKind) -> jobs_db.Finished:
        ctx = JobContext(job_id=job.id, kind=job.kind, attempt=job.attempt, max_attempts=job.max_attempts)
        deadline = asyncio.timeout(kind.timeout_seconds)  # unlike wait_for, no extra task per job
        try:
            async with deadline:
                result = await kind.handler(ctx, job.payload)
        except TimeoutError as exc:
            if deadline.expired():
                return self._retry_or_die(job, kind, f"timed out after {kind.timeout_seconds:g}s", None)
            return self._retry_or_die(job, kind, f"TimeoutError: {exc}", None)  # the handler's own timeout
        except Exception as exc:
            log.warning("job failed", job_id=job.id, kind=job.kind, attempt=job.attempt,
                        error=f"{type(exc).__name__}: {exc}")
            return self._retry_or_die(job, kind, f"{type(exc).__name__}: {exc}", None)
        if result is None:
            return self._finish(job, JobState.COMPLETED)
        if isinstance(result, Retry):
            return self._retry_or_die(job, kind, result.reason, min(max(0.0, result.after), MAX_RETRY_AFTER))
        if isinstance(result, Fail):
            return self._finish(job, JobState.DEAD, error=result.reason)
        return self._finish(job, JobState.DEAD, error=f"handler returned {result!r}, not None/Retry/Fail")

    def _retry_or_die(self, job: jobs_db.ClaimedJob, kind: JobKind, error: str,
                      after: float | None) -> jobs_db.Finished:
        if job.attempt >= job.max_attempts:
            return self._finish(job, JobState.DEAD,
                                error=f"gave up after {job.attempt} attempts; last error: {error}")
        delay = kind.backoff.delay(job.attempt) if after is None else after
        due = self.clock.now() + timedelta(seconds=delay)
        return jobs_db.Finished(job.id, job.attempt, JobState.AVAILABLE, due_at=due, error=error)

    def _finish(self, job: jobs_db.ClaimedJob, state: JobState, error: str | None = None) -> jobs_db.Finished:
        return jobs_db.Finished(job.id, job.attempt, state, error=error)

    # ---- leases, maintenance, shutdown --------------------------------------------------
    async def _heartbeat(self, stop: asyncio.Event) -> None:
        interval = max(self.lease.total_seconds() / 3, 0.05)
        while not stop.is_set():
            await _sleep_or_stop(stop, interval)
            held = list(self._held)
            if not held:
                continue
            until = self.clock.now() + self.lease
            try:
                await self._tx(self._extend_tx, held, until)
            except Exception as exc:
                log.warning("lease heartbeat failed", error=str(getattr(exc, "orig", exc)))

    def _extend_tx(self, conn: Connection, held: list[int], until: datetime) -> int:
        return jobs_db.extend_leases(conn, owner=self.name, job_ids=held, until=until)

    async def _maintain(self, force: bool = False) -> None:
        interval = max(min(self.lease.total_seconds() / 2, 30.0), 0.05)
        if not force and time.monotonic() - self._last_maintenance < interval:
            return
        self._last_maintenance = time.monotonic()
        revived, dead = await self._tx(self._maintenance_tx)
        if revived or dead:
            log.warning("revived jobs of a lost worker", revived=revived, dead=dead)

    def _maintenance_tx(self, conn: Connection) -> tuple[int, int]:
        now = self.clock.now()
        for kind in self.registry.periodic():
            assert kind.every is not None
            slot = int(now.timestamp() // kind.every.total_seconds())
            jobs_db.enqueue(conn, kind.name, {}, now=now, max_attempts=kind.max_attempts,
                            unique_key=f"periodic:{kind.name}:{slot}")
        return jobs_db.rescue_expired(conn, now=now)

    async def _drain(self) -> None:
        if self._tasks:
            log.info("draining in-flight jobs", jobs=len(self._tasks), grace_seconds=self.grace)
            _, pending = await asyncio.wait(list(self._tasks.values()), timeout=self.grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for attempt in range(5):
            try:
                await self._final_settle()
                return
            except DBAPIError as exc:
                log.warning("final settle failed; retrying", error=str(exc.orig), attempt=attempt + 1)
                await asyncio.sleep(0.5 * (attempt + 1))
        log.error("could not record outcomes at shutdown; their leases will expire and they will rerun")

    async def _stop_companions(self, companions: list[asyncio.Task[None]]) -> None:
        if not companions:
            return
        _, pending = await asyncio.wait(companions, timeout=self.grace)
        for task in pending:
            task.cancel()
        for outcome in await asyncio.gather(*companions, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("background task failed", error=f"{type(outcome).__name__}: {outcome}")

    async def _final_settle(self) -> None:
        await self._settle_and_claim(0)
        if self._interrupted:
            interrupted = list(self._interrupted)
            released = await self._tx(
                lambda c: jobs_db.release(c, interrupted, now=self.clock.now()))
            log.info("released unfinished jobs", released=released)
            for job_id, _ in interrupted:
                self._held.pop(job_id, None)
            self._interrupted = []

    async def _tx(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(self._in_tx, fn, *args)

    def _in_tx(self, fn: Callable[..., T], *args: Any) -> T:
        with self.engine.begin() as conn:
            return fn(conn, *args)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
