"""The periodic `privacy.retention` job (worker/kinds.py) applies every workspace's limits."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import insert, select

from herald.bootstrap import Container
from herald.db.tables import events
from herald.domain.clock import ShiftedClock
from herald.domain.ids import new_id
from herald.services import retention
from herald.worker.kinds import build_registry
from herald.worker.registry import JobContext
from tests.services.support import make_shop


def test_retention_job_runs_every_six_hours_and_deletes_old_data(container: Container, clock: ShiftedClock) -> None:
    now = clock.now()
    shop = make_shop(container.engine, now)
    with container.engine.begin() as conn:
        retention.set_settings(conn, shop.workspace_id, {"events": 7})
        for age, event_id in ((3, "evt_new"), (8, "evt_old")):
            conn.execute(insert(events).values(id=new_id("evt"), workspace_id=shop.workspace_id, name=event_id,
                                               source="api", properties={}, occurred_at=now - timedelta(days=age),
                                               received_at=now))
    kind = build_registry(container).get(retention.JOB_KIND)
    assert kind is not None and kind.every == timedelta(hours=6)
    outcome = asyncio.run(kind.handler(JobContext(1, kind.name, 1, kind.max_attempts), {}))
    assert outcome is None
    with container.engine.begin() as conn:
        assert conn.execute(select(events.c.name)).scalars().all() == ["evt_new"]
