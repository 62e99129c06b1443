"""Segment-spec event intake: parse and validate messages, commit them through a group-commit
writer, and resolve identities after commit.

Wire format (Segment HTTP Tracking API, https://segment.com/docs/connections/sources/catalog/
libraries/server/http-api/ and the common fields in .../spec/common/):
- calls `identify`, `track`, `page`, `screen`, `group`, `alias`; `batch` = {"batch": [...],
  "sentAt", "context"} where each message's `type` names its call;
- every call needs `userId` or `anonymousId`, except `alias` (`previousId` + `userId`); `track`
  needs `event`, `group` needs `groupId`;
- `messageId` deduplicates (here: events.dedupe_key, source 'segment', unique per workspace);
- clock skew: `timestamp` is the device's clock; with `sentAt` (the device's clock when the
  request left) the time it happened is timestamp + (receivedAt - sentAt);
- limits: 32 KB per message, 500 KB and 2,500 messages per batch.

The ingestion path does as little Python per event as it can: one orjson parse of the body, a
dict walk per message, one orjson dump (the stored message), and multi-row INSERTs of plain
tuples on the DB-API cursor (no ORM, no per-row type processors). `EventWriter` batches the rows
of every concurrent request into one transaction, so one fsync serves many requests, and answers
each request only after that commit (G1).

Where the time goes on SQLite (bench/ingest.py, 100-event batches): the writer thread is the
bottleneck, and most of its time is SQLite inserting into uq_events_dedupe — messageIds are
random (uuid4), so every row dirties a different leaf page of that index, which the commit then
writes to the WAL. The Python work is therefore kept off the writer thread: a request's rows are
turned into driver parameters (with their ids) by the request itself, while the writer commits
the previous group, and the writer thread only flattens, executes and commits.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson
import structlog
from sqlalchemy import Connection, Engine, bindparam, select, update
from sqlalchemy.exc import SQLAlchemyError

from herald.db import jobs as jobs_db
from herald.db.tables import contact_identities, contacts, events, stores
from herald.domain.auth import hash_api_key
from herald.domain.errors import FieldProblem
from herald.services import identity

log = structlog.get_logger("herald.segment")

SOURCE = "segment"
KINDS = frozenset({"identify", "track", "page", "screen", "group", "alias"})
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_MESSAGES = 2500
MAX_ID_CHARS = 255  # events.user_id / anonymous_id / dedupe_key
MAX_NAME_CHARS = 200  # events.name
INTAKE_JOB = "intake.events"
INTAKE_DELAY = timedelta(milliseconds=500)  # after the end of the 1 s slot the job is due in
PROCESS_LIMIT = 500


def hash_write_key(key: str) -> str:
    """Only this is stored (stores.write_key_hash): SHA-256 hex, like API keys."""
    return hash_api_key(key)


def store_namespace(store_id: str) -> str:
    return identity.store_namespace(store_id)


def anonymous_namespace(store_id: str) -> str:
    """Segment anonymousIds of one store: a later identify with both ids links them."""
    return "anon:" + store_id.lower()


@dataclass(frozen=True, slots=True)
class StoreRef:
    store_id: str
    workspace_id: str


def find_store_by_write_key(conn: Connection, key: str) -> StoreRef | None:
    row = conn.execute(select(stores.c.id, stores.c.workspace_id)
                       .where(stores.c.write_key_hash == hash_write_key(key))).first()
    return None if row is None else StoreRef(row.id, row.workspace_id)


class WriteKeyCache:
    """Write key -> store, remembered for `ttl` seconds (unknown keys for `negative_ttl`) so the
    hot path does not read the stores table per request. A rotated key keeps working for at
    most `ttl` seconds in each API process."""

    def __init__(self, ttl: float = 5.0, negative_ttl: float = 1.0, max_entries: int = 10_000) -> None:
        self.ttl, self.negative_ttl, self.max_entries = ttl, negative_ttl, max_entries
        self._entries: dict[str, tuple[float, StoreRef | None]] = {}

    def get(self, token: str) -> tuple[bool, StoreRef | None]:
        """(known, store): known is False when the token must be looked up."""
        hit = self._entries.get(token)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def put(self, token: str, store: StoreRef | None) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[token] = (time.monotonic() + (self.ttl if store else self.negative_ttl), store)


# ---- parsing ------------------------------------------------------------------------------
class MessageProblem(ValueError):
    """One message cannot be accepted; `field` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


