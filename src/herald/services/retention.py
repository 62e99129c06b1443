"""Retention: how many days each kind of data is kept, per workspace, and the deletion of what is
older (GDPR storage limitation). The limits live in workspaces.settings["retention_days"]; only
that key of the settings JSON is read or written here (other keys, such as the send policy's, are
left as they are: read-modify-write under a row lock in the caller's transaction).

Kinds and what ages out:
- events: events whose occurred_at is past the limit;
- messages: finished messages (not queued or sending) created before the limit, with their events;
- message_events: delivery/engagement events recorded before the limit (the message stays);
- webhook_deliveries: store webhooks received before the limit and already processed (or failed,
  or of an unknown topic); one not yet processed is never deleted;
- checkouts_abandoned: checkouts never completed (completed_at IS NULL) started before the limit;
- imports: finished imports (completed, failed, cancelled) whose last change is past the limit,
  with their error rows and the uploaded file Herald kept for them (never a file the CLI was
  pointed at).

Deletion is in keyset batches (`batch` rows, never one giant DELETE). `apply` works in the
caller's transaction; `run_all` (the periodic `privacy.retention` job) commits every batch, so a
large backlog is worked off in short transactions and a stop loses nothing."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import structlog
from sqlalchemy import ColumnElement, Connection, Engine, Table, and_, delete, func, select

from herald.db.tables import checkouts, events, import_errors, imports, message_events, messages, webhook_deliveries
from herald.db.tables import workspaces as workspaces_table
from herald.domain.errors import FieldProblem, InvalidInput
from herald.services import workspaces

log = structlog.get_logger(__name__)

SETTINGS_KEY: Final = "retention_days"
DEFAULTS: Final[Mapping[str, int]] = {
    "events": 730,
    "messages": 400,
    "message_events": 400,
    "webhook_deliveries": 30,
    "checkouts_abandoned": 180,
    "imports": 30,
}
MAX_DAYS: Final = 36_500
BATCH: Final = 5000
JOB_KIND: Final = "privacy.retention"


# ---- settings ----------------------------------------------------------------------------------------
def validate(data: Any) -> dict[str, int]:
    """{kind: days} with known kinds and whole days 1..MAX_DAYS; every problem is reported."""
    if not isinstance(data, Mapping):
        raise InvalidInput.on(SETTINGS_KEY, f"must be an object of kind -> days, e.g. {{\"events\": 365}}; "
                                            f"kinds: {', '.join(DEFAULTS)}")
    problems: list[FieldProblem] = []
    for kind, days in data.items():
        where = f"{SETTINGS_KEY}.{kind}"
        if kind not in DEFAULTS:
            problems.append(FieldProblem(where, f"unknown kind; use one of {', '.join(DEFAULTS)}"))
        elif isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
            problems.append(FieldProblem(where, f"must be a whole number of days from 1 to {MAX_DAYS}"))
    if problems:
        raise InvalidInput("; ".join(f"{p.field}: {p.reason}" for p in problems), fields=problems)
    return {str(kind): int(days) for kind, days in data.items()}


def effective(stored: Any) -> dict[str, int]:
    """The defaults overlaid with the valid stored values (the stored key may be missing)."""
    limits = dict(DEFAULTS)
    if isinstance(stored, Mapping):
        for kind, days in stored.items():
            if kind in DEFAULTS and not isinstance(days, bool) and isinstance(days, int) and 1 <= days <= MAX_DAYS:
                limits[kind] = days
    return limits


def get_settings(conn: Connection, workspace_id: str) -> dict[str, Any]:
    """{"retention_days": the limits in force, "overrides": what the workspace set, "defaults": ...}."""
    stored = workspaces.settings_of(conn, workspace_id).get(SETTINGS_KEY) or {}
    return {SETTINGS_KEY: effective(stored), "overrides": dict(stored) if isinstance(stored, Mapping) else {},
            "defaults": dict(DEFAULTS)}


def set_settings(conn: Connection, workspace_id: str, retention_days: Any) -> dict[str, Any]:
    """Replace the workspace's overrides (kinds left out use the default); other settings keys stay."""
    overrides = validate(retention_days)
    workspaces.set_setting(conn, workspace_id, SETTINGS_KEY, overrides)
    return get_settings(conn, workspace_id)


# ---- what ages out -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Kind:
    table: Table
    old: Callable[[str, datetime], ColumnElement[bool]]  # (workspace, cutoff) -> the rows to delete
    children: tuple[tuple[Table, str], ...] = ()  # (table, column naming the parent id), deleted first
    files: bool = False  # the rows name uploaded files to remove (imports)


def _events_old(ws: str, cutoff: datetime) -> ColumnElement[bool]:
    return and_(events.c.workspace_id == ws, events.c.occurred_at < cutoff)


def _messages_old(ws: str, cutoff: datetime) -> ColumnElement[bool]:
    return and_(messages.c.workspace_id == ws, messages.c.created_at < cutoff,
                messages.c.status.not_in(("queued", "sending")))


def _message_events_old(ws: str, cutoff: datetime) -> ColumnElement[bool]:
    return and_(message_events.c.workspace_id == ws, message_events.c.recorded_at < cutoff)


def _webhooks_old(ws: str, cutoff: datetime) -> ColumnElement[bool]:
    w = webhook_deliveries.c
    return and_(w.workspace_id == ws, w.status.in_(("processed", "unknown_topic", "failed")), w.received_at < cutoff)


def _checkouts_old(ws: str, cutoff: datetime) -> ColumnElement[bool]:
    c = checkouts.c
    return and_(c.workspace_id == ws, c.completed_at.is_(None), c.started_at < cutoff)


