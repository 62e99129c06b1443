"""The work queue in SQL: enqueue, claim with a lease, settle outcomes, rescue lost leases.

Claiming: PostgreSQL locks the due rows with FOR UPDATE SKIP LOCKED, so concurrent workers
take disjoint batches without waiting on each other. SQLite has one writer at a time; every
transaction starts with BEGIN IMMEDIATE (db/engine.py), so a claim is atomic across processes.

Fencing: each claim increments `attempts`, and every outcome is written only
`WHERE id = :id AND attempts = :attempt AND state = 'running'`. A worker that lost its lease
(stalled past it, and another worker took the job) can therefore never overwrite the newer
attempt's result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from herald.db.tables import jobs
from herald.db.types import UTCDateTime
from herald.domain.jobs import JobState

MAX_ERROR_HISTORY = 20
MAX_ERROR_CHARS = 4000


def storable_error(error: str | None) -> str | None:
    """Errors come from providers and handlers: cap their size, and escape NUL, which neither
    PostgreSQL text nor jsonb can hold (one unstorable message must not wedge a worker)."""
    if error is None:
        return None
    error = error.replace("\x00", "\\x00")
    return error if len(error) <= MAX_ERROR_CHARS else error[:MAX_ERROR_CHARS] + " …(truncated)"


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    id: int
    kind: str
    payload: dict[str, Any]
    attempt: int  # 1 for the first run; the fencing token for this lease
    max_attempts: int


@dataclass(frozen=True, slots=True)
class Finished:
    """Outcome of one attempt, to be written by `settle`."""

    job_id: int
    attempt: int
    state: JobState  # COMPLETED, AVAILABLE (retry at due_at) or DEAD
    due_at: datetime | None = None
    error: str | None = None


@dataclass(slots=True)
class SettleReport:
    written: int = 0
    fenced_off: list[int] = field(default_factory=list)  # lease lost: another attempt owns it


def enqueue(
    conn: Connection,
    kind: str,
    payload: dict[str, Any] | None = None,
    *,
    now: datetime,
    due_at: datetime | None = None,
    priority: int = 0,
    max_attempts: int = 20,
    unique_key: str | None = None,
    workspace_id: str | None = None,
) -> int | None:
    """Insert one job; returns its id, or None when `unique_key` is already taken."""
    row = {
        "kind": kind,
        "payload": payload or {},
        "state": JobState.AVAILABLE.value,
        "priority": priority,
        "due_at": due_at or now,
        "attempts": 0,
        "max_attempts": max_attempts,
        "unique_key": unique_key,
        "workspace_id": workspace_id,
        "created_at": now,
        "errors": [],
    }
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(jobs).values(row).on_conflict_do_nothing().returning(jobs.c.id)
    return conn.execute(stmt).scalar_one_or_none()


def enqueue_many(conn: Connection, kind: str, payloads: Iterable[dict[str, Any]], *, now: datetime,
                 max_attempts: int = 20, priority: int = 0) -> int:
    """Bulk insert (executemany) of jobs due now; returns how many."""
    rows = [
        {"kind": kind, "payload": p, "state": JobState.AVAILABLE.value, "priority": priority,
         "due_at": now, "attempts": 0, "max_attempts": max_attempts, "created_at": now, "errors": []}
        for p in payloads
    ]
    if rows:
        conn.execute(jobs.insert(), rows)
    return len(rows)


_CLAIM_PG = """
WITH due AS (
    SELECT id FROM jobs
    WHERE state = 'available' AND due_at <= :now
    ORDER BY priority, due_at, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET state = 'running', attempts = jobs.attempts + 1,
       lease_owner = :owner, lease_expires_at = :lease_until
FROM due WHERE jobs.id = due.id
RETURNING jobs.id, jobs.kind, jobs.payload, jobs.attempts, jobs.max_attempts
"""

_CLAIM_SQLITE = """
UPDATE jobs SET state = 'running', attempts = attempts + 1,
       lease_owner = :owner, lease_expires_at = :lease_until
WHERE id IN (
    SELECT id FROM jobs
    WHERE state = 'available' AND due_at <= :now
    ORDER BY priority, due_at, id
    LIMIT :limit
)
RETURNING id, kind, payload, attempts, max_attempts
"""


def _claim_stmt(dialect: str) -> Any:
    sql = _CLAIM_PG if dialect == "postgresql" else _CLAIM_SQLITE
    return (
        text(sql)
        .bindparams(bindparam("now", type_=UTCDateTime), bindparam("lease_until", type_=UTCDateTime))
        .columns(jobs.c.id, jobs.c.kind, jobs.c.payload, jobs.c.attempts, jobs.c.max_attempts)
    )


def claim(conn: Connection, *, owner: str, limit: int, now: datetime, lease: timedelta) -> list[ClaimedJob]:
    if limit <= 0:
        return []
    rows = conn.execute(
        _claim_stmt(conn.dialect.name),
        {"now": now, "lease_until": now + lease, "owner": owner, "limit": limit},
    ).all()
    claimed = [ClaimedJob(r.id, r.kind, r.payload or {}, r.attempts, r.max_attempts) for r in rows]
    claimed.sort(key=lambda j: j.id)
    return claimed


def settle(conn: Connection, outcomes: Sequence[Finished], *, now: datetime) -> SettleReport:
    """Write the outcomes of finished attempts, fenced by (id, attempt)."""
    report = SettleReport()
    done = [o for o in outcomes if o.state is JobState.COMPLETED]
    if done:
        result = conn.execute(*_complete_stmt(conn.dialect.name, done, now))
        if result.rowcount == len(done):
            report.written += len(done)
        else:
            lost = _not_owned(conn, done)
            report.written += len(done) - len(lost)
            report.fenced_off.extend(lost)
    for o in outcomes:
        if o.state is not JobState.COMPLETED:
            if _record_failure(conn, o, now):
                report.written += 1
            else:
                report.fenced_off.append(o.job_id)
    return report


_COMPLETE_PG = text("""
UPDATE jobs SET state = 'completed', finished_at = :now, lease_owner = NULL, lease_expires_at = NULL
FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS integer[])) AS done(id, attempt)
WHERE jobs.id = done.id AND jobs.attempts = done.attempt AND jobs.state = 'running'
""").bindparams(bindparam("now", type_=UTCDateTime))


def _complete_stmt(dialect: str, done: Sequence[Finished], now: datetime) -> tuple[Any, ...]:
    """One statement for the whole batch; the (id, attempt) pairs are the fencing tokens.

    PostgreSQL gets two array parameters: a fixed statement that psycopg parses once, where
    an expanded IN list of a hundred ids would be a new, long statement to parse every time."""
    if dialect == "postgresql":
        return _COMPLETE_PG, {"now": now, "ids": [o.job_id for o in done], "attempts": [o.attempt for o in done]}
    stmt = (
        update(jobs)
        .where(jobs.c.id.in_([o.job_id for o in done]),
               tuple_(jobs.c.id, jobs.c.attempts).in_([(o.job_id, o.attempt) for o in done]),
               jobs.c.state == JobState.RUNNING.value)
        .values(state=JobState.COMPLETED.value, finished_at=now, lease_owner=None, lease_expires_at=None)
    )
    return (stmt,)


def _not_owned(conn: Connection, outcomes: Sequence[Finished]) -> list[int]:
    """Which of these completions did not land: the row moved on to another attempt."""
    rows = conn.execute(
        select(jobs.c.id, jobs.c.attempts, jobs.c.state).where(jobs.c.id.in_([o.job_id for o in outcomes]))
    ).all()
    now_state = {r.id: (r.attempts, r.state) for r in rows}
    return [o.job_id for o in outcomes
            if now_state.get(o.job_id) != (o.attempt, JobState.COMPLETED.value)]


def _record_failure(conn: Connection, o: Finished, now: datetime) -> bool:
    error = storable_error(o.error)
    row = conn.execute(
        select(jobs.c.errors).where(jobs.c.id == o.job_id, jobs.c.attempts == o.attempt,
                                    jobs.c.state == JobState.RUNNING.value)
    ).first()
    if row is None:
        return False
    history = list(row.errors or [])[-(MAX_ERROR_HISTORY - 1):]
    history.append({"attempt": o.attempt, "at": now.isoformat(), "error": error})
    values: dict[str, Any] = {
        "state": o.state.value, "last_error": error, "errors": history,
        "lease_owner": None, "lease_expires_at": None,
    }
    if o.state is JobState.AVAILABLE:
        values["due_at"] = o.due_at or now
    else:
        values["finished_at"] = now
    conn.execute(update(jobs).where(jobs.c.id == o.job_id, jobs.c.attempts == o.attempt).values(values))
    return True


def extend_leases(conn: Connection, *, owner: str, job_ids: Sequence[int], until: datetime) -> int:
    if not job_ids:
        return 0
    result = conn.execute(
        update(jobs)
        .where(jobs.c.id.in_(list(job_ids)), jobs.c.lease_owner == owner,
               jobs.c.state == JobState.RUNNING.value)
        .values(lease_expires_at=until)
    )
    return result.rowcount


def release(conn: Connection, claimed: Sequence[tuple[int, int]], *, now: datetime) -> int:
    """Give back jobs a draining worker could not finish: due now, the attempt not counted."""
    released = 0
    for job_id, attempt in claimed:
        result = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.attempts == attempt, jobs.c.state == JobState.RUNNING.value)
            .values(state=JobState.AVAILABLE.value, attempts=attempt - 1, due_at=now,
                    lease_owner=None, lease_expires_at=None)
        )
        released += result.rowcount
    return released


def rescue_expired(conn: Connection, *, now: datetime) -> tuple[int, int]:
    """Jobs whose worker vanished (lease expired): retry now, or `dead` if out of attempts.

    Returns (made available again, moved to dead).
    """
    expired = (jobs.c.state == JobState.RUNNING.value) & (jobs.c.lease_expires_at < now)
    reason = "worker lost: lease expired while running (crash or stall)"
    dead = conn.execute(
        update(jobs)
        .where(expired, jobs.c.attempts >= jobs.c.max_attempts)
        .values(state=JobState.DEAD.value, finished_at=now, last_error=reason,
                lease_owner=None, lease_expires_at=None)
    ).rowcount
    revived = conn.execute(
        update(jobs)
        .where(expired)
        .values(state=JobState.AVAILABLE.value, due_at=now, last_error=reason,
                lease_owner=None, lease_expires_at=None)
    ).rowcount
    return revived, dead


def prune_finished(conn: Connection, *, before: datetime) -> int:
    """Delete completed and cancelled jobs finished before `before`. Dead jobs are kept."""
    return conn.execute(
        jobs.delete().where(
            jobs.c.state.in_([JobState.COMPLETED.value, JobState.CANCELLED.value]),
            jobs.c.finished_at < before,
        )
    ).rowcount


def counts_by_state(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
    return {state: n for state, n in rows}


def get(conn: Connection, job_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
    return dict(row) if row else None