class BodyProblem(ValueError):
    """The request as a whole is unusable (not JSON, not an object, batch not a list, ...)."""


# (workspace_id, store_id, name, dedupe_key, message_json, occurred_at, kind, user_id, anonymous_id)
Row = tuple[str, str, str, str | None, str, datetime, str, str | None, str | None]


@dataclass(slots=True)
class Parsed:
    rows: list[Row] = field(default_factory=list)
    rejected: list[tuple[int, MessageProblem]] = field(default_factory=list)


def load_body(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BodyProblem(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BodyProblem("the request body must be a JSON object")
    return data


def parse_time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise MessageProblem(name, "must be an ISO-8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MessageProblem(name, f"{value[:40]!r} is not an ISO-8601 date-time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _ident(msg: dict[str, Any], name: str) -> str | None:
    value = msg.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MessageProblem(name, "must be a string")
    text = str(value)
    if len(text) > MAX_ID_CHARS:
        raise MessageProblem(name, f"must be at most {MAX_ID_CHARS} characters")
    return text


def _name_of(msg: dict[str, Any], kind: str) -> str:
    if kind == "track":
        event = msg.get("event")
        if not isinstance(event, str) or not event:
            raise MessageProblem("event", "required for track: the name of the action, e.g. 'Order Completed'")
        value = event
    elif kind in ("page", "screen"):
        page = msg.get("name")
        value = page if isinstance(page, str) and page else ("Page Viewed" if kind == "page" else "Screen Viewed")
    else:
        return kind
    if len(value) > MAX_NAME_CHARS:
        raise MessageProblem("event" if kind == "track" else "name", f"must be at most {MAX_NAME_CHARS} characters")
    return value


_OBJECT_FIELDS = ("traits", "properties", "context", "integrations")


def parse_message(msg: Any, kind: str | None, store: StoreRef, received_at: datetime,
                  sent_at: datetime | None = None, batch_context: dict[str, Any] | None = None) -> Row:
    """One Segment message -> an events row (without its id). `kind` None: take `type`."""
    if not isinstance(msg, dict):
        raise MessageProblem("message", "must be a JSON object")
    msg.pop("writeKey", None)  # a credential: never stored
    if kind is None:
        kind = msg.get("type")
        if kind not in KINDS:
            raise MessageProblem("type", f"must be one of {', '.join(sorted(KINDS))}")
    else:
        msg["type"] = kind
    user_id = _ident(msg, "userId")
    anonymous_id = _ident(msg, "anonymousId")
    if kind == "alias":
        if user_id is None or _ident(msg, "previousId") is None:
            raise MessageProblem("previousId" if user_id else "userId", "alias needs both previousId and userId")
    elif user_id is None and anonymous_id is None:
        raise MessageProblem("userId", "every call needs a userId or an anonymousId")
    if kind == "group" and _ident(msg, "groupId") is None:
        raise MessageProblem("groupId", "required for group")
    for name in _OBJECT_FIELDS:
        value = msg.get(name)
        if value is not None and not isinstance(value, dict):
            raise MessageProblem(name, "must be a JSON object")
    if batch_context:
        own = msg.get("context")
        msg["context"] = {**batch_context, **own} if own else batch_context
    message_id = _ident(msg, "messageId")
    occurred_at = _occurred_at(msg, received_at, sent_at)
    stored = orjson.dumps(msg)
    if len(stored) > MAX_MESSAGE_BYTES:
        raise MessageProblem("message", f"larger than {MAX_MESSAGE_BYTES} bytes; send less per call")
    if b"\\u0000" in stored:
        raise MessageProblem("message", "contains a NUL (\\u0000) character, which cannot be stored; remove it")
    return (store.workspace_id, store.store_id, _name_of(msg, kind), message_id, stored.decode(),
            occurred_at, kind, user_id, anonymous_id)


def _occurred_at(msg: dict[str, Any], received_at: datetime, batch_sent_at: datetime | None) -> datetime:
    raw = msg.get("timestamp")
    if raw is None:
        raw = msg.get("originalTimestamp")
        if raw is None:
            return received_at
        stamp = parse_time(raw, "originalTimestamp")
    else:
        stamp = parse_time(raw, "timestamp")
    own_sent = msg.get("sentAt")
    sent_at = parse_time(own_sent, "sentAt") if own_sent is not None else batch_sent_at
    return stamp if sent_at is None else stamp + (received_at - sent_at)


def parse_single(data: dict[str, Any], kind: str, store: StoreRef, received_at: datetime) -> Row:
    """A call to /v1/<kind>: its `sentAt` is its own."""
    return parse_message(data, kind, store, received_at)


def parse_batch(data: dict[str, Any], store: StoreRef, received_at: datetime) -> Parsed:
    """/v1/batch: the valid messages become rows; the others are reported by index."""
    messages = data.get("batch")
    if not isinstance(messages, list):
        raise BodyProblem("`batch` must be a list of messages")
    if len(messages) > MAX_BATCH_MESSAGES:
        raise BodyProblem(f"a batch holds at most {MAX_BATCH_MESSAGES} messages; got {len(messages)}")
    try:
        sent_at = parse_time(data["sentAt"], "sentAt") if data.get("sentAt") is not None else None
    except MessageProblem as exc:
        raise BodyProblem(str(exc)) from None
    context = data.get("context")
    if context is not None and not isinstance(context, dict):
        raise BodyProblem("`context` must be a JSON object")
    out = Parsed()
    for index, msg in enumerate(messages):
        try:
            out.rows.append(parse_message(msg, None, store, received_at, sent_at, context))
        except MessageProblem as exc:
            out.rejected.append((index, exc))
    return out


# ---- ids ----------------------------------------------------------------------------------
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class EventIds:
    """ULID-shaped event ids made cheaply in bulk: 10 chars of milliseconds, 8 random chars fixed
    per process, 8 decimal digits of a per-millisecond counter. Ids of one process sort in the
    order they were made (the processor reads events in id order)."""

    def __init__(self) -> None:
        rnd = int.from_bytes(os.urandom(5), "big")
        self._node = "".join(_CROCKFORD[(rnd >> (5 * i)) & 31] for i in range(7, -1, -1))
        self._ms = -1
        self._seq = 0
        self._prefix, self._prefix_ms = "", -1  # the id prefix of millisecond _prefix_ms
        self._lock = threading.Lock()

    def take(self, n: int) -> list[str]:
        with self._lock:
            ms = int(time.time() * 1000)
            if ms > self._ms:
                self._ms, self._seq = ms, 0
            elif self._seq + n >= 100_000_000:
                self._ms, self._seq = self._ms + 1, 0
            if self._prefix_ms != self._ms:
                self._prefix_ms, ms = self._ms, self._ms
                self._prefix = "evt_" + "".join(_CROCKFORD[(ms >> (5 * i)) & 31] for i in range(9, -1, -1)) + self._node
            start, self._seq = self._seq, self._seq + n
            prefix = self._prefix
        return [f"{prefix}{i:08d}" for i in range(start, start + n)]


# ---- storing ------------------------------------------------------------------------------
_COLUMNS = ("INSERT INTO events (id, workspace_id, store_id, name, source, dedupe_key, properties, "
            "occurred_at, received_at, kind, user_id, anonymous_id) VALUES ")
_SQLITE_ROW = "(?, ?, ?, ?, 'segment', ?, ?, ?, ?, ?, ?, ?)"
_PG_ROW = "(%s, %s, %s, %s, 'segment', %s, CAST(%s AS jsonb), %s, %s, %s, %s, %s)"
_ON_CONFLICT = " ON CONFLICT (workspace_id, source, dedupe_key) DO NOTHING"
# Rows per INSERT statement. One multi-row statement instead of executemany: sqlite3 releases and
# re-takes the GIL around every executemany row, so beside a busy event loop each row waited for
# the GIL; 500 rows x 11 parameters stays far below both databases' parameter limits, and the
# full 500-row statement is always the same text (the drivers' statement caches keep it prepared).
STATEMENT_ROWS = 500
# The writer's own SQLite connection (kept open): a page cache that holds the hot part of the
# events indexes across groups (the default is 2 MB), and fewer, larger checkpoints (each copies a
# page rewritten by many commits once). Writer-only test, 200,000 rows in 800-row groups: ~15%
# more rows/s; the larger part of the end-to-end gain on /v1/batch.
SQLITE_WRITER_PRAGMAS = ("PRAGMA cache_size=-65536", "PRAGMA wal_autocheckpoint=10000")

Params = tuple[Any, ...]  # one row's driver parameters, in the column order of the insert


def _sqlite_time(value: datetime) -> str:
    """The text SQLAlchemy's SQLite DateTime stores (naive UTC, always with microseconds)."""
    if value.tzinfo is not UTC and value.utcoffset():
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


@lru_cache(maxsize=64)
def _insert_sql(dialect: str, rows: int) -> str:
    row = _SQLITE_ROW if dialect == "sqlite" else _PG_ROW
    return _COLUMNS + ", ".join([row] * rows) + _ON_CONFLICT


def row_params(dialect: str, rows: Sequence[Row], ids: Sequence[str], received_at: datetime) -> list[Params]:
    """The parameters of each row, in the column order of the insert."""
    if dialect == "sqlite":
        received = _sqlite_time(received_at)
        stamp = _sqlite_time
        return [(i, r[0], r[1], r[2], r[3], r[4], received if r[5] is received_at else stamp(r[5]), received,
                 r[6], r[7], r[8]) for i, r in zip(ids, rows, strict=True)]
    return [(i, r[0], r[1], r[2], r[3], r[4], r[5], received_at, r[6], r[7], r[8])
            for i, r in zip(ids, rows, strict=True)]


def insert_params(conn: Connection, params: Sequence[Params]) -> None:
    """Insert rows of row_params in the caller's transaction, through the DB-API cursor; a
    messageId seen before in the workspace is skipped."""
    dialect = conn.dialect.name
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        for start in range(0, len(params), STATEMENT_ROWS):
            part = params[start:start + STATEMENT_ROWS]
            cursor.execute(_insert_sql(dialect, len(part)), tuple(itertools.chain.from_iterable(part)))
    finally:
        cursor.close()


def insert_rows(conn: Connection, rows: Sequence[Row], ids: Sequence[str], received_at: datetime) -> None:
    insert_params(conn, row_params(conn.dialect.name, rows, ids, received_at))


def enqueue_processing(conn: Connection, now: datetime) -> None:
    """One `intake.events` job per second of ingestion, due just after that second ends, so
    every event committed in the second is there when it runs (the periodic run catches any
    stragglers)."""
    slot = int(now.timestamp())
    due = datetime.fromtimestamp(slot + 1, UTC) + INTAKE_DELAY
    jobs_db.enqueue(conn, INTAKE_JOB, {}, now=now, due_at=due, max_attempts=20,
                    unique_key=f"{INTAKE_JOB}:{slot}")


class WriterUnavailable(Exception):
    """The events could not be committed (database error, or the writer is not running)."""


@dataclass(slots=True)
class _Pending:
    params: list[Params]
    done: asyncio.Future[None]


class EventWriter:
    """Group commit. Requests hand over their rows and wait; one task takes everything pending,
    inserts it in one transaction on a thread of its own, then resolves every waiter (or fails
    them all with WriterUnavailable, which the API answers with 503: nothing is silently lost).

    Double buffer: while one group commits on the writer thread, the requests arriving meanwhile
    parse and turn their rows into driver parameters on the event loop, and queue up as the next
    group, which is taken the moment the commit is done. The writer keeps one connection of its
    own (re-opened after an error, or when `engine` is replaced).

    Start and stop it with the app's lifespan; stop() refuses new rows and drains what is queued.
    """

    def __init__(self, engine: Engine, *, now: Callable[[], datetime],
                 after_commit: Callable[[], Any] | None = None, max_rows: int = 10_000) -> None:
        self.engine = engine
        self.now = now
        self.after_commit = after_commit
        self.max_rows = max_rows
        self.ids = EventIds()
        self._queue: list[_Pending] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="herald-event-writer")
        self._conn: Connection | None = None  # used on the writer thread only
        self._stopping = False
        self._last_slot = -1
        self.commits = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._stopping

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="herald-event-writer")

    async def stop(self) -> None:
        if self._task is None or self._wakeup is None:
            return
        self._stopping = True
        self._wakeup.set()
        await self._task
        self._task = None
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)

    async def write(self, rows: Sequence[Row], received_at: datetime) -> None:
        """Returns once the rows are committed; raises WriterUnavailable if they were not."""
        if not rows:
            return
        if not self.running or self._wakeup is None:
            raise WriterUnavailable("event ingestion is not running (the server is starting or stopping)")
        # Ids are taken in queue order, which is commit order: ids sort as the events were committed.
        params = row_params(self.engine.dialect.name, rows, self.ids.take(len(rows)), received_at)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(params, done))
        self._wakeup.set()
        await done

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                group = self._take()
                try:
                    await loop.run_in_executor(self._thread, self._commit, group)
                except Exception as exc:
                    log.error("event commit failed", error=str(getattr(exc, "orig", exc)), requests=len(group))
                    _settle(group, WriterUnavailable("the events could not be stored; retry the request"))
                else:
                    self.commits += 1
                    _settle(group, None)
                    if self.after_commit is not None:
                        self.after_commit()
            if self._stopping:
                return

    def _take(self) -> list[_Pending]:
        taken, count = 0, 0
        for item in self._queue:
            if taken and count + len(item.params) > self.max_rows:
                break
            taken, count = taken + 1, count + len(item.params)
        group, self._queue = self._queue[:taken], self._queue[taken:]
        return group

    def _commit(self, group: list[_Pending]) -> None:
        """On the writer thread: one transaction for the whole group."""
        now = self.now()
        slot = int(now.timestamp())
        params = group[0].params if len(group) == 1 else [p for item in group for p in item.params]
        conn = self._connection()
        try:
            with conn.begin():
                insert_params(conn, params)
                if slot != self._last_slot:
                    enqueue_processing(conn, now)
        except BaseException:
            self._close()  # a broken connection is not reused; the next group opens a new one
            raise
        self._last_slot = slot

    def _connection(self) -> Connection:
        if self._conn is not None and self._conn.engine is not self.engine:
            self._close()
        if self._conn is None:
            conn = self.engine.connect()
            if conn.dialect.name == "sqlite":
                for pragma in SQLITE_WRITER_PRAGMAS:
                    conn.exec_driver_sql(pragma)
                conn.commit()
            self._conn = conn
        return self._conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                if conn.in_transaction():  # its rollback failed: the pool must not get it back
                    conn.invalidate()
                conn.close()
            except SQLAlchemyError as exc:
                log.warning("closing the event writer's connection failed", error=str(getattr(exc, "orig", exc)))


