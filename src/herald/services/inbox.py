"""The in-site inbox (issue 6): messages stored in Herald that a contact reads on the store's site,
through the API, a JSON endpoint and a server-sent event stream.

* `deliver` writes one item (idempotent on the message id); its caller commits, then calls
  `notifier_for(engine).publish(workspace_id, contact_id)` so open streams in this process wake at
  once. Streams in other processes find the item by polling (`fresh_items`).
* Reading (`list_items`, `counts`, `mark_read`) is always scoped by an `InboxScope`: the workspace,
  the contact and, for a store's key or a store's widget token, that store's items only.
* `InboxTokens`: signed, expiring contact tokens for the store's site, which cannot hold an API key.

Item ids are "inb_" + a ULID, strictly increasing within a process and time-ordered across
processes (by each one's clock). Transactions commit out of id order, so a stream does not trust
"everything after the last id sent": each poll re-reads a short window (`LOOKBACK_MS`) below it
and skips what it already sent (`StreamCursor`). An item whose commit lags its id by more than the
window, or one that commits during a client's reconnection with an id below the client's
Last-Event-ID, is missed by streams (it is still listed by `list_items`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import re
import threading
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from herald.db.tables import contacts, inbox_items, stores
from herald.domain.errors import Conflict, InvalidInput, NotFound
from herald.domain.ids import ulid
from herald.pipeline.consent_links import ExpiredToken as ExpiredToken  # re-exported for the public routes
from herald.pipeline.tracking import MAC_BYTES, decode_token, is_trackable_url, mac
from herald.pipeline.tracking import BadToken as BadToken  # re-exported for the public routes
from herald.services.pagination import Page, decode_cursor, page_of

ITEM_PREFIX: Final = "inb"
MAX_TITLE_CHARS: Final = 500
MAX_BODY_CHARS: Final = 20_000
MAX_URL_CHARS: Final = 2_000
MAX_READ_IDS: Final = 200
LOOKBACK_MS: Final = 30_000        # how late (after its id was made) an item may commit and still stream
STREAM_PAGE: Final = 100
MAX_KNOWN_AT_START: Final = 5_000

_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_VALUE: Final = {ch: i for i, ch in enumerate(_CROCKFORD)}
_ITEM_ID: Final = re.compile(rf"{ITEM_PREFIX}_[{_CROCKFORD}]{{26}}")
_ITEM_COLUMNS = (inbox_items.c.id, inbox_items.c.store_id, inbox_items.c.message_id, inbox_items.c.title,
                 inbox_items.c.body, inbox_items.c.url, inbox_items.c.created_at, inbox_items.c.read_at)


# ---- ids -------------------------------------------------------------------------------------

_last_ulid = ""
_ulid_lock = threading.Lock()


def new_item_id() -> str:
    """A new item id, greater than every other made by this process (ULIDs made in the same
    millisecond are otherwise in random order; streams send in id order)."""
    global _last_ulid
    with _ulid_lock:
        made = ulid()
        if made <= _last_ulid:
            made = _next_ulid(_last_ulid)
        _last_ulid = made
    return f"{ITEM_PREFIX}_{made}"


def _next_ulid(value: str) -> str:
    number = 0
    for ch in value:
        number = (number << 5) | _CROCKFORD_VALUE[ch]
    number += 1
    return "".join(_CROCKFORD[(number >> shift) & 31] for shift in range(125, -1, -5))


def is_item_id(value: str | None) -> bool:
    return value is not None and _ITEM_ID.fullmatch(value) is not None


def item_id_ms(item_id: str) -> int:
    """The milliseconds encoded in an item id (its ULID's time part)."""
    ms = 0
    for ch in item_id[len(ITEM_PREFIX) + 1:len(ITEM_PREFIX) + 11]:
        ms = (ms << 5) | _CROCKFORD_VALUE[ch]
    return ms


def id_floor(ms: int) -> str:
    """The smallest item id that can be made at `ms` (every id made at or after `ms` is >= it)."""
    ms = max(ms, 0)
    return f"{ITEM_PREFIX}_" + "".join(_CROCKFORD[(ms >> shift) & 31] for shift in range(45, -1, -5)) + "0" * 16


def stream_mark() -> str:
    """A position "now": an unused item id, above every item this process made before and below
    every one it makes after. Handed out beside a list, so a widget streams what the list missed."""
    return new_item_id()


# ---- scope -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class InboxScope:
    """Whose inbox, as seen by whom: `store_id` set limits it to that store's items."""

    workspace_id: str
    contact_id: str
    store_id: str | None = None


@dataclass(frozen=True, slots=True)
class Counts:
    unread: int
    total: int


def _where(scope: InboxScope) -> list[Any]:
    t = inbox_items.c
    conditions = [t.workspace_id == scope.workspace_id, t.contact_id == scope.contact_id]
    if scope.store_id is not None:
        conditions.append(t.store_id == scope.store_id)
    return conditions


# ---- writing ---------------------------------------------------------------------------------

def deliver(conn: Connection, workspace_id: str, contact_id: str, message_id: str | None, store_id: str | None,
            title: str, body: str, url: str | None, now: datetime) -> str:
    """Put one item in a contact's inbox; returns its id. Idempotent on `message_id`: delivering
    the same message again returns the item it made the first time, unchanged. The caller commits
    and then publishes (`notifier_for(engine).publish(workspace_id, contact_id)`)."""
    title, body, url = _content(title, body, url)
    if message_id is not None and (found := _by_message(conn, workspace_id, message_id)) is not None:
        return found
    require_owner(conn, workspace_id, contact_id, store_id)
    item_id = new_item_id()
    try:
        with conn.begin_nested():
            conn.execute(insert(inbox_items).values(
                id=item_id, workspace_id=workspace_id, store_id=store_id, contact_id=contact_id,
                message_id=message_id, title=title, body=body, url=url, created_at=now))
    except IntegrityError:
        if message_id is not None and (found := _by_message(conn, workspace_id, message_id)) is not None:
            return found  # a concurrent delivery of the same message won
        raise
    return item_id


def _content(title: str, body: str, url: str | None) -> tuple[str, str, str | None]:
    title = title.strip()
    if not title:
        raise InvalidInput.on("title", "must not be empty")
    if len(title) > MAX_TITLE_CHARS:
        raise InvalidInput.on("title", f"must be at most {MAX_TITLE_CHARS} characters")
    if len(body) > MAX_BODY_CHARS:
        raise InvalidInput.on("body", f"must be at most {MAX_BODY_CHARS} characters")
    for name, value in (("title", title), ("body", body)):
        if "\x00" in value:
            raise InvalidInput.on(name, "must not contain NUL characters")
    url = url.strip() if url else None
    if url is not None and (len(url) > MAX_URL_CHARS or not is_trackable_url(url)):
        raise InvalidInput.on("url", f"must be an absolute http(s) URL of at most {MAX_URL_CHARS} characters "
                                     "without spaces")
    return title, body, url


def _by_message(conn: Connection, workspace_id: str, message_id: str) -> str | None:
    row = conn.execute(select(inbox_items.c.id, inbox_items.c.workspace_id)
                       .where(inbox_items.c.message_id == message_id)).first()
    if row is None:
        return None
    if row.workspace_id != workspace_id:
        raise Conflict(f"message {message_id!r} belongs to another workspace")
    return str(row.id)


def require_owner(conn: Connection, workspace_id: str, contact_id: str, store_id: str | None) -> None:
    """NotFound unless the contact (and the store, when given) belong to the workspace."""
    if conn.execute(select(contacts.c.id).where(contacts.c.id == contact_id,
                                                contacts.c.workspace_id == workspace_id)).first() is None:
        raise NotFound(f"no contact {contact_id!r} in this workspace")
    if store_id is not None and conn.execute(select(stores.c.id).where(
            stores.c.id == store_id, stores.c.workspace_id == workspace_id)).first() is None:
        raise NotFound(f"no store {store_id!r} in this workspace")


def mark_read(conn: Connection, scope: InboxScope, now: datetime, *, ids: list[str] | None = None,
              up_to: str | None = None) -> int:
    """Mark the given items, or every item up to and including `up_to`, as read (exactly one of the
    two). Items outside the scope, unknown or already read are left alone. Returns how many changed."""
    if (ids is None) == (up_to is None):
        raise InvalidInput.on("ids", "give either `ids` (a list of item ids) or `up_to` (an item id)")
    condition: Any
    if ids is not None:
        if not ids or len(ids) > MAX_READ_IDS:
            raise InvalidInput.on("ids", f"must list 1 to {MAX_READ_IDS} item ids")
        for i, item_id in enumerate(ids):
            if not is_item_id(item_id):
                raise InvalidInput.on(f"ids.{i}", "is not an inbox item id (inb_…)")
        condition = inbox_items.c.id.in_(ids)
    else:
        if not is_item_id(up_to):
            raise InvalidInput.on("up_to", "is not an inbox item id (inb_…)")
        condition = inbox_items.c.id <= up_to
    result = conn.execute(update(inbox_items).where(*_where(scope), condition, inbox_items.c.read_at.is_(None))
                          .values(read_at=now))
    return int(result.rowcount or 0)


# ---- reading ---------------------------------------------------------------------------------

def list_items(conn: Connection, scope: InboxScope, *, limit: int, cursor: str | None,
               unread_only: bool = False) -> Page[dict[str, Any]]:
    """A page of the scope's items, newest first; `next_cursor` continues with older ones."""
    query = select(*_ITEM_COLUMNS).where(*_where(scope)).order_by(inbox_items.c.id.desc()).limit(limit + 1)
    if unread_only:
        query = query.where(inbox_items.c.read_at.is_(None))
    if (before := decode_cursor(cursor)) is not None:
        query = query.where(inbox_items.c.id < before)
    rows = [dict(r) for r in conn.execute(query).mappings()]
    return page_of(rows, limit, lambda r: r["id"])


def counts(conn: Connection, scope: InboxScope) -> Counts:
    total, read = conn.execute(select(func.count(), func.count(inbox_items.c.read_at))
                               .where(*_where(scope))).one()
    return Counts(unread=int(total) - int(read), total=int(total))


def store_domain(conn: Connection, workspace_id: str, store_id: str, contact_id: str) -> str | None:
    """The store's `domain` (its site, allowed to call the inbox from a browser); NotFound when the
    store or the contact is gone from the workspace (a token outliving them opens nothing)."""
    domain = conn.execute(select(stores.c.domain).where(stores.c.id == store_id,
                                                        stores.c.workspace_id == workspace_id)).first()
    contact = conn.execute(select(contacts.c.id).where(contacts.c.id == contact_id,
                                                       contacts.c.workspace_id == workspace_id)).first()
    if domain is None or contact is None:
        raise NotFound("this inbox no longer exists")
    return domain.domain  # type: ignore[no-any-return]


# ---- streaming -------------------------------------------------------------------------------

@dataclass
class StreamCursor:
    """Where a stream stands: `after` is the newest id it sent (or started from); `seen` the ids at
    or above `floor()` it sent or that the client already had. Polls re-read from the floor."""

    after: str
    seen: set[str] = field(default_factory=set)

    def floor(self) -> str:
        return id_floor(item_id_ms(self.after) - LOOKBACK_MS)

    def take(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows not sent yet, remembered as sent from now on."""
        fresh = [r for r in rows if r["id"] not in self.seen]
        for row in fresh:
            self.seen.add(row["id"])
            self.after = max(self.after, row["id"])
        floor = self.floor()
        self.seen = {i for i in self.seen if i >= floor}
        return fresh


def open_cursor(conn: Connection, scope: InboxScope, last_event_id: str | None) -> StreamCursor:
    """A stream's start: after the client's Last-Event-ID (ids up to it count as the client's), or,
    without a usable one, from now. An id "from the future" (beyond a minute of clock skew) is
    treated as now, so a forged one cannot silence the stream."""
    now_mark = stream_mark()
    usable = (last_event_id is not None and is_item_id(last_event_id)
              and item_id_ms(last_event_id) <= item_id_ms(now_mark) + 60_000)
    cursor = StreamCursor(last_event_id if usable and last_event_id else now_mark)
    known = conn.execute(select(inbox_items.c.id).where(*_where(scope), inbox_items.c.id >= cursor.floor(),
                                                        inbox_items.c.id <= cursor.after)
                         .order_by(inbox_items.c.id.desc()).limit(MAX_KNOWN_AT_START))
    cursor.seen = set(known.scalars())
    return cursor


def fresh_items(conn: Connection, scope: InboxScope, cursor: StreamCursor) -> tuple[list[dict[str, Any]], bool]:
    """The items the stream has not sent yet, in id order: late commits inside the look-back
    window, then new ones, at most STREAM_PAGE of them; and whether more may be waiting. Advances
    the cursor past what it returns. Reads the window's ids (not their bodies) to find them."""
    limit = len(cursor.seen) + STREAM_PAGE   # every id already sent in the window, and a page more
    ids = list(conn.execute(select(inbox_items.c.id).where(*_where(scope), inbox_items.c.id >= cursor.floor())
                            .order_by(inbox_items.c.id).limit(limit)).scalars())
    unseen = [i for i in ids if i not in cursor.seen]
    rows: list[dict[str, Any]] = []
    if unseen:
        rows = [dict(r) for r in conn.execute(select(*_ITEM_COLUMNS).where(*_where(scope), inbox_items.c.id.in_(unseen))
                                              .order_by(inbox_items.c.id)).mappings()]
    return cursor.take(rows), len(ids) == limit


class Listener:
    """One open stream waiting on its contact's inbox in this process. `event` belongs to the
    event loop that subscribed; `wake()` may be called from any thread."""

    def __init__(self, key: tuple[str, str], loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.loop = loop
        self.event = asyncio.Event()

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # its loop is closed: the stream is gone
            self.loop.call_soon_threadsafe(self.event.set)


class InboxNotifier:
    """Wakes this process's open streams of a contact when an item for it has been committed.
    A hint only: a woken stream reads the table (so an item is never sent before it is durable),
    and every stream polls anyway for items written by other processes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[tuple[str, str], set[Listener]] = {}

    def subscribe(self, workspace_id: str, contact_id: str) -> Listener:
        """Call on the event loop that will wait on the listener's event."""
        listener = Listener((workspace_id, contact_id), asyncio.get_running_loop())
        with self._lock:
            self._listeners.setdefault(listener.key, set()).add(listener)
        return listener

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            group = self._listeners.get(listener.key)
            if group is not None:
                group.discard(listener)
                if not group:
                    del self._listeners[listener.key]

    def publish(self, workspace_id: str, contact_id: str) -> int:
        """After commit: wake the contact's open streams. Returns how many were woken."""
        with self._lock:
            group = list(self._listeners.get((workspace_id, contact_id), ()))
        for listener in group:
            listener.wake()
        return len(group)

    def listening(self, workspace_id: str, contact_id: str) -> int:
        with self._lock:
            return len(self._listeners.get((workspace_id, contact_id), ()))


_notifiers: weakref.WeakKeyDictionary[Engine, InboxNotifier] = weakref.WeakKeyDictionary()
_notifiers_lock = threading.Lock()


def notifier_for(engine: Engine) -> InboxNotifier:
    """The notifier shared by everything in this process that uses `engine` (the API's streams and
    the in-process worker that delivers items share the container's engine)."""
    with _notifiers_lock:
        found = _notifiers.get(engine)
        if found is None:
            found = _notifiers[engine] = InboxNotifier()
        return found


# ---- contact tokens for the store's site -------------------------------------------------------

_TOKEN_VERSION: Final = 1
_TOKEN_KIND: Final = b"i"
_MAX_TOKEN_CHARS: Final = 400
_MAX_FIELD_BYTES: Final = 64
DEFAULT_TOKEN_TTL: Final = timedelta(hours=24)
MAX_TOKEN_TTL: Final = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class InboxAccess:
    """What a widget token opens: one contact's inbox as shown on one store's site."""

    workspace_id: str
    store_id: str
    contact_id: str
    expires_at: datetime

    @property
    def scope(self) -> InboxScope:
        return InboxScope(self.workspace_id, self.contact_id, self.store_id)


class InboxTokens:
    """Makes and verifies widget tokens: url-safe base64 (no padding) of

        version (1) | kind "i" (1) | expires (8, big-endian Unix seconds) | workspace id, store id,
        contact id, each as length (1) + UTF-8 | HMAC-SHA256(key, everything before)[:16]

    The MAC is checked (constant time) before anything else is read, so only a token we signed can
    be reported as expired (`ExpiredToken`); anything else is a `BadToken`. `previous_keys` verify
    but never sign (key rotation)."""

    def __init__(self, key: bytes, *, previous_keys: tuple[bytes, ...] = ()) -> None:
        if len(key) < 16:
            raise ValueError("inbox token key must be at least 16 bytes")
        self._key = key
        self._verify_keys = (key, *previous_keys)

    def issue(self, workspace_id: str, store_id: str, contact_id: str, expires_at: datetime) -> str:
        if expires_at.tzinfo is None:
            raise ValueError("expires_at must be an aware datetime")
        payload = bytearray((_TOKEN_VERSION,)) + _TOKEN_KIND + int(expires_at.timestamp()).to_bytes(8, "big",
                                                                                                    signed=True)
        for value in (workspace_id, store_id, contact_id):
            raw = value.encode()
            if not raw or len(raw) > _MAX_FIELD_BYTES:
                raise ValueError(f"an inbox token field must be 1..{_MAX_FIELD_BYTES} bytes")
            payload += bytes((len(raw),)) + raw
        sealed = bytes(payload) + mac(self._key, bytes(payload))
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")  # what decode_token reads

    def verify(self, token: str, now: datetime) -> InboxAccess:
        """Raises BadToken (not ours, or malformed) or ExpiredToken (ours, past its time)."""
        raw = decode_token(token, max_chars=_MAX_TOKEN_CHARS, min_payload=10 + 3 * 2)
        payload, given = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if not any(hmac.compare_digest(given, mac(key, payload)) for key in self._verify_keys):
            raise BadToken("signature mismatch")
        if payload[0] != _TOKEN_VERSION or payload[1:2] != _TOKEN_KIND:
            raise BadToken("unknown token version or kind")
        expires_at = datetime.fromtimestamp(int.from_bytes(payload[2:10], "big", signed=True), UTC)
        workspace_id, store_id, contact_id = _fields(payload[10:], count=3)
        if now >= expires_at:
            raise ExpiredToken("token expired")
        return InboxAccess(workspace_id, store_id, contact_id, expires_at)


def _fields(data: bytes, *, count: int) -> list[str]:
    out: list[str] = []
    at = 0
    for _ in range(count):
        if at >= len(data) or data[at] == 0 or at + 1 + data[at] > len(data):
            raise BadToken("malformed token")
        try:
            out.append(data[at + 1:at + 1 + data[at]].decode())
        except UnicodeDecodeError as err:
            raise BadToken("malformed token") from err
        at += 1 + data[at]
    if at != len(data):
        raise BadToken("malformed token")
    return out
