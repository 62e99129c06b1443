"""Helpers shared by the work-engine tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select

from herald.db import jobs as jobs_db
from herald.db.tables import jobs
from herald.domain.clock import Clock, ShiftedClock


class FrozenClock(ShiftedClock):
    """A ShiftedClock that does not tick by itself: only `advance` moves it, so due times and
    backoff delays can be compared exactly. Use it with `Worker.run_once`, not `Worker.run`
    (leases would never age while a job runs)."""

    def __init__(self) -> None:
        super().__init__()
        self._start = datetime.now(UTC)

    def now(self) -> datetime:
        return self._start + self.offset


def enqueue(engine: Engine, clock: Clock, kind: str, payload: dict[str, Any] | None = None,
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


def counts(engine: Engine, kind: str | None = None) -> dict[str, int]:
    """Jobs by state; only those of `kind` if given (a real worker also runs its periodic kinds)."""
    with engine.begin() as conn:
        if kind is None:
            return jobs_db.counts_by_state(conn)
        rows = conn.execute(select(jobs.c.state, func.count()).where(jobs.c.kind == kind).group_by(jobs.c.state))
        return {state: n for state, n in rows}
