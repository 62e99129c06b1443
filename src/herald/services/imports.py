"""CSV imports of contacts and orders (`herald import ...`, POST /api/v1/imports).

    inspect_file()  one streamed pass: size, SHA-256, encoding (BOM, else UTF-8, else cp1252),
                    line endings; then the header and its delimiter (, ; TAB |).
    create()        the `imports` row with the column mapping (auto-detected, overridable); the
                    checkpoint starts after the header.
    run()           streams the records from the checkpoint in batches; each batch is written in
                    one transaction together with the new checkpoint (byte offset, line number,
                    counters), so after a crash (even kill -9) a resume continues from the last
                    committed batch: nothing is imported twice, nothing is skipped. Contact rows
                    are parsed and normalised before their batch's transaction; for a large file
                    in a second process (the reader, _ReaderProcess) that parses the next batch
                    while this one writes. Which process parsed a batch changes nothing it stores.

Memory is constant in the file size: the file is never read whole, one batch is held at a time.
A batch's checkpoint update is conditional on the checkpoint it started from, so two runners of
one import (a job re-claimed while its first worker still finishes a batch) cannot both commit it.

Rows: a contact row lands when it has an identity (email, phone or customer id, normalised by
services/identity.py); values that do not normalise are dropped and reported, and a row left
without an identity is not imported. Every problem goes to import_errors with its physical line
number (a record with quoted newlines starts at the line reported), column, value and reason.
Counters: rows_ok (something changed), rows_unchanged (already so: re-running a file changes
nothing), rows_failed (not imported). Orders count per order (a Shopify-style export spreads an
order over one row per line item; consecutive rows with one order id are one order).
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import hashlib
import io
import marshal
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from functools import partial
from operator import methodcaller
from pathlib import Path
from typing import Any, BinaryIO
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, update
from sqlalchemy.exc import DataError, IntegrityError

import herald
from herald.db.tables import import_errors, imports, stores
from herald.domain import contacts as rules
from herald.domain import csvmap
from herald.domain.auth import Principal
from herald.domain.clock import Clock
from herald.domain.commerce import CustomerData, LineData, OrderData, StoreInfo
from herald.domain.connectors import BadPayload
from herald.domain.contacts import InvalidValue
from herald.domain.errors import HeraldError, InvalidInput, NotFound
from herald.domain.ids import new_id
from herald.domain.jobs import Fail, Outcome, Retry
from herald.domain.money import normalize_currency, to_minor
from herald.services import commerce, consent, identity, workspaces
from herald.services.pagination import Page, keyset_page, one_visible
from herald.services.stores import store_info

log = structlog.get_logger(__name__)

JOB_KIND = "intake.import"
JOB_ATTEMPTS = 10  # each attempt resumes from the checkpoint
JOB_TIMEOUT_SECONDS = 24 * 3600.0  # a large file takes long; the worker renews the lease meanwhile
RECHECK_SECONDS = 30.0
CONTACT_BATCH = 2000  # rows per transaction (identity.resolve_many works in sets of this size)
ORDER_BATCH = 500  # orders per transaction
READ_CHUNK = 1 << 20
# Contact rows are parsed (csv, phone numbers, emails) in a second process while this one writes,
# when what is left of the file is at least this large (below it, starting the process costs more).
PROCESS_MIN_BYTES = 4 << 20
# SQLite has one write lock and its busy handler retries with sleeps of up to 100 ms: a writer that
# commits and begins again at once starves every other writer (API requests, webhooks, the worker)
# for seconds. A short pause after each batch lets them in.
SQLITE_PAUSE = 0.02
MAX_VALUE = 1000  # characters of a value kept in the error report
ERROR_PAGE = 5000
FINISHED = ("completed", "cancelled")

Progress = Callable[[int, int], None]  # (bytes done, rows done)


class ImportFileError(HeraldError):
    """The file is missing, changed since the import started, or unreadable: resuming cannot help."""

    status = 422
    title = "Unusable file"
    slug = "import-file"


class Superseded(Exception):
    """Another runner committed this import's checkpoint first (or it was cancelled): stop."""


# ---- the file ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FileFacts:
    size: int
    sha256: str
    encoding: str  # a Python codec name; BOM-led files: utf-8-sig, utf-16, utf-32
    newline: str  # "\n" (also CRLF) or "\r" (old Mac exports)
    delimiter: str
    header: list[str]
    data_offset: int  # byte offset just after the header record
    data_line: int  # physical line number of the header's last line


def inspect_file(path: Path, encoding: str = "auto") -> FileFacts:
    """Read the file once (hash, encoding check, line endings), then its header."""
    try:
        with path.open("rb") as fh:
            head = fh.read(65536)
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not head.strip():
        raise ImportFileError("the file is empty")
    candidates = _candidates(encoding, head)
    size, digest, newline, failure = _scan(path, candidates[0], head, hashing=True)
    chosen = candidates[0]
    for fallback in candidates[1:]:
        if failure is None:
            break
        chosen = fallback
        _, _, newline, failure = _scan(path, fallback, head, hashing=False)
    if failure is not None:
        hint = "; try --encoding cp1252 (Windows/Excel) or --encoding auto" if encoding != "auto" else ""
        raise ImportFileError(f"the file is not valid {chosen}: {failure}{hint}")
    codec, bom = csvmap.codec_of(chosen, head)
    delimiter = csvmap.sniff_delimiter(_first_line(head[bom:], codec))
    with path.open("rb") as fh:
        reader = RecordReader(fh, codec, newline, delimiter, offset=bom, line=0)
        for _start, row, offset, line in reader:
            if isinstance(row, list) and any(cell.strip() for cell in row):
                header = [cell.strip().lstrip("\ufeff").strip() for cell in row]
                return FileFacts(size, digest, chosen, newline, delimiter, header, offset, line)
    raise ImportFileError("the file is empty: no header row")


def _candidates(encoding: str, head: bytes) -> list[str]:
    if encoding and encoding.lower() != "auto":
        try:
            return [codecs.lookup(encoding).name]
        except LookupError:
            raise InvalidInput.on("encoding", f"unknown encoding {encoding!r}; use auto, utf-8, utf-16, "
                                              "cp1252, latin-1, ...") from None
    found = csvmap.bom_encoding(head) or csvmap.guess_bomless_utf16(head)
    return [found] if found else ["utf-8", "cp1252", "latin-1"]


