"""The suppression list: addresses a message may not go to. A hard bounce, a complaint, an
unsubscribe or an erasure adds the address; marketing email is refused for any suppressed
address, transactional email only for addresses that cannot or must not receive mail
(hard bounce, complaint, invalid, erased).

An erased contact's addresses stay suppressed as keyed-hash tombstones ("hmac:<hex>", see
`tombstone`), so the list keeps refusing them without storing them. Callers that hold the
tombstone key (the container's `tombstone_key`) pass it to `reasons_for`, `import_csv`, `add_many`
and `unsuppress`, which then also see, and refuse to re-add or remove, erased addresses.

The list is imported from CSV (`import_csv`: per-row errors, idempotent), added to in bulk
(`add_many`), exported in keyset pages (`export_rows`, `csv_lines`) and edited (`unsuppress`)."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection, Engine, delete, select

from herald.db.bulk import insert_many, select_in
from herald.db.tables import suppressions
from herald.domain import contacts as rules
from herald.domain.contacts import InvalidValue
from herald.domain.errors import Conflict, FieldProblem, InvalidInput, NotFound
from herald.domain.policy import BLOCKS_TRANSACTIONAL
from herald.services.pagination import Page, decode_cursor, page_of

REASONS: Final = ("unsubscribed", "hard_bounce", "complaint", "invalid", "erased", "manual")
# Channels whose addresses the list holds: email addresses, and E.164 phone numbers for SMS/WhatsApp.
LIST_CHANNELS: Final = ("email", "sms", "whatsapp")
PHONE_CHANNELS: Final = ("sms", "whatsapp")
# What bootstrap.derive_key is given to make the tombstone key (Container.tombstone_key).
TOMBSTONE_PURPOSE: Final = b"suppression tombstones v1"
EXPORT_COLUMNS: Final = ("channel", "address", "reason", "source", "created_at", "detail")
IMPORT_COLUMNS: Final = ("channel", "address", "reason", "detail")
IGNORED_COLUMNS: Final = ("source", "created_at")  # written by export; an import sets its own
MAX_DETAIL = 2000
MAX_ERRORS = 1000  # per-row errors kept in an import report (all are counted)
BATCH = 1000  # rows per insert
LOOKUP_CHUNK = 2048  # addresses (and tombstones) per reasons_for query: db/bulk.select_in's largest IN list
_TOMBSTONE = re.compile(r"^hmac:[0-9a-f]{64}$")
_FORMULA_START = ("=", "-", "@", "\t", "\r")


def normalise(channel: str, address: str) -> str:
    return address.strip().lower() if channel == "email" else address.strip()


def suppress(conn: Connection, workspace_id: str, channel: str, address: str, reason: str, *, source: str,
             now: datetime, message_id: str | None = None, detail: str | None = None) -> bool:
    """Add the address (idempotent: the first reason stays). True if it was added now."""
    if reason not in REASONS:
        raise ValueError(f"suppression reason {reason!r} is not one of {', '.join(REASONS)}")
    row = {"workspace_id": workspace_id, "channel": channel, "address": normalise(channel, address),
           "reason": reason, "source": source[:64], "message_id": message_id,
           "detail": detail[:MAX_DETAIL] if detail else None, "created_at": now}
    return insert_many(conn, suppressions, [row], ignore_conflicts=True) != 0


# ---- tombstones -----------------------------------------------------------------------------------
def tombstone(key: bytes, channel: str, address: str) -> str:
    """The stored stand-in for an erased address: "hmac:" + HMAC-SHA256(key, channel NUL address)
    over the normalised address. Without the key it reveals nothing; with it, the same address on
    the same channel always gives the same tombstone."""
    message = f"{channel}\0{normalise(channel, address)}".encode()
    return "hmac:" + hmac.new(key, message, hashlib.sha256).hexdigest()


def is_tombstone(address: str) -> bool:
    return _TOMBSTONE.match(address) is not None


def reasons_for(conn: Connection, workspace_id: str, channel: str, addresses: Iterable[str], *,
                tombstone_key: bytes | None = None) -> dict[str, str]:
    """address (normalised) -> suppression reason, for the suppressed ones among `addresses`.

    With `tombstone_key`, an address whose tombstone is on the list is found too (as `erased`):
    one query per chunk covers both forms. When both forms are listed, `erased` wins."""
    wanted = sorted({normalise(channel, a) for a in addresses})
    found: dict[str, str] = {}
    scope = {"workspace_id": workspace_id, "channel": channel}
    if tombstone_key is not None and wanted and not has_tombstones(conn, workspace_id, channel):
        tombstone_key = None  # no erasures on this channel: no HMAC per address
    step = LOOKUP_CHUNK // 2 if tombstone_key is not None else LOOKUP_CHUNK
    for start in range(0, len(wanted), step):
        forms = {a: a for a in wanted[start:start + step]}
        if tombstone_key is not None:
            forms.update({tombstone(tombstone_key, channel, a): a for a in list(forms)})
        for address, reason in select_in(conn, suppressions, ("address", "reason"), scope, "address", list(forms)):
            plain = forms[address]
            found[plain] = _stronger(found.get(plain), reason)
    return found


def has_tombstones(conn: Connection, workspace_id: str, channel: str) -> bool:
    """Whether any erased address's tombstone is on the channel's list (an index range probe)."""
    s = suppressions.c
    return conn.execute(select(s.id).where(s.workspace_id == workspace_id, s.channel == channel,
                                           s.address >= "hmac:", s.address < "hmac;").limit(1)).first() is not None


def _stronger(current: str | None, reason: str) -> str:
    if current is None or reason == "erased":
        return reason
    if current in BLOCKS_TRANSACTIONAL or reason not in BLOCKS_TRANSACTIONAL:
        return current
    return reason


# ---- validation -----------------------------------------------------------------------------------
def clean_channel(raw: str | None) -> str:
    channel = (raw or "").strip().lower() or "email"
    if channel not in LIST_CHANNELS:
        raise InvalidValue(f"channel {raw!r} is not one of {', '.join(LIST_CHANNELS)}")
    return channel


def clean_reason(raw: str | None, default: str = "manual") -> str:
    reason = (raw or "").strip().lower() or default
    if reason == "erased":
        raise InvalidValue("reason `erased` is kept for erasures (POST /api/v1/contacts/{id}/erase), "
                           "which store the address as a tombstone")
    if reason not in REASONS:
        raise InvalidValue(f"reason {raw!r} is not one of {', '.join(r for r in REASONS if r != 'erased')}")
    return reason


def clean_address(channel: str, raw: str) -> str:
    """An email syntax-checked and lower-cased, or a phone number in E.164 (with its +country code)."""
    text = (raw or "").strip()
    if not text:
        raise InvalidValue("address is empty")
    if channel == "email":
        return rules.normalize_email(text).lower()
    return rules.normalize_phone(text)


@dataclass(frozen=True, slots=True)
class Entry:
    """One validated suppression to add. `address` is normalised, or an exported tombstone."""

    channel: str
    address: str
    reason: str
    detail: str | None = None


def clean_entry(channel: str | None, address: str, reason: str | None, detail: str | None, *,
                default_reason: str = "manual") -> Entry:
    """Validate one row; raises InvalidValue naming what is wrong. An exported tombstone row
    (address "hmac:…", reason erased) is accepted as is, so an export imports back unchanged."""
    if any("\x00" in (v or "") for v in (channel, address, reason, detail)):
        raise InvalidValue("the row contains a NUL (\\u0000) character")
    ch = clean_channel(channel)
    text = (address or "").strip()
    if is_tombstone(text.lower()):
        if (reason or "").strip().lower() != "erased":
            raise InvalidValue("a tombstone address (hmac:…) comes only with reason `erased`")
        return Entry(ch, text.lower(), "erased", None)
    note = (detail or "").strip() or None
    if note is not None and len(note) > MAX_DETAIL:
        raise InvalidValue(f"detail is longer than {MAX_DETAIL} characters")
    return Entry(ch, clean_address(ch, text), clean_reason(reason, default_reason), note)


# ---- adding in bulk ---------------------------------------------------------------------------------
@dataclass(slots=True)
class RowError:
    line: int
    reason: str


@dataclass(slots=True)
class ImportReport:
    added: int = 0
    unchanged: int = 0  # already listed (first reason stays), erased, or repeated in the input
    failed: int = 0
    errors: list[RowError] = field(default_factory=list)  # the first MAX_ERRORS failed rows


def add_many(conn: Connection, workspace_id: str, entries: Sequence[Entry], *, source: str, now: datetime,
             tombstone_key: bytes | None = None) -> tuple[int, int]:
    """Add validated entries; (added, unchanged). Idempotent: a listed address keeps its first
    reason, and an address whose tombstone is listed (an erased contact's) is not stored again."""
    added = 0
    for start in range(0, len(entries), BATCH):
        added += _insert_new(conn, workspace_id, entries[start:start + BATCH], source, now, tombstone_key)
    return added, len(entries) - added


def _insert_new(conn: Connection, workspace_id: str, entries: Sequence[Entry], source: str, now: datetime,
                tombstone_key: bytes | None) -> int:
    unique: dict[tuple[str, str], Entry] = {}
    for e in entries:
        unique.setdefault((e.channel, e.address), e)  # the first of repeats wins
    listed = _listed(conn, workspace_id, list(unique), tombstone_key)
    rows = [{"workspace_id": workspace_id, "channel": e.channel, "address": e.address, "reason": e.reason,
             "source": source[:64], "message_id": None, "detail": e.detail, "created_at": now}
            for key, e in unique.items() if key not in listed]
    if rows:
        insert_many(conn, suppressions, rows, ignore_conflicts=True)
    return len(rows)


def _listed(conn: Connection, workspace_id: str, keys: list[tuple[str, str]],
            tombstone_key: bytes | None) -> set[tuple[str, str]]:
    """Which (channel, address) pairs are already suppressed, plainly or by their tombstone."""
    found: set[tuple[str, str]] = set()
    by_channel: dict[str, list[str]] = {}
    for channel, address in keys:
        by_channel.setdefault(channel, []).append(address)
    for channel, addresses in by_channel.items():
        plain = [a for a in addresses if not is_tombstone(a)]
        hit = set(reasons_for(conn, workspace_id, channel, plain, tombstone_key=tombstone_key))
        stones = [a for a in addresses if is_tombstone(a)]
        if stones:
            s = suppressions.c
            hit.update(conn.execute(select(s.address).where(s.workspace_id == workspace_id, s.channel == channel,
                                                            s.address.in_(stones))).scalars())
        found.update((channel, a) for a in hit)
    return found


def import_csv(conn: Connection, workspace_id: str, lines: Iterable[str], *, default_reason: str = "manual",
               source: str = "import", now: datetime, tombstone_key: bytes | None = None) -> ImportReport:
    """Import a CSV (text lines, e.g. an open file) with a header naming its columns: `address`
    (required), `channel` (email, sms or whatsapp; default email), `reason` (default
    `default_reason`) and `detail`; the `source` and `created_at` columns of an export are ignored.

    Streaming, in batches of BATCH rows. A bad row is reported (line, reason) and skipped; the good
    rows land. Re-importing the same file changes nothing."""
    default = _checked_default(default_reason)
    reader = csv.reader(lines)
    try:
        columns = _header(reader)
        report = ImportReport()
        batch: list[Entry] = []
        for line, record in _records(reader, report):
            try:
                batch.append(_entry_of(record, columns, default))
            except InvalidValue as exc:
                _failed(report, line, str(exc))
            if len(batch) >= BATCH:
                _flush(conn, workspace_id, batch, source, now, tombstone_key, report)
    except UnicodeDecodeError:
        raise InvalidInput.on("file", f"is not UTF-8 text (near line {reader.line_num + 1}); "
                                      "save it as CSV UTF-8 and upload it again") from None
    _flush(conn, workspace_id, batch, source, now, tombstone_key, report)
    return report


def _records(reader: Any, report: ImportReport) -> Iterator[tuple[int, list[str]]]:
    """(first line, record) of the non-blank records; a record the csv module cannot read is
    reported and skipped."""
    while True:
        line = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            _failed(report, line, f"not CSV: {exc}")
            continue
        if any(cell.strip() for cell in record):
            yield line, record


def _checked_default(reason: str) -> str:
    try:
        return clean_reason(reason)
    except InvalidValue as exc:
        raise InvalidInput.on("reason", str(exc)) from None


def _header(reader: Any) -> dict[str, int]:
    try:
        first = next(reader)
    except StopIteration:
        raise InvalidInput.on("file", "is empty; its first line must be a header such as "
                                      "`channel,address,reason`") from None
    except csv.Error as exc:
        raise InvalidInput.on("file", f"line 1 is not CSV: {exc}") from None
    names = [cell.strip().lstrip("\ufeff").lower() for cell in first]
    unknown = [n for n in names if n and n not in IMPORT_COLUMNS + IGNORED_COLUMNS]
    if unknown or "address" not in names:
        problem = f"unknown column(s) {', '.join(map(repr, unknown))}; " if unknown else "no `address` column; "
        raise InvalidInput.on("file", problem + "the header must name `address` and optionally "
                                                "`channel`, `reason`, `detail` (e.g. `channel,address,reason`)")
    return {name: i for i, name in enumerate(names) if name in IMPORT_COLUMNS}


def _entry_of(record: list[str], columns: Mapping[str, int], default_reason: str) -> Entry:
    def cell(name: str) -> str | None:
        i = columns.get(name)
        return _unquote(record[i]) if i is not None and i < len(record) else None

    return clean_entry(cell("channel"), cell("address") or "", cell("reason"), cell("detail"),
                       default_reason=default_reason)


def _failed(report: ImportReport, line: int, reason: str) -> None:
    report.failed += 1
    if len(report.errors) < MAX_ERRORS:
        report.errors.append(RowError(line, reason))


def _flush(conn: Connection, workspace_id: str, batch: list[Entry], source: str, now: datetime,
           tombstone_key: bytes | None, report: ImportReport) -> None:
    added, unchanged = add_many(conn, workspace_id, batch, source=source, now=now, tombstone_key=tombstone_key)
    report.added += added
    report.unchanged += unchanged
    batch.clear()


# ---- reading ----------------------------------------------------------------------------------------
def _query(workspace_id: str, channel: str | None, reason: str | None) -> Any:
    s = suppressions.c
    query = select(s.id, s.channel, s.address, s.reason, s.source, s.message_id, s.detail,
                   s.created_at).where(s.workspace_id == workspace_id)
    if channel:
        query = query.where(s.channel == channel)
    if reason:
        query = query.where(s.reason == reason)
    return query


def export_rows(conn: Connection | Engine, workspace_id: str, channel: str | None = None, *,
                reason: str | None = None, batch: int = BATCH) -> Iterator[dict[str, Any]]:
    """Every suppression of the workspace (optionally of one channel/reason) in id order, read in
    keyset pages of `batch` rows: memory stays constant in the size of the list. Given an Engine,
    each page is read in its own short transaction (a slow reader then holds no lock)."""
    after = 0
    query = _query(workspace_id, channel, reason)
    while True:  # each page starts after the last: ends at the first short page
        page = query.where(suppressions.c.id > after).order_by(suppressions.c.id).limit(batch)
        if isinstance(conn, Engine):
            with conn.begin() as short:
                rows = [dict(r) for r in short.execute(page).mappings()]
        else:
            rows = [dict(r) for r in conn.execute(page).mappings()]
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1]["id"]