def _settle(group: Iterable[_Pending], error: Exception | None) -> None:
    for item in group:
        if item.done.done():  # the request went away (cancelled): nobody to tell
            continue
        if error is None:
            item.done.set_result(None)
        else:
            item.done.set_exception(error)


# ---- processing after commit --------------------------------------------------------------
@dataclass(slots=True)
class ProcessReport:
    processed: int = 0
    contacts: set[str] = field(default_factory=set)
    created: int = 0
    conflicts: int = 0
    problems: list[str] = field(default_factory=list)


_PROFILE_TRAITS = frozenset({"email", "phone", "firstName", "lastName", "first_name", "last_name", "name",
                             "country", "language", "locale", "timezone"})


def person_from_traits(traits: dict[str, Any], external: list[tuple[str, str]]
                       ) -> tuple[identity.Person, list[FieldProblem]]:
    """Segment identify traits (spec: .../spec/identify/#traits) -> a Person. Profile traits map
    to contact fields; every other trait is kept in attributes (shallow-merged)."""
    first = _text(traits.get("firstName") or traits.get("first_name"))
    last = _text(traits.get("lastName") or traits.get("last_name"))
    full = _text(traits.get("name"))
    if full and not (first or last):
        first, _, rest = full.partition(" ")
        last = rest.strip() or None
    address = traits.get("address")
    country = _text(traits.get("country")) or _text(address.get("country") if isinstance(address, dict) else None)
    profile = {"first_name": first, "last_name": last,
               "country": country.upper() if country and len(country) == 2 else country,
               "language": _text(traits.get("language") or traits.get("locale")),
               "timezone": _text(traits.get("timezone"))}
    attributes = {k: v for k, v in traits.items() if k not in _PROFILE_TRAITS}
    return identity.normalize_person(
        external=external, email=_text(traits.get("email")), phone=_text(traits.get("phone")),
        default_country=profile["country"] if isinstance(profile["country"], str) and
        len(profile["country"]) == 2 else None,
        profile={k: v for k, v in profile.items() if v is not None}, attributes=attributes)