def _scan(path: Path, encoding: str, head: bytes, *, hashing: bool) -> tuple[int, str, str, str | None]:
    """(size, sha256, newline, decoding failure or None): one streamed pass. A decoding failure
    stops the decoding, not the pass (the size and hash are of the whole file)."""
    codec, bom = csvmap.codec_of(encoding, head)
    decoder = codecs.getincrementaldecoder(codec)("strict")
    digest = hashlib.sha256()
    size = lines = 0
    has_lf = has_cr = False
    failure: str | None = None
    with path.open("rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            if hashing:
                digest.update(chunk)
            elif failure is not None:
                break
            body = chunk[bom:] if size == 0 else chunk
            size += len(chunk)
            if failure is not None:
                continue
            try:
                text = decoder.decode(body)
            except UnicodeDecodeError as exc:
                where = size - len(body) + max(exc.start, 0)
                line = lines + body[:max(exc.start, 0)].count(b"\n") + 1
                failure = f"byte {body[exc.start:exc.start + 1]!r} at offset {where} (line {line}) does not decode"
                continue
            lines += body.count(b"\n")
            has_lf = has_lf or "\n" in text
            has_cr = has_cr or "\r" in text
        if failure is None:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                failure = "the file ends in the middle of a character"
    return size, digest.hexdigest(), "\r" if has_cr and not has_lf else "\n", failure


def _first_line(head: bytes, codec: str) -> str:
    text = head.decode(codec, errors="replace")
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line.strip():
            return line
    return ""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


Record = tuple[int, "list[str] | csv.Error", int, int]  # (first line, fields or error, end offset, end line)


class RecordReader:
    """CSV records of a binary file from a byte offset, with physical line numbers and the byte
    offset after each record (a checkpoint can be taken after any record).

    Files whose newline is the byte 0x0A (UTF-8, cp1252, ...) are split into lines as bytes and
    decoded line by line; the csv module pulls exactly the lines a record needs, so the file's
    position after a record is where the next one starts. UTF-16/32 and CR-only files are decoded
    in chunks and split as text, counting each line's encoded length.
    """

    def __init__(self, fh: BinaryIO, codec: str, newline: str, delimiter: str, *, offset: int, line: int) -> None:
        fh.seek(offset)
        self._base = line
        self._offset = [offset]
        lines: Iterator[str]
        if newline == "\n" and csvmap.ascii_compatible(codec):
            lines = map(methodcaller("decode", codec), fh)
            self.position: Callable[[], int] = fh.tell
        else:
            lines = _text_lines(fh, codec, newline, self._offset)
            self.position = self._text_position
        self._reader = csv.reader(lines, delimiter=delimiter, quotechar='"', doublequote=True, strict=False)

    def _text_position(self) -> int:
        return self._offset[0]

    def __iter__(self) -> Iterator[Record]:
        reader, base, position = self._reader, self._base, self.position
        last = base
        while True:
            try:
                row: list[str] | csv.Error = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                row = exc
            end = base + reader.line_num
            yield last + 1, row, position(), end
            last = end


def _text_lines(fh: BinaryIO, codec: str, newline: str, offset: list[int]) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder(codec)("strict")
    pending = ""
    while True:
        chunk = fh.read(READ_CHUNK)
        parts = (pending + decoder.decode(chunk, final=not chunk)).split(newline)
        pending = parts.pop()
        for part in parts:
            text = part + newline
            offset[0] += len(text.encode(codec))
            yield text
        if not chunk:
            break
    if pending:
        offset[0] += len(pending.encode(codec))
        yield pending


# ---- creating an import -------------------------------------------------------------------------
def create(conn: Connection, who: Principal, *, kind: str, store_id: str, path: Path, source_name: str,
           facts: FileFacts, mapping: dict[str, str] | None, default_country: str | None, now: datetime,
           import_id: str | None = None, owned_file: bool = False) -> dict[str, Any]:
    """The `imports` row, pending. `owned_file`: the file is Herald's copy (an upload), deleted
    when the import completes."""
    if kind not in csvmap.KINDS:
        raise InvalidInput.on("kind", f"must be one of {', '.join(csvmap.KINDS)}")
    if any("\x00" in text for text in [*facts.header, *(mapping or {}), *(mapping or {}).values()]):
        raise InvalidInput.on("mapping", "the header or the mapping contains a NUL character")
    workspaces.get_store(conn, who, store_id)
    country = None
    if default_country:
        try:
            country = rules.normalize_country(default_country)
        except InvalidValue as exc:
            raise InvalidInput.on("default_country", str(exc)) from None
    try:
        columns = csvmap.build_mapping(kind, facts.header, mapping)
        csvmap.require_fields(kind, columns, facts.header)
    except InvalidValue as exc:
        raise InvalidInput.on("mapping", str(exc)) from None
    row = {
        "id": import_id or new_id("imp"), "workspace_id": who.workspace_id, "store_id": store_id, "kind": kind,
        "source_name": source_name.replace("\x00", "")[:500], "path": str(path)[:2000], "sha256": facts.sha256,
        "size_bytes": facts.size, "encoding": facts.encoding,
        "mapping": {"columns": [{"index": c.index, "column": c.name, "field": c.field} for c in columns],
                    "overrides": dict(mapping or {})},
        "options": {"delimiter": facts.delimiter, "newline": facts.newline, "default_country": country,
                    "header": facts.header, "data_offset": facts.data_offset, "data_line": facts.data_line,
                    "owned_file": owned_file},
        "state": "pending", "offset": facts.data_offset, "line": facts.data_line,
        "rows_ok": 0, "rows_unchanged": 0, "rows_failed": 0, "error": None,
        "created_at": now, "updated_at": now, "finished_at": None,
    }
    conn.execute(insert(imports).values(row))
    return row


def prepare_resume(engine: Engine, who: Principal, import_id: str, path: Path, *, kind: str | None,
                   now: datetime) -> dict[str, Any]:
    """Point an interrupted import at `path` (the same file, checked by its SHA-256)."""
    with engine.begin() as conn:
        row = get_import(conn, who, import_id)
    if kind and row["kind"] != kind:
        raise InvalidInput.on("resume", f"import {import_id} imports {row['kind']}, not {kind}")
    if row["state"] in FINISHED:
        return row
    if sha256_of(path) != row["sha256"]:
        raise ImportFileError(f"{path} is not the file import {import_id} started with (its SHA-256 differs); "
                              "start a new import for a new file")
    with engine.begin() as conn:
        conn.execute(update(imports).where(imports.c.id == import_id).values(path=str(path)[:2000], updated_at=now))
        return get_import(conn, who, import_id)


# ---- reading imports ----------------------------------------------------------------------------
def _visible(who: Principal) -> Any:
    query = select(imports).where(imports.c.workspace_id == who.workspace_id)
    if who.store_id is not None:
        query = query.where(imports.c.store_id == who.store_id)
    return query


def get_import(conn: Connection, who: Principal, import_id: str) -> dict[str, Any]:
    row = one_visible(conn, _visible(who), import_id, "import")
    row["errors"] = conn.execute(select(func.count()).select_from(import_errors)
                                 .where(import_errors.c.import_id == import_id)).scalar_one()
    return row


def list_imports(conn: Connection, who: Principal, *, limit: int, cursor: str | None) -> Page[dict[str, Any]]:
    return keyset_page(conn, _visible(who), limit=limit, cursor=cursor)


ERROR_COLUMNS = ("line", "column", "value", "reason")


def error_rows(engine: Engine, import_id: str, page: int = ERROR_PAGE) -> Iterator[tuple[int, str, str, str]]:
    """The import's errors in line order, read page by page (constant memory)."""
    e = import_errors.c
    after: tuple[int, int] = (-1, -1)
    while True:
        with engine.begin() as conn:
            rows = conn.execute(select(e.id, e.line, e.column, e.value, e.reason)
                                .where(e.import_id == import_id,
                                       or_(e.line > after[0], and_(e.line == after[0], e.id > after[1])))
                                .order_by(e.line, e.id).limit(page)).all()
        for r in rows:
            yield r.line, r.column or "", r.value or "", r.reason
        if len(rows) < page:
            return
        after = (rows[-1].line, rows[-1].id)


def error_csv(engine: Engine, import_id: str) -> Iterator[str]:
    """The error report as CSV text, in chunks: line,column,value,reason."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(ERROR_COLUMNS)
    for n, (line, column, value, reason) in enumerate(error_rows(engine, import_id), 1):
        writer.writerow((line, column, _spreadsheet_safe(value), reason))
        if n % 1000 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _spreadsheet_safe(value: str) -> str:
    """A value a spreadsheet would run as a formula gets a leading apostrophe (CSV injection);
    phone numbers (+44..., -) stay as they are."""
    if value[:1] in ("=", "@", "\t", "\r") or (value[:1] in ("+", "-") and not value[1:2].isdigit()
                                                and value[1:2] not in (" ", "")):
        return "'" + value
    return value


# ---- running an import ---------------------------------------------------------------------------
@dataclass
class _Counts:
    ok: int = 0
    unchanged: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def add(self, other: _Counts) -> None:
        self.ok += other.ok
        self.unchanged += other.unchanged
        self.failed += other.failed
        self.errors.extend(other.errors)


@dataclass
class _Batch:
    records: list[tuple[int, list[str]]]  # (first line, fields)
    bad: list[tuple[int, str]]  # (line, reason): records the csv module could not read
    offset: int
    line: int


AfterBatch = Callable[[Connection, int], None]  # (connection, batches committed so far in this run)
Write = Callable[[Connection, datetime], "_Counts"]


@dataclass(slots=True)
class _Ready:
    """A batch ready to commit: the checkpoint after it and how to write it."""

    offset: int
    line: int
    write: Write


def run(engine: Engine, import_id: str, clock: Clock, *, progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None, batch_rows: int | None = None,
        after_batch: AfterBatch | None = None, reader_process: bool | None = None) -> dict[str, Any]:
    """Run (or resume) an import to its end; returns the import row. `after_batch` runs inside each
    batch's transaction (tests use it to simulate a crash: raising rolls that batch back).
    `reader_process`: parse contact rows in a second process (None: when the file is large)."""
    row = _claim(engine, import_id, clock.now())
    if row["state"] in FINISHED:
        return row
    try:
        _check_file(row)
        ctx = _context(engine, row)
        size = batch_rows or (CONTACT_BATCH if row["kind"] == "contacts" else ORDER_BATCH)
        done = row["rows_ok"] + row["rows_unchanged"] + row["rows_failed"]
        pause = SQLITE_PAUSE if engine.dialect.name == "sqlite" else 0.0
        source = _Source.of(row)
        if reader_process is None:
            reader_process = _worth_a_process(row)
        checkpoint = (row["offset"], row["line"])
        with _ready_batches(ctx, source, size, reader_process=reader_process) as batches:
            for n, batch in enumerate(batches, 1):
                if should_stop is not None and should_stop():
                    log.info("import_paused", import_id=import_id, offset=checkpoint[0])
                    return _reload(engine, import_id)
                counts = _commit_batch(engine, ctx, clock.now(), checkpoint, batch, n, after_batch)
                if pause:
                    time.sleep(pause)
                checkpoint = (batch.offset, batch.line)
                done += counts.ok + counts.unchanged + counts.failed
                if progress is not None:
                    progress(batch.offset, done)
        return _finish(engine, row, clock.now())
    except Superseded:
        log.info("import_superseded", import_id=import_id)
        return _reload(engine, import_id)
    except BaseException as exc:
        _fail(engine, import_id, exc, clock.now())
        raise


def _claim(engine: Engine, import_id: str, now: datetime) -> dict[str, Any]:
    with engine.begin() as conn:
        found = conn.execute(select(imports).where(imports.c.id == import_id)).mappings().first()
        if found is None:
            raise NotFound(f"no import {import_id!r}")
        row = dict(found)
        if row["state"] in FINISHED:
            return row
        conn.execute(update(imports).where(imports.c.id == import_id)
                     .values(state="running", error=None, updated_at=now))
        return {**row, "state": "running", "resumed": row["state"] != "pending"}


def _check_file(row: dict[str, Any]) -> None:
    path = Path(row["path"])
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImportFileError(f"the import's file {path} is gone ({exc.strerror}); it cannot continue") from None
    if size != row["size_bytes"] or (row.get("resumed") and sha256_of(path) != row["sha256"]):
        raise ImportFileError(f"the import's file {path} changed since the import started; start a new import")


def _reload(engine: Engine, import_id: str) -> dict[str, Any]:
    with engine.begin() as conn:
        return dict(conn.execute(select(imports).where(imports.c.id == import_id)).mappings().one())


def _finish(engine: Engine, row: dict[str, Any], now: datetime) -> dict[str, Any]:
    with engine.begin() as conn:
        conn.execute(update(imports).where(imports.c.id == row["id"], imports.c.state == "running")
                     .values(state="completed", updated_at=now, finished_at=now))
    if row["options"].get("owned_file"):
        Path(row["path"]).unlink(missing_ok=True)
    done = _reload(engine, row["id"])
    log.info("import_completed", import_id=row["id"], kind=row["kind"], ok=done["rows_ok"],
             unchanged=done["rows_unchanged"], failed=done["rows_failed"])
    return done


def _fail(engine: Engine, import_id: str, exc: BaseException, now: datetime) -> None:
    reason = exc.detail if isinstance(exc, HeraldError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, KeyboardInterrupt):
        reason = "interrupted"
    try:
        with engine.begin() as conn:
            conn.execute(update(imports).where(imports.c.id == import_id, imports.c.state == "running")
                         .values(state="failed", error=reason[:4000], updated_at=now))
    except Exception:  # the database itself may be what failed; the checkpoint is intact either way
        log.warning("import_state_not_saved", import_id=import_id)
    log.warning("import_stopped", import_id=import_id, error=reason[:200])


def _commit_batch(engine: Engine, ctx: _Context, now: datetime, checkpoint: tuple[int, int], batch: _Ready,
                  n: int, after_batch: AfterBatch | None) -> _Counts:
    with engine.begin() as conn:
        moved = conn.execute(update(imports).where(
            imports.c.id == ctx.import_id, imports.c.offset == checkpoint[0], imports.c.line == checkpoint[1],
            imports.c.state == "running").values(offset=batch.offset, line=batch.line, updated_at=now))
        if moved.rowcount != 1:
            raise Superseded()
        counts = batch.write(conn, now)
        if counts.errors:
            conn.execute(insert(import_errors), counts.errors)
        conn.execute(update(imports).where(imports.c.id == ctx.import_id).values(
            rows_ok=imports.c.rows_ok + counts.ok, rows_unchanged=imports.c.rows_unchanged + counts.unchanged,
            rows_failed=imports.c.rows_failed + counts.failed))
        if after_batch is not None:
            after_batch(conn, n)
    return counts


def _resilient(conn: Connection, ctx: _Context, records: list[tuple[int, list[str]]], now: datetime,
               write: Callable[[Connection, _Context, list[tuple[int, list[str]]], datetime], _Counts]) -> _Counts:
    """Write a batch in a savepoint; when the database refuses it (a value PostgreSQL cannot
    store, say), split it in halves until the offending rows are found and reported."""
    try:
        with conn.begin_nested():
            return write(conn, ctx, records, now)
    except (DataError, IntegrityError, InvalidValue, BadPayload) as exc:
        if len(records) == 1 or not _units(ctx, records):
            return _Counts(failed=1, errors=[_error(ctx, records[0][0], None, "",
                                                    f"could not be stored: {_reason(exc)}; row not imported")])
        half = _split_point(ctx, records)
        out = _resilient(conn, ctx, records[:half], now, write)
        out.add(_resilient(conn, ctx, records[half:], now, write))
        return out


def _reason(exc: Exception) -> str:
    return (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0][:300]


def _write_order_batch(ctx: _Context, batch: _Batch, conn: Connection, now: datetime) -> _Counts:
    counts = _unreadable(ctx, batch.bad)
    if batch.records:
        counts.add(_resilient(conn, ctx, batch.records, now, _write_orders))
    return counts


def _units(ctx: _Context, records: list[tuple[int, list[str]]]) -> bool:
    """Whether the records can be split (orders: more than one order)."""
    return ctx.kind == "contacts" or len({ctx.order_key(r) for _l, r in records}) > 1


def _split_point(ctx: _Context, records: list[tuple[int, list[str]]]) -> int:
    half = len(records) // 2
    if ctx.kind == "orders":  # never split one order's rows
        key = ctx.order_key(records[half][1])
        while half > 0 and ctx.order_key(records[half - 1][1]) == key:
            half -= 1
        if half == 0:
            half = len(records) // 2
            while half < len(records) and ctx.order_key(records[half][1]) == key:
                half += 1
    return half


def _contact_batches(reader: RecordReader, size: int) -> Iterator[_Batch]:
    batch = _Batch([], [], 0, 0)
    for start, row, offset, line in reader:
        if isinstance(row, list):
            if any(row):  # blank lines and rows of bare delimiters (",,,,") are skipped
                batch.records.append((start, row))
        else:
            batch.bad.append((start, f"unreadable CSV: {row}; row not imported"))
        batch.offset, batch.line = offset, line
        if len(batch.records) + len(batch.bad) >= size:
            yield batch
            batch = _Batch([], [], offset, line)
    if batch.records or batch.bad:
        yield batch


def _order_batches(reader: RecordReader, size: int, key_of: Callable[[list[str]], str]) -> Iterator[_Batch]:
    """Batches of whole orders: a batch is cut only where the order id changes."""
    batch = _Batch([], [], 0, 0)
    orders, last_key = 0, None
    for start, row, offset, line in reader:
        if isinstance(row, list):
            if not any(row):
                batch.offset, batch.line = offset, line
                continue
            key = key_of(row)
            if key != last_key or not key:
                if orders >= size:
                    yield batch
                    batch = _Batch([], [], batch.offset, batch.line)
                    orders = 0
                orders += 1
                last_key = key
            batch.records.append((start, row))
        else:
            batch.bad.append((start, f"unreadable CSV: {row}; row not imported"))
            last_key = None
        batch.offset, batch.line = offset, line
    if batch.records or batch.bad:
        yield batch


# ---- where batches come from ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Source:
    """Where to read an import's records from: its file and checkpoint (picklable, for the reader process)."""

    path: str
    encoding: str
    newline: str
    delimiter: str
    offset: int
    line: int

    @staticmethod
    def of(row: dict[str, Any]) -> _Source:
        options = row["options"]
        return _Source(row["path"], row["encoding"], options["newline"], options["delimiter"], row["offset"],
                       row["line"])

    @contextmanager
    def records(self) -> Iterator[RecordReader]:
        with Path(self.path).open("rb") as fh:
            codec, _bom = csvmap.codec_of(self.encoding, fh.read(4))
            yield RecordReader(fh, codec, self.newline, self.delimiter, offset=self.offset, line=self.line)


def _worth_a_process(row: dict[str, Any]) -> bool:
    """A reader process pays for itself on a large contacts file with a second core to run on."""
    return (row["kind"] == "contacts" and row["size_bytes"] - row["offset"] >= PROCESS_MIN_BYTES
            and (os.cpu_count() or 1) > 1)


@contextmanager
def _ready_batches(ctx: _Context, source: _Source, size: int, *, reader_process: bool) -> Iterator[Iterator[_Ready]]:
    """The import's batches in file order. Contact rows are parsed and normalised before the
    batch's transaction starts: in this process, or (`reader_process`) in a second one that parses
    the next batch while this one writes. Either way the checkpoint committed with
    a batch is the one the file reader gave it, so a resume starts after the last committed batch."""
    if ctx.kind != "contacts":
        with source.records() as reader:
            yield (_Ready(b.offset, b.line, partial(_write_order_batch, ctx, b))
                   for b in _order_batches(reader, size, ctx.order_key))
        return
    if not reader_process:
        with source.records() as reader:
            yield (_ready_contacts(ctx, _parse_contacts(ctx, b)) for b in _contact_batches(reader, size))
        return
    with _ReaderProcess(ctx, source, size) as parsed:
        yield (_ready_contacts(ctx, _decode(p)) for p in parsed)


def _ready_contacts(ctx: _Context, parsed: _ParsedContacts) -> _Ready:
    return _Ready(parsed.offset, parsed.line, partial(_write_parsed_contacts, ctx, parsed))


class _ReaderProcess:
    """A second Python process that reads and parses contact batches (_reader_main); iterating
    yields them in file order. Leaving the `with` stops it.

    It is started with subprocess (python -P -c ...), not multiprocessing: a spawned
    multiprocessing child re-imports the parent's __main__, which a server or script embedding
    Herald may not allow. The parent sends (ctx, source, batch size) pickled on the child's stdin;
    the child writes length-prefixed pickled messages to its stdout. A blocking pipe is the bound:
    the child parses at most one batch ahead of the one being written, so memory stays constant,
    and if the parent dies the child's next write fails and it exits."""

    def __init__(self, ctx: _Context, source: _Source, size: int) -> None:
        self._job = pickle.dumps((ctx, source, size), protocol=pickle.HIGHEST_PROTOCOL)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        src = str(Path(herald.__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
        self._process = subprocess.Popen(
            [sys.executable, "-P", "-c", "from herald.services.imports import _reader_main; _reader_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env={**os.environ, "PYTHONPATH": path})

    def __enter__(self) -> Iterator[_Encoded]:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            with stdin:
                stdin.write(self._job)
        except BrokenPipeError:
            pass  # it died at once: the first read reports why
        return self._batches()

    def __exit__(self, *_exc: object) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._stderr.close()

    def _batches(self) -> Iterator[_Encoded]:
        while True:
            kind, payload = self._next()
            if kind == "end":
                return
            if kind == "error":
                raise payload
            yield marshal.loads(payload)  # noqa: S302 - our own child's output

    def _next(self) -> tuple[str, Any]:
        stdout = self._process.stdout
        assert stdout is not None
        head = stdout.read(8)
        body = stdout.read(int.from_bytes(head, "big")) if len(head) == 8 else b""
        if len(head) < 8 or len(body) < int.from_bytes(head, "big"):
            self._process.wait()
            self._stderr.seek(0)
            tail = self._stderr.read().decode("utf-8", "replace").strip().splitlines()[-1:]
            raise RuntimeError(f"the import's reader process stopped (exit code {self._process.returncode})"
                               + (f": {tail[0][:300]}" if tail else ""))
        return pickle.loads(body)  # type: ignore[no-any-return]  # noqa: S301 - our own child's output


def _reader_main() -> None:
    """The reader process (see _ReaderProcess): parse batches to stdout until the file ends; an
    exception is passed on to the parent, which raises it (the import then fails, resumably)."""
    ctx, source, size = pickle.load(sys.stdin.buffer)  # noqa: S301 - from our parent
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever else writes to stdout (a stray print, a library) goes to stderr
    try:
        with source.records() as reader:
            for batch in _contact_batches(reader, size):
                _send(out, ("batch", marshal.dumps(_encode(_parse_contacts(ctx, batch)))))
        _send(out, ("end", None))
    except BrokenPipeError:  # the parent is gone
        return
    except BaseException as exc:  # every other failure goes to the parent
        try:
            _send(out, ("error", exc))
        except BrokenPipeError:
            return
        except Exception:  # an exception that cannot be pickled goes as its text
            _send(out, ("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


def _send(out: BinaryIO, message: tuple[str, Any]) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(len(data).to_bytes(8, "big"))
    out.write(data)
    out.flush()


# A parsed batch crosses processes as plain tuples of str/int/None/list/dict in marshal format
# (loaded several times faster than pickled dataclasses):
# (rows, (failed, errors), offset, line); a row is (line, external, email, phone, profile, tags,
# attributes, consents, notes).
_Encoded = tuple[list[tuple[Any, ...]], tuple[int, list[dict[str, Any]]], int, int]


def _encode(parsed: _ParsedContacts) -> _Encoded:
    rows = [(r.line, p.external, p.email, p.phone, p.profile, p.tags, p.attributes, r.consents, r.notes)
            for r in parsed.rows for p in (r.person,)]
    return rows, (parsed.counts.failed, parsed.counts.errors), parsed.offset, parsed.line


def _decode(encoded: _Encoded) -> _ParsedContacts:
    rows, (failed, errors), offset, line = encoded
    parsed = [_ContactRow(n, identity.Person(external, email, phone, profile, tags, attributes), consents, notes)
              for n, external, email, phone, profile, tags, attributes, consents, notes in rows]
    return _ParsedContacts(parsed, _Counts(failed=failed, errors=errors), offset, line)


# ---- mapping a row --------------------------------------------------------------------------------
@dataclass
class _Context:
    import_id: str
    workspace_id: str
    kind: str
    store: StoreInfo
    zone: tzinfo
    default_country: str | None
    width: int
    index: dict[str, int]  # field -> column index (singular fields)
    names: dict[int, str]  # column index -> header name
    externals: list[tuple[str, int]]  # (namespace, column)
    attributes: list[tuple[str, int]]  # (key, column)
    consents: list[tuple[str, int]]  # (channel, column)
    profile: list[tuple[str, int]]  # (profile key, column)
    source: str

    def col(self, name: str) -> int:
        return self.index.get(name, -1)

    def order_key(self, row: list[str]) -> str:
        for name in ("order_id", "number"):
            i = self.index.get(name, -1)
            if 0 <= i < len(row) and row[i].strip():
                return csvmap.clean_id(row[i])
        return ""


def _context(engine: Engine, row: dict[str, Any]) -> _Context:
    with engine.begin() as conn:
        store_row = dict(conn.execute(select(stores).where(stores.c.id == row["store_id"])).mappings().one())
    columns = [csvmap.Column(c["index"], c["column"], c["field"]) for c in row["mapping"]["columns"]]
    index: dict[str, int] = {}
    externals, attributes, consents, profile = [], [], [], []
    for c in columns:
        if c.field == "external":
            externals.append((identity.store_namespace(store_row["id"]), c.index))
        elif c.field.startswith("external."):
            externals.append((c.field[len("external."):], c.index))
        elif c.field.startswith("attributes."):
            attributes.append((c.field[len("attributes."):], c.index))
        else:
            index[c.field] = c.index
            if row["kind"] == "contacts" and c.field in csvmap.CONSENT_FIELDS:
                consents.append((csvmap.CONSENT_FIELDS[c.field], c.index))
            elif row["kind"] == "contacts" and c.field in identity.PROFILE_KEYS:
                profile.append((c.field, c.index))
    try:
        zone: tzinfo = ZoneInfo(store_row["timezone"])
    except (KeyError, ValueError):
        zone = ZoneInfo("UTC")
    return _Context(import_id=row["id"], workspace_id=row["workspace_id"], kind=row["kind"],
                    store=store_info(store_row), zone=zone, default_country=row["options"].get("default_country"),
                    width=len(row["options"]["header"]), index=index, names={c.index: c.name for c in columns},
                    externals=externals, attributes=attributes, consents=consents, profile=profile,
                    source=f"csv:{row['id']}")


def _error(ctx: _Context, line: int, column: int | None, value: str, reason: str) -> dict[str, Any]:
    return {"import_id": ctx.import_id, "line": line, "column": ctx.names.get(column, "") if column is not None
            else None, "value": value[:MAX_VALUE].replace("\x00", "\\0") if value else None,
            "reason": reason.replace("\x00", "\\0")}


def _shape(ctx: _Context, line: int, row: list[str], out: _Counts) -> list[str] | None:
    """The row padded to the header's width; None (reported) when it has extra values or NULs."""
    width = ctx.width
    if len(row) > width and any(v.strip() for v in row[width:]):
        out.failed += 1
        out.errors.append(_error(ctx, line, None, ",".join(row[width:])[:MAX_VALUE],
                                 f"the row has {len(row)} values but the header has {width} columns "
                                 "(an unquoted delimiter or a missing quote?); row not imported"))
        return None
    if "\x00" in "".join(row):
        out.failed += 1
        out.errors.append(_error(ctx, line, None, "", "the row contains a NUL character; row not imported"))
        return None
    if len(row) < width:
        row = row + [""] * (width - len(row))
    return row


def _unreadable(ctx: _Context, bad: list[tuple[int, str]]) -> _Counts:
    return _Counts(failed=len(bad), errors=[_error(ctx, line, None, "", reason) for line, reason in bad])


@dataclass(slots=True)
class _ContactRow:
    line: int
    person: identity.Person
    consents: list[tuple[str, bool]]
    notes: list[dict[str, Any]]  # errors about values dropped from the row: reported when the row is stored


@dataclass(slots=True)
class _ParsedContacts:
    """A batch of contact records, parsed: the rows to store, and the records that failed
    (unreadable, misshapen, no identity) counted and reported."""

    rows: list[_ContactRow]
    counts: _Counts
    offset: int
    line: int


def _parse_contacts(ctx: _Context, batch: _Batch) -> _ParsedContacts:
    """Pure (no database): runs in the reader process when there is one."""
    counts = _unreadable(ctx, batch.bad)
    rows: list[_ContactRow] = []
    for line, raw in batch.records:
        row = _shape(ctx, line, raw, counts)
        if row is not None:
            parsed = _contact(ctx, line, row, counts)
            if parsed is not None:
                rows.append(parsed)
    return _ParsedContacts(rows, counts, batch.offset, batch.line)


def _write_parsed_contacts(ctx: _Context, parsed: _ParsedContacts, conn: Connection, now: datetime) -> _Counts:
    counts = _Counts(failed=parsed.counts.failed, errors=list(parsed.counts.errors))
    if parsed.rows:
        counts.add(_resilient_contacts(conn, ctx, parsed.rows, now))
    return counts


def _resilient_contacts(conn: Connection, ctx: _Context, rows: list[_ContactRow], now: datetime) -> _Counts:
    """As _resilient, for parsed contact rows: a row the database refuses is reported alone."""
    try:
        with conn.begin_nested():
            return _write_contacts(conn, ctx, rows, now)
    except (DataError, IntegrityError, InvalidValue, BadPayload) as exc:
        if len(rows) == 1:
            return _Counts(failed=1, errors=[_error(ctx, rows[0].line, None, "",
                                                    f"could not be stored: {_reason(exc)}; row not imported")])
        half = len(rows) // 2
        out = _resilient_contacts(conn, ctx, rows[:half], now)
        out.add(_resilient_contacts(conn, ctx, rows[half:], now))
        return out


def _write_contacts(conn: Connection, ctx: _Context, landed: list[_ContactRow], now: datetime) -> _Counts:
    out = _Counts()
    for row in landed:
        out.errors.extend(row.notes)
    results = identity.resolve_many(conn, ctx.workspace_id, ctx.store.id, [r.person for r in landed], now)
    changes: dict[tuple[str, str], consent.ConsentChange] = {}  # later rows win, as across batches
    for parsed, result in zip(landed, results, strict=True):
        for kind in result.conflicts:
            column = _conflict_column(ctx, kind)
            out.errors.append(_error(ctx, parsed.line, column if column >= 0 else None, _held(parsed.person, kind),
                                     f"this {kind} belongs to another contact and stays there (merge the two "
                                     "contacts to combine them); the rest of the row was imported"))
        for channel, granted in parsed.consents:
            changes[(result.contact_id, channel)] = consent.ConsentChange(
                contact_id=result.contact_id, store_id=ctx.store.id, channel=channel, purpose="marketing",
                state="granted" if granted else "withdrawn", source=ctx.source, recorded_at=now)
    consent_changed = _consent_changes(conn, results, changes)
    if changes:
        consent.record_many(conn, ctx.workspace_id, list(changes.values()),
                            new_contacts={r.contact_id for r in results if r.created})
    for result in results:
        if result.changed or result.contact_id in consent_changed:
            out.ok += 1
        else:
            out.unchanged += 1
    return out


def _held(person: identity.Person, kind: str) -> str:
    if kind == "email":
        return person.email or ""
    if kind == "phone":
        return person.phone or ""
    return next((value for ns, value in person.external if f"external:{ns}" == kind), "")


def _conflict_column(ctx: _Context, kind: str) -> int:
    if kind.startswith("external:"):
        ns = kind[len("external:"):]
        return next((i for n, i in ctx.externals if n == ns), -1)
    return ctx.col(kind)


def _consent_changes(conn: Connection, results: Sequence[identity.Resolved],
                     changes: dict[tuple[str, str], consent.ConsentChange]) -> set[str]:
    """Contacts whose only change is their consent (the rest were counted changed already)."""
    quiet = {r.contact_id for r in results if not r.changed}
    asked = [c for c in changes.values() if c.contact_id in quiet]
    if not asked:
        return set()
    current = consent.current_states(conn, sorted({c.contact_id for c in asked}))
    return {c.contact_id for c in asked if current.get(c.key) != c.state}


def _contact(ctx: _Context, line: int, row: list[str], out: _Counts) -> _ContactRow | None:
    """Normalise one row (services/identity.py rules); report what does not normalise."""
    notes: list[tuple[int, str]] = []  # (column, reason)
    external = [(ns, csvmap.clean_id(row[i])) for ns, i in ctx.externals if row[i].strip()]
    profile = {key: row[i] for key, i in ctx.profile if row[i]}
    country = profile.get("country")
    if country and len(country.strip()) != 2:
        try:
            profile["country"] = csvmap.country_code(country)
        except InvalidValue as exc:
            notes.append((ctx.index["country"], str(exc)))
            del profile["country"]
    i = ctx.col("tags")
    tags = csvmap.split_tags(row[i]) if i >= 0 and row[i] else None
    attributes = {key: row[i].strip() for key, i in ctx.attributes if row[i].strip()} or None
    e, p = ctx.col("email"), ctx.col("phone")
    person, problems = identity.normalize_person(
        external=external, email=row[e] if e >= 0 else None, phone=row[p] if p >= 0 else None,
        default_country=ctx.default_country, profile=profile, tags=tags, attributes=attributes)
    for problem in problems:
        notes.append((_problem_column(ctx, problem.field), problem.reason))
    consents: list[tuple[str, bool]] = []
    for channel, i in ctx.consents:
        if row[i]:
            try:
                flag = csvmap.parse_consent(row[i])
            except InvalidValue as exc:
                notes.append((i, str(exc)))
                continue
            if flag is not None:
                consents.append((channel, flag))
    if not person.identity_keys():
        out.failed += 1
        if not notes:
            out.errors.append(_error(ctx, line, None, "", "no email, phone or customer id; row not imported"))
        for column, reason in notes:
            out.errors.append(_error(ctx, line, column if column >= 0 else None, row[column] if column >= 0 else "",
                                     f"{reason}; row not imported (no usable email, phone or customer id)"))
        return None
    kept = [_error(ctx, line, column if column >= 0 else None, row[column] if column >= 0 else "",
                   f"{reason}; value ignored, the rest of the row was imported") for column, reason in notes]
    return _ContactRow(line, person, consents, kept)


def _problem_column(ctx: _Context, name: str) -> int:
    if name.startswith("external_ids."):
        ns = name[len("external_ids."):]
        return next((i for n, i in ctx.externals if n == ns), -1)
    if name == "attributes":
        return ctx.attributes[0][1] if len(ctx.attributes) == 1 else -1
    return ctx.col(name)


# ---- orders ---------------------------------------------------------------------------------------
class _Bad(Exception):
    def __init__(self, column: int, reason: str) -> None:
        super().__init__(reason)
        self.column, self.reason = column, reason


def _write_orders(conn: Connection, ctx: _Context, records: list[tuple[int, list[str]]], now: datetime) -> _Counts:
    out = _Counts()
    built: list[OrderData] = []
    starts: list[int] = []  # first line of each built order
    group: list[tuple[int, list[str]]] = []
    last_key: str | None = None
    for line, raw in records:
        row = _shape(ctx, line, raw, out)
        if row is None:
            continue
        key = ctx.order_key(row)
        if group and (key != last_key or not key):
            _add_order(ctx, group, built, starts, out)
            group = []
        group.append((line, row))
        last_key = key
    if group:
        _add_order(ctx, group, built, starts, out)
    if built:
        report = commerce.apply(conn, ctx.store, built, now, source=ctx.source)
        out.ok += report.orders
        out.unchanged += report.unchanged
        lines = {f"order {o.external_id}": line for o, line in zip(built, starts, strict=True)}
        for problem in report.problems:  # values apply() dropped that the checks above let through
            label, _, reason = problem.partition(": ")
            out.errors.append(_error(ctx, lines.get(label, records[0][0]), None, "",
                                     f"{reason}; value ignored, the order was imported"))
    return out


def _add_order(ctx: _Context, group: list[tuple[int, list[str]]], built: list[OrderData], starts: list[int],
               out: _Counts) -> None:
    line = group[0][0]
    notes: list[tuple[int, str, str]] = []  # (column, value, reason) of values dropped
    try:
        built.append(_order(ctx, group, notes))
        starts.append(line)
    except _Bad as exc:
        out.failed += 1
        value = _pick(ctx, group, exc.column)
        out.errors.append(_error(ctx, line, exc.column if exc.column >= 0 else None, value,
                                 f"{exc.reason}; order not imported"))
        return
    for column, value, reason in notes:
        out.errors.append(_error(ctx, line, column, value, f"{reason}; value ignored, the order was imported"))


def _pick(ctx: _Context, group: list[tuple[int, list[str]]], column: int) -> str:
    """An order-level value: the first non-empty one among the order's rows."""
    if column < 0:
        return ""
    for _line, row in group:
        if row[column].strip():
            return row[column].strip()
    return ""


def _order(ctx: _Context, group: list[tuple[int, list[str]]], notes: list[tuple[int, str, str]]) -> OrderData:
    def value(name: str) -> str:
        return _pick(ctx, group, ctx.col(name))

    external = csvmap.clean_id(value("order_id") or value("number"))
    if not external:
        raise _Bad(ctx.col("order_id") if ctx.col("order_id") >= 0 else ctx.col("number"), "no order id")
    if len(external) > 64:
        raise _Bad(ctx.col("order_id"), "order id longer than 64 characters")
    currency = ctx.store.currency
    if value("currency"):
        try:
            currency = normalize_currency(value("currency"))
        except InvalidValue as exc:
            raise _Bad(ctx.col("currency"), str(exc)) from None
    placed_at = _date(ctx, value("placed_at"), "placed_at", required=True)
    assert placed_at is not None
    cancelled_at = _date(ctx, value("cancelled_at"), "cancelled_at", required=False)
    status = value("financial_status").lower() or None
    if status in ("cancelled", "canceled") and cancelled_at is None:
        cancelled_at = placed_at
    money = {name: _money(ctx, value(name), name, currency) for name in
             ("total", "subtotal", "discount", "shipping", "tax", "refunded")}
    lines = _lines(ctx, group, currency)
    subtotal = money["subtotal"] if money["subtotal"] is not None else sum(x.total_minor for x in lines)
    total = money["total"]
    if total is None:
        total = subtotal - (money["discount"] or 0) + (money["shipping"] or 0) + (money["tax"] or 0)
    country = _country(ctx, value("shipping_country"), notes)
    number = value("number") or None
    return OrderData(
        external_id=external, currency=currency, placed_at=placed_at, customer=_customer(ctx, group, country, notes),
        number=number[:64] if number else None, subtotal_minor=subtotal, discount_minor=money["discount"] or 0,
        shipping_minor=money["shipping"] or 0, tax_minor=money["tax"] or 0, total_minor=total,
        refunded_minor=money["refunded"], discount_codes=csvmap.split_tags(value("discount_codes")),
        financial_status=(status or None) and status[:32],
        fulfillment_status=(value("fulfillment_status").lower() or None) and value("fulfillment_status").lower()[:32],
        shipping_country=country, cancelled_at=cancelled_at, lines=lines)


def _date(ctx: _Context, raw: str, name: str, *, required: bool) -> datetime | None:
    if not raw:
        if required:
            raise _Bad(ctx.col(name), f"no {name.replace('_', ' ')} date")
        return None
    try:
        return csvmap.parse_datetime(raw, ctx.zone)
    except InvalidValue as exc:
        raise _Bad(ctx.col(name), str(exc)) from None


def _money(ctx: _Context, raw: str, name: str, currency: str) -> int | None:
    if not raw:
        return None
    try:
        return to_minor(csvmap.clean_amount(raw), currency)
    except InvalidValue as exc:
        raise _Bad(ctx.col(name), f"{name}: {exc}") from None


def _country(ctx: _Context, raw: str, notes: list[tuple[int, str, str]]) -> str | None:
    if not raw:
        return None
    try:
        return rules.normalize_country(csvmap.country_code(raw))
    except InvalidValue as exc:
        notes.append((ctx.col("shipping_country"), raw, str(exc)))
        return None


def _lines(ctx: _Context, group: list[tuple[int, list[str]]], currency: str) -> list[LineData]:
    t, q, p, s = (ctx.col(n) for n in ("line_title", "line_quantity", "line_price", "line_sku"))
    if t < 0 and s < 0:
        return []
    found = []
    for _line, row in group:
        title = row[t].strip() if t >= 0 else ""
        sku = row[s].strip() if s >= 0 else ""
        if not title and not sku:
            continue
        try:
            quantity = csvmap.parse_quantity(row[q]) if q >= 0 else 1
        except InvalidValue as exc:
            raise _Bad(q, str(exc)) from None
        unit = _money(ctx, row[p].strip(), "line_price", currency) if p >= 0 else 0
        found.append(LineData(title=(title or sku)[:500], quantity=quantity, unit_price_minor=unit or 0,
                              total_minor=(unit or 0) * quantity, sku=sku[:128] or None))
    return found


def _customer(ctx: _Context, group: list[tuple[int, list[str]]], country: str | None,
              notes: list[tuple[int, str, str]]) -> CustomerData | None:
    def value(name: str) -> str:
        return _pick(ctx, group, ctx.col(name))

    email = _checked(ctx, "email", value("email"), identity.normalize_email, notes)
    region = country or ctx.default_country
    phone = _checked(ctx, "phone", value("phone"), lambda v: rules.normalize_phone(v, region), notes)
    customer_id = csvmap.clean_id(value("customer_id")) or None
    if not (email or phone or customer_id):
        return None
    marketing = None
    if value("email_marketing"):
        try:
            marketing = csvmap.parse_consent(value("email_marketing"))
        except InvalidValue as exc:
            notes.append((ctx.col("email_marketing"), value("email_marketing"), str(exc)))
    return CustomerData(external_id=customer_id, email=email, phone=phone,
                        first_name=value("first_name")[:200] or None, last_name=value("last_name")[:200] or None,
                        country=country, email_marketing=marketing)


def _checked(ctx: _Context, name: str, raw: str, fn: Callable[[str], str],
             notes: list[tuple[int, str, str]]) -> str | None:
    if not raw:
        return None
    try:
        return fn(raw)
    except InvalidValue as exc:
        notes.append((ctx.col(name), raw, str(exc)))
        return None


# ---- the work engine ----------------------------------------------------------------------------------
async def run_job(engine: Engine, clock: Clock, import_id: str) -> Outcome:
    """The `intake.import` job: run the import in a thread, stopping at the next batch boundary
    when the worker cancels it (shutdown); a retry resumes from the checkpoint."""
    stop = threading.Event()
    try:
        row = await asyncio.to_thread(run, engine, import_id, clock, should_stop=stop.is_set)
    except asyncio.CancelledError:
        stop.set()
        raise
    except (ImportFileError, NotFound) as exc:
        return Fail(exc.detail)
    if row["state"] == "running":  # another runner committed first (e.g. a worker that was stopping)
        return Retry(RECHECK_SECONDS, "another runner held this import; continuing from its checkpoint")
    return None
