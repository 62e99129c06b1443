"""Every job kind Herald knows, registered in one place. Issues add their kinds here."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import structlog

from herald.bootstrap import Container
from herald.db import jobs as jobs_db
from herald.domain.jobs import Fail, Outcome
from herald.services import idempotency
from herald.worker.engine import Worker
from herald.worker.registry import JobContext, JobKind, Registry

log = structlog.get_logger("herald.jobs")

MAX_DIAG_SLEEP = 3600.0


def build_registry(container: Container) -> Registry:
    settings = container.settings

    async def prune(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        """Delete finished jobs past retention and idempotency keys past their 24 h+."""
        def tx() -> tuple[int, int]:
            with container.engine.begin() as conn:
                now = container.clock.now()
                jobs_gone = jobs_db.prune_finished(
                    conn, before=now - timedelta(hours=settings.completed_job_retention_hours))
                return jobs_gone, idempotency.purge_expired(conn, now=now)
        jobs_gone, keys_gone = await asyncio.to_thread(tx)
        log.info("pruned", jobs=jobs_gone, idempotency_keys=keys_gone)
        return None

    return Registry([
        JobKind("maintenance.prune", prune, max_attempts=3, every=timedelta(hours=1)),
        # Diagnostics: `herald jobs probe` and bench/engine.py measure the engine with these.
        JobKind("diag.noop", _noop),
        JobKind("diag.sleep", _sleep, timeout_seconds=MAX_DIAG_SLEEP + 60),
        JobKind("diag.fail", _fail, max_attempts=1),
    ])


async def _noop(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
    return None


async def _sleep(_ctx: JobContext, payload: dict[str, Any]) -> Outcome:
    await asyncio.sleep(min(float(payload.get("seconds", 1.0)), MAX_DIAG_SLEEP))
    return None


async def _fail(_ctx: JobContext, payload: dict[str, Any]) -> Outcome:
    return Fail(str(payload.get("reason", "diag.fail always fails")))


def build_worker(container: Container, **overrides: Any) -> Worker:
    """A worker configured from settings, woken at once by in-process enqueues."""
    s = container.settings
    options: dict[str, Any] = {
        "clock": container.clock, "concurrency": s.worker_concurrency,
        "batch_size": s.worker_batch_size, "poll_seconds": s.worker_poll_seconds,
        "lease_seconds": s.job_lease_seconds, "shutdown_grace_seconds": s.worker_shutdown_grace_seconds,
    }
    return Worker(container.engine, build_registry(container), **{**options, **overrides})