def list_page(conn: Connection, workspace_id: str, *, limit: int, cursor: str | None, channel: str | None = None,
              reason: str | None = None, address: str | None = None,
              tombstone_key: bytes | None = None) -> Page[dict[str, Any]]:
    """One keyset page (oldest first). `address` finds that address's entry, plain or tombstone."""
    query = _query(workspace_id, channel, reason)
    if address:
        forms = [normalise(channel or "email", address)]
        if tombstone_key is not None:
            forms += [tombstone(tombstone_key, ch, address) for ch in ([channel] if channel else LIST_CHANNELS)]
        query = query.where(suppressions.c.address.in_(forms))
    after = decode_cursor(cursor)
    if after is not None:
        if not after.isdigit() or len(after) > 19:
            raise InvalidInput.on("cursor", "is not a cursor this API returned; start without one")
        query = query.where(suppressions.c.id > int(after))
    rows = [dict(r) for r in conn.execute(query.order_by(suppressions.c.id).limit(limit + 1)).mappings()]
    return page_of(rows, limit, lambda r: str(r["id"]))


def csv_lines(rows: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """The export as CSV text, header first (EXPORT_COLUMNS), one line per row. A cell that a
    spreadsheet would run as a formula is prefixed with ' (import_csv removes it again)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    for row in rows:
        created = row["created_at"]
        writer.writerow([row["channel"], _formula_safe(row["address"]), row["reason"], row["source"],
                         created.isoformat() if created else "", _formula_safe(row["detail"] or "")])
        if buffer.tell() > 1 << 16:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _formula_safe(value: str) -> str:
    return "'" + value if _is_formula(value) else value


def _is_formula(value: str) -> bool:
    """Starts like a formula: =, -, @, tab, CR, or + not followed by digits only (an E.164 phone)."""
    return value.startswith(_FORMULA_START) or (value.startswith("+") and not value[1:].isdigit())


def _unquote(value: str) -> str:
    return value[1:] if value.startswith("'") and _is_formula(value[1:]) else value


# ---- removing ---------------------------------------------------------------------------------------
def unsuppress(conn: Connection, workspace_id: str, channel: str, address: str, *,
               tombstone_key: bytes | None = None) -> dict[str, Any]:
    """Remove an address from the list; returns the removed row. An erased address (a tombstone,
    or a plain address whose tombstone is listed) cannot be removed: Conflict."""
    s = suppressions.c
    text = address.strip()
    forms = [text.lower()] if is_tombstone(text.lower()) else [normalise(channel, text)]
    if tombstone_key is not None and not is_tombstone(forms[0]):
        forms.append(tombstone(tombstone_key, channel, text))
    rows = {r["address"]: dict(r) for r in conn.execute(
        select(suppressions).where(s.workspace_id == workspace_id, s.channel == channel,
                                   s.address.in_(forms))).mappings()}
    if any(r["reason"] == "erased" for r in rows.values()):
        raise Conflict("this address belonged to an erased contact: it stays suppressed and cannot be "
                       "removed or re-added", fields=[FieldProblem("address", "erased")])
    row = rows.get(forms[0])
    if row is None:
        raise NotFound(f"{channel} address {text!r} is not on the suppression list")
    conn.execute(delete(suppressions).where(s.id == row["id"]))
    return row