def _identify_traits(message: dict[str, Any]) -> dict[str, Any]:
    """`traits`, over `context.traits` (rudder-sdk-python sends identify traits only there)."""
    context = message.get("context") or {}
    nested = context.get("traits") if isinstance(context.get("traits"), dict) else None
    return {**(nested or {}), **(message.get("traits") or {})}


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value.strip() or None if isinstance(value, str) else str(value)


def _pending_query(conn: Connection, limit: int, workspace_id: str | None) -> Any:
    query = (select(events.c.id, events.c.workspace_id, events.c.store_id, events.c.kind, events.c.user_id,
                    events.c.anonymous_id, events.c.properties)
             .where(events.c.processed_at.is_(None), events.c.source == SOURCE)
             .order_by(events.c.id).limit(limit))
    if workspace_id is not None:
        query = query.where(events.c.workspace_id == workspace_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=events)
    return query


def process_pending(conn: Connection, *, now: datetime, limit: int = PROCESS_LIMIT,
                    workspace_id: str | None = None) -> ProcessReport:
    """Resolve the identities of up to `limit` unprocessed Segment events (oldest first), fill
    their contact_id and set processed_at, in the caller's transaction. PostgreSQL: rows are
    locked with SKIP LOCKED, so concurrent workers take disjoint events."""
    rows = [r._asdict() for r in conn.execute(_pending_query(conn, limit, workspace_id))]
    report = ProcessReport(processed=len(rows))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["workspace_id"], row["store_id"]), []).append(row)
    for (ws, store_id), group in groups.items():
        _process_store(conn, ws, store_id, group, now, report)
    if rows:
        conn.execute(update(events).where(events.c.id == bindparam("event_id"))
                     .values(contact_id=bindparam("cid"), processed_at=now),
                     [{"event_id": r["id"], "cid": r.get("contact_id")} for r in rows])
    return report


