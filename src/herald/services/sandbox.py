"""Sandbox mode over the database (rules in domain/sandbox.py): whether a workspace is in it,
the provider row that stands in for its real providers, and the simulated delivery callbacks,
which arrive as `sandbox.event` jobs and go through feedback like a real provider's."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Connection

from herald.db import jobs as jobs_db
from herald.domain.delivery import DeliveryEvent
from herald.domain.errors import InvalidInput
from herald.domain.sandbox import PROVIDER_KIND, SETTINGS_KEY, simulate
from herald.services import feedback, workspaces
from herald.services import providers as provider_rows

EVENT_JOB: Final = "sandbox.event"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def enabled(conn: Connection, workspace_id: str) -> bool:
    return enabled_in(workspaces.settings_of(conn, workspace_id))


def enabled_in(workspace_settings: Mapping[str, Any]) -> bool:
    """Sandbox mode, from a workspace's settings JSON already read."""
    return workspace_settings.get(SETTINGS_KEY) is True


def set_enabled(conn: Connection, workspace_id: str, on: Any) -> bool:
    if not isinstance(on, bool):
        raise InvalidInput.on("sandbox", "must be true or false")
    workspaces.set_setting(conn, workspace_id, SETTINGS_KEY, on)
    return on


def providers_for(conn: Connection, workspace_id: str, channel: str, *,
                  workspace_settings: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The providers a message of `channel` is tried on: the sandbox alone when the workspace is
    in sandbox mode (configured or not, real providers are never called), else the real ones.
    `workspace_settings`: the workspace's settings JSON when the caller already read it."""
    if workspace_settings is None:
        workspace_settings = workspaces.settings_of(conn, workspace_id)
    if enabled_in(workspace_settings):
        return [{"id": f"{PROVIDER_KIND}:{channel}", "kind": PROVIDER_KIND, "channel": channel,
                 "config": {"channel": channel}, "secrets": None, "updated_at": _EPOCH}]
    return provider_rows.for_channel(conn, workspace_id, channel)


def after_accepted(conn: Connection, m: Mapping[str, Any], row: Mapping[str, Any], now: datetime) -> None:
    """When the sandbox accepted a message, schedule its simulated "delivered" callback."""
    if row["kind"] != PROVIDER_KIND:
        return
    simulated = simulate(m["to_address"])
    if simulated.delivered_after is None:
        return
    jobs_db.enqueue(conn, EVENT_JOB, {"message_id": m["id"], "workspace_id": m["workspace_id"], "kind": "delivered"},
                    now=now, due_at=now + timedelta(seconds=simulated.delivered_after), max_attempts=5,
                    unique_key=f"{EVENT_JOB}:{m['id']}:delivered", workspace_id=m["workspace_id"])


def apply_event(conn: Connection, payload: Mapping[str, Any], now: datetime) -> None:
    """The `sandbox.event` job: the simulated provider callback, applied like a real one."""
    event = DeliveryEvent(kind=payload["kind"], provider=PROVIDER_KIND, occurred_at=now,
                          message_id=payload["message_id"], detail="sandbox")
    feedback.apply_events(conn, [event], now=now, workspace_id=payload["workspace_id"], source=PROVIDER_KIND)
