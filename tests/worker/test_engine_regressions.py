"""Regression tests for engine defects found while writing the engine tests (each was first
pinned by a strict xfail, then fixed): leases renewed while draining, error texts PostgreSQL
cannot store, an engine error after the handler returned, a handler's own TimeoutError, and
worker names longer than jobs.lease_owner."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import Engine

from herald.db.engine import make_engine
from herald.domain.clock import ShiftedClock
from herald.domain.jobs import JobState, Outcome, Retry
from herald.worker.engine import Worker
from herald.worker.registry import JobContext, JobKind, Registry
from tests.worker.support import FrozenClock, enqueue, row


def test_a_draining_worker_keeps_its_leases(database_url: str, engine: Engine, clock: ShiftedClock) -> None:
    starts: Counter[int] = Counter()

    async def slow(ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        starts[ctx.attempt] += 1
        await asyncio.sleep(0.6)  # four times the lease: fine while the heartbeat runs
        return None

    job_id = enqueue(engine, clock, "slow")
    other_engine = make_engine(database_url)
    draining = Worker(engine, Registry([JobKind("slow", slow)]), clock=clock, lease_seconds=0.15,
                      shutdown_grace_seconds=10, poll_seconds=0.02, name="draining")
    other = Worker(other_engine, Registry([JobKind("slow", slow)]), clock=clock, lease_seconds=0.15,
                   poll_seconds=0.02, name="other")

    async def main() -> None:
        stop_draining, stop_other = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(draining.run(stop_draining))
        for _ in range(1000):  # bounded: ~10 s
            if starts:
                break
            await asyncio.sleep(0.01)
        stop_draining.set()  # SIGTERM: finish the job within the 10 s grace
        second = asyncio.create_task(other.run(stop_other))
        await asyncio.wait_for(first, timeout=10)
        for _ in range(1000):  # bounded: until the job is settled by someone
            if (await asyncio.to_thread(row, engine, job_id))["state"] == JobState.COMPLETED:
                break
            await asyncio.sleep(0.01)
        stop_other.set()
        await asyncio.wait_for(second, timeout=10)

    try:
        asyncio.run(main())
    finally:
        other_engine.dispose()
    assert dict(starts) == {1: 1}, f"runs by attempt: {dict(starts)}"
    assert (draining.stats["completed"], draining.stats["fenced_off"]) == (1, 0)
    assert row(engine, job_id)["attempts"] == 1


def test_an_error_message_postgresql_cannot_store_does_not_wedge_the_worker(
        database_url: str, engine: Engine) -> None:
    clock = FrozenClock()

    async def garbled(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        raise ValueError("provider replied b'\x00\x01'")

    async def fine(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        return None

    w = Worker(engine, Registry([JobKind("garbled", garbled), JobKind("fine", fine)]), clock=clock)
    bad = enqueue(engine, clock, "garbled")
    asyncio.run(w.run_once())
    good = enqueue(engine, clock, "fine")
    asyncio.run(w.run_once())
    failed = row(engine, bad)
    assert failed["state"] == JobState.AVAILABLE and "provider replied" in failed["last_error"]
    assert row(engine, good)["state"] == JobState.COMPLETED


def test_an_absurd_retry_delay_does_not_leave_the_job_running(engine: Engine) -> None:
    clock = FrozenClock()

    async def far_future(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        return Retry(after=1e12, reason="come back in 30,000 years")

    job_id = enqueue(engine, clock, "far")
    w = Worker(engine, Registry([JobKind("far", far_future)]), clock=clock)
    asyncio.run(w.run_once())
    assert row(engine, job_id)["state"] != JobState.RUNNING
    assert w._held == {}  # nothing left for the heartbeat to renew


def test_a_timeout_raised_by_the_handler_keeps_its_own_message(engine: Engine) -> None:
    clock = FrozenClock()

    async def smtp(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        raise TimeoutError("SMTP server did not answer within 10s")

    job_id = enqueue(engine, clock, "smtp")
    asyncio.run(Worker(engine, Registry([JobKind("smtp", smtp)]), clock=clock).run_once())
    assert "SMTP server did not answer" in row(engine, job_id)["last_error"]


def test_a_worker_on_a_host_with_a_long_name_can_claim(database_url: str,
                                                       engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "worker-" + "x" * 57)  # 64 characters
    clock = FrozenClock()

    async def fine(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        return None

    job_id = enqueue(engine, clock, "fine")
    assert asyncio.run(Worker(engine, Registry([JobKind("fine", fine)]), clock=clock).run_once()) == 1
    assert row(engine, job_id)["state"] == JobState.COMPLETED