def _imports_old(ws: str, cutoff: datetime) -> ColumnElement[bool]:
    i = imports.c
    return and_(i.workspace_id == ws, i.state.in_(("completed", "failed", "cancelled")),
                func.coalesce(i.finished_at, i.updated_at) < cutoff)


KINDS: Final[Mapping[str, _Kind]] = {
    "message_events": _Kind(message_events, _message_events_old),
    "messages": _Kind(messages, _messages_old, children=((message_events, "message_id"),)),
    "events": _Kind(events, _events_old),
    "webhook_deliveries": _Kind(webhook_deliveries, _webhooks_old),
    "checkouts_abandoned": _Kind(checkouts, _checkouts_old),
    "imports": _Kind(imports, _imports_old, children=((import_errors, "import_id"),), files=True),
}


@dataclass(slots=True)
class _Step:
    seen: int  # rows selected; fewer than the batch size means the kind is done
    deleted: int
    after: Any  # the last id seen: the next batch starts after it
    files: list[Path]


def _step(conn: Connection, kind: _Kind, workspace_id: str, cutoff: datetime, after: Any, batch: int) -> _Step:
    """Delete one batch (at most `batch` rows, their children first, also in bounded batches)."""
    key = kind.table.c.id
    columns = [key, kind.table.c.path, kind.table.c.options] if kind.files else [key]
    query = select(*columns).where(kind.old(workspace_id, cutoff))
    if after is not None:
        query = query.where(key > after)
    rows = conn.execute(query.order_by(key).limit(batch)).all()
    if not rows:
        return _Step(0, 0, after, [])
    ids = [r.id for r in rows]
    for child, column in kind.children:
        _delete_children(conn, child, child.c[column], ids, batch)
    deleted = conn.execute(delete(kind.table).where(key.in_(ids))).rowcount
    files = [Path(r.path) for r in rows if kind.files and (r.options or {}).get("owned_file")]
    return _Step(len(ids), max(int(deleted), 0), ids[-1], files)


def _delete_children(conn: Connection, child: Table, parent: Any, parent_ids: list[Any], batch: int) -> None:
    while True:  # each statement removes up to `batch` rows: ends when fewer remain
        chunk = select(child.c.id).where(parent.in_(parent_ids)).limit(batch).scalar_subquery()
        if conn.execute(delete(child).where(child.c.id.in_(chunk))).rowcount < batch:
            return


def _cutoffs(limits: Mapping[str, int], now: datetime) -> dict[str, datetime]:
    return {kind: now - timedelta(days=days) for kind, days in limits.items()}


def _unlink(files: list[Path]) -> None:
    for path in files:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("retention_file_not_removed", path=str(path), error=exc.strerror)


# ---- applying ----------------------------------------------------------------------------------------
def apply(conn: Connection, workspace_id: str, settings: Mapping[str, int], now: datetime,
          batch: int = BATCH) -> dict[str, int]:
    """Delete what is past its limit in the workspace, in the caller's transaction; {kind: rows deleted}.

    `settings` is {kind: days} (missing kinds use DEFAULTS). The files of deleted imports are
    removed at the end; should the caller then roll back, those finished imports remain, fileless."""
    limits = {**DEFAULTS, **validate(settings)}
    deleted: dict[str, int] = {}
    files: list[Path] = []
    for name, cutoff in _cutoffs(limits, now).items():
        deleted[name], after = 0, None
        while True:  # keyset batches: ends at the first short batch
            step = _step(conn, KINDS[name], workspace_id, cutoff, after, batch)
            deleted[name] += step.deleted
            files += step.files
            if step.seen < batch:
                break
            after = step.after
    _unlink(files)
    return deleted


def run_workspace(engine: Engine, workspace_id: str, limits: Mapping[str, int], now: datetime, *,
                  batch: int = BATCH, should_stop: Callable[[], bool] | None = None) -> tuple[dict[str, int], bool]:
    """Like `apply`, committing each batch; ({kind: rows deleted}, finished). With `should_stop`,
    stops between batches when it answers True (finished is then False)."""
    deleted = dict.fromkeys(DEFAULTS, 0)
    for name, cutoff in _cutoffs(effective(limits), now).items():
        after = None
        while True:  # keyset batches: ends at the first short batch
            if should_stop is not None and should_stop():
                return deleted, False
            with engine.begin() as conn:
                step = _step(conn, KINDS[name], workspace_id, cutoff, after, batch)
            _unlink(step.files)  # after the commit: a file goes only with its row
            deleted[name] += step.deleted
            if step.seen < batch:
                break
            after = step.after
    return deleted, True


def run_all(engine: Engine, now: datetime, *, batch: int = BATCH,
            should_stop: Callable[[], bool] | None = None) -> tuple[dict[str, int], bool]:
    """Apply every workspace's limits (the periodic job); (totals per kind, finished)."""
    totals = dict.fromkeys(DEFAULTS, 0)
    after = ""
    w = workspaces_table.c
    while True:  # workspaces in id order, a page at a time
        with engine.begin() as conn:
            page = conn.execute(select(w.id, w.settings).where(w.id > after).order_by(w.id).limit(100)).all()
        for row in page:
            deleted, finished = run_workspace(engine, row.id, (row.settings or {}).get(SETTINGS_KEY) or {}, now,
                                              batch=batch, should_stop=should_stop)
            totals = {k: totals[k] + deleted[k] for k in totals}
            if not finished:
                return totals, False
        if len(page) < 100:
            return totals, True
        after = page[-1].id
