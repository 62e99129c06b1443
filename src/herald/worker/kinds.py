"""Every job kind Herald knows, registered in one place. Issues add their kinds here."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import structlog

from herald.bootstrap import Container
from herald.db import jobs as jobs_db
from herald.domain.jobs import Fail, Outcome, Retry
from herald.services import email, idempotency, intake, messaging, retention, sandbox
from herald.services import imports as csv_imports
from herald.services import segment as segment_intake
from herald.worker.engine import Worker
from herald.worker.registry import JobContext, JobKind, Registry
from herald.worker.smpp_receipts import ReceiptConsumers

log = structlog.get_logger("herald.jobs")

MAX_DIAG_SLEEP = 3600.0
RETENTION_SLICE_SECONDS = 240.0  # per attempt, well inside the default 300 s job timeout


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

    async def intake_events(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        """Resolve identities of committed Segment-spec events (services/segment.py)."""
        await asyncio.to_thread(segment_intake.process_all, container.engine, container.clock.now)
        return None

    async def intake_webhook(ctx: JobContext, payload: dict[str, Any]) -> Outcome:
        """Translate one stored store webhook and write what it says (services/intake.py)."""
        def tx() -> intake.Processed:
            with container.engine.begin() as conn:
                return intake.process(conn, payload["delivery_id"], container.connectors, container.clock.now(),
                                      final_attempt=ctx.attempt >= ctx.max_attempts)
        result = await asyncio.to_thread(tx)
        if result.status == "waiting":  # e.g. a fulfilment before its order: the order webhook may come
            return Retry(min(15.0 * 2 ** (ctx.attempt - 1), 3600.0), result.detail or "waiting")
        log.info("webhook_processed", delivery_id=payload["delivery_id"], status=result.status)
        return None

    async def intake_import(_ctx: JobContext, payload: dict[str, Any]) -> Outcome:
        """Run (or resume) an uploaded CSV import (services/imports.py)."""
        return await csv_imports.run_job(container.engine, container.clock, payload["import_id"])

    async def send_message(ctx: JobContext, payload: dict[str, Any]) -> Outcome:
        """Check, render and send one message through the workspace's provider: email by
        services/email.py, the other channels by services/messaging.py (the payload names it)."""
        if payload.get("channel", "email") == "email":
            return await email.deliver(container.email, payload["message_id"], attempt=ctx.attempt,
                                       max_attempts=ctx.max_attempts)
        return await messaging.deliver(container.messaging, payload["message_id"], attempt=ctx.attempt,
                                       max_attempts=ctx.max_attempts)

    async def apply_retention(_ctx: JobContext, _payload: dict[str, Any]) -> Outcome:
        """Delete data past each workspace's retention limits (services/retention.py), committing
        every batch; a large backlog continues in the next attempt instead of outliving the timeout."""
        deadline = time.monotonic() + RETENTION_SLICE_SECONDS
        totals, finished = await asyncio.to_thread(retention.run_all, container.engine, container.clock.now(),
                                                   should_stop=lambda: time.monotonic() > deadline)
        log.info("retention_applied", finished=finished, **totals)
        return None if finished else Retry(1.0, "more data past its retention limit: continuing")

    async def sandbox_event(_ctx: JobContext, payload: dict[str, Any]) -> Outcome:
        """A sandbox workspace's simulated provider callback (services/sandbox.py)."""
        def tx() -> None:
            with container.engine.begin() as conn:
                sandbox.apply_event(conn, payload, container.clock.now())
        await asyncio.to_thread(tx)
        return None

    return Registry([
        JobKind("maintenance.prune", prune, max_attempts=3, every=timedelta(hours=1)),
        # Enqueued by the event writer for each second with ingestion; periodic as a safety net.
        JobKind(segment_intake.INTAKE_JOB, intake_events, every=timedelta(seconds=2)),
        JobKind(intake.JOB_KIND, intake_webhook, max_attempts=25),
        JobKind(csv_imports.JOB_KIND, intake_import, max_attempts=csv_imports.JOB_ATTEMPTS,
                timeout_seconds=csv_imports.JOB_TIMEOUT_SECONDS),
        JobKind(email.JOB_KIND, send_message, max_attempts=email.MAX_ATTEMPTS),
        JobKind(sandbox.EVENT_JOB, sandbox_event, max_attempts=5),
        JobKind(retention.JOB_KIND, apply_retention, max_attempts=100, every=timedelta(hours=6)),
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
    # SMPP receipts and incoming SMS, on the provider objects the send path uses (worker/smpp_receipts.py)
    receipts = ReceiptConsumers(container.engine, container.messaging.providers, container.clock.now)
    options["background"] = [receipts.run]
    worker = Worker(container.engine, build_registry(container), **{**options, **overrides})
    receipts.wake = worker.wake
    return worker