def _externals(store_id: str, row: dict[str, Any], known_user_ids: set[str]) -> list[tuple[str, str]]:
    """The ids to resolve by, in match order. alias: previousId is an anonymousId, or an earlier
    userId when one is already known (it is never invented as a userId)."""
    out = []
    if row["user_id"]:
        out.append((store_namespace(store_id), row["user_id"]))
    if row["anonymous_id"]:
        out.append((anonymous_namespace(store_id), row["anonymous_id"]))
    if row["kind"] == "alias":
        previous = str(row["properties"].get("previousId"))
        if previous in known_user_ids:
            out.append((store_namespace(store_id), previous))
        else:
            out.append((anonymous_namespace(store_id), previous))
    return out


def _process_store(conn: Connection, ws: str, store_id: str, rows: list[dict[str, Any]], now: datetime,
                   report: ProcessReport) -> None:
    """identify/alias and any call with a userId resolve (creating the contact if needed); a
    call with only an anonymousId finds its contact if that id is already linked to one."""
    people: list[identity.Person] = []
    owners: list[list[dict[str, Any]]] = []  # the rows each Person stands for
    by_key: dict[tuple[tuple[str, str], ...], int] = {}
    previous = {str(r["properties"].get("previousId")) for r in rows if r["kind"] == "alias"}
    known_user_ids = set(_owners(conn, ws, store_namespace(store_id), previous))
    for row in rows:
        if row["kind"] != "identify" and row["kind"] != "alias" and not row["user_id"]:
            continue
        external = _externals(store_id, row, known_user_ids)
        if row["kind"] == "identify":
            traits = _identify_traits(row["properties"])
            person, problems = person_from_traits(traits, external)
            report.problems += [f"traits.{p.field}" for p in problems]  # reasons may quote personal data
        else:
            key = tuple(external)
            if key in by_key:
                owners[by_key[key]].append(row)
                continue
            by_key[key] = len(people)
            person, _ = identity.normalize_person(external=external)
        people.append(person)
        owners.append([row])
    if people:
        for resolved, owned in zip(identity.resolve_many(conn, ws, store_id, people, now), owners, strict=True):
            for row in owned:
                row["contact_id"] = resolved.contact_id
            report.contacts.add(resolved.contact_id)
            report.created += resolved.created
            report.conflicts += len(resolved.conflicts)
    _find_anonymous(conn, ws, store_id, [r for r in rows if "contact_id" not in r and r["anonymous_id"]])
    _apply_groups(conn, [r for r in rows if r["kind"] == "group" and r.get("contact_id")], now)


def _owners(conn: Connection, ws: str, namespace: str, values: set[str]) -> dict[str, str]:
    """external id value -> the contact holding it, in one namespace."""
    if not values:
        return {}
    ids = contact_identities.c
    query = select(ids.value, ids.contact_id).where(
        ids.workspace_id == ws, ids.kind == "external", ids.namespace == namespace, ids.value.in_(values))
    return {value: contact_id for value, contact_id in conn.execute(query)}


def _find_anonymous(conn: Connection, ws: str, store_id: str, rows: list[dict[str, Any]]) -> None:
    found = _owners(conn, ws, anonymous_namespace(store_id), {r["anonymous_id"] for r in rows})
    for row in rows:
        if row["anonymous_id"] in found:
            row["contact_id"] = found[row["anonymous_id"]]


def _apply_groups(conn: Connection, rows: list[dict[str, Any]], now: datetime) -> None:
    """group: the group's traits under attributes["groups"][groupId] (later calls win)."""
    if not rows:
        return
    query = select(contacts.c.id, contacts.c.attributes).where(contacts.c.id.in_({r["contact_id"] for r in rows}))
    current = {contact_id: attributes for contact_id, attributes in conn.execute(query)}
    changed: dict[str, dict[str, Any]] = {}
    for row in rows:
        attributes = changed.get(row["contact_id"]) or dict(current.get(row["contact_id"]) or {})
        groups = dict(attributes.get("groups") or {})
        message = row["properties"]
        entry = {**(groups.get(str(message["groupId"])) or {}), **(message.get("traits") or {})}
        if groups.get(str(message["groupId"])) != entry or str(message["groupId"]) not in groups:
            groups[str(message["groupId"])] = entry
            changed[row["contact_id"]] = {**attributes, "groups": groups}
    if changed:
        conn.execute(update(contacts).where(contacts.c.id == bindparam("contact"))
                     .values(attributes=bindparam("attrs"), updated_at=now),
                     [{"contact": k, "attrs": v} for k, v in changed.items()])


def process_all(engine: Engine, now: Callable[[], datetime], *, limit: int = PROCESS_LIMIT,
                max_rounds: int = 200) -> int:
    """Process pending events batch by batch (one transaction each) until none is left or
    `max_rounds` batches ran (the next run continues). Returns how many were processed."""
    total = 0
    for _ in range(max_rounds):
        with engine.begin() as conn:
            report = process_pending(conn, now=now(), limit=limit)
        total += report.processed
        if report.conflicts:
            log.info("identities left with another contact", conflicts=report.conflicts)
        if report.problems:
            log.info("invalid traits dropped", fields=sorted(set(report.problems)))
        if report.processed < limit:
            break
    return total

