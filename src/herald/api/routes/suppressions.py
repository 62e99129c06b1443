"""The workspace's suppression list over the API (services/suppressions.py): list (JSON pages, or
the whole list as CSV with ?format=csv), add in bulk, import a CSV, remove one address.

The list belongs to the workspace: a store-scoped API key is answered 403. Erased contacts'
addresses are listed only as tombstones ("hmac:…", reason `erased`) and can be neither removed
nor re-added."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime
from tempfile import SpooledTemporaryFile
from typing import IO, Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from herald.api.deps import ContainerDep, CursorDep, Idempotency, IdempotencyDep, LimitDep, PrincipalDep
from herald.api.schemas import PROBLEMS, Page, page_of
from herald.api.schemas import Body as RequestBody
from herald.bootstrap import Container
from herald.domain.auth import Principal
from herald.domain.contacts import InvalidValue
from herald.domain.errors import FieldProblem, Forbidden, InvalidInput
from herald.services import suppressions

router = APIRouter(prefix="/suppressions", tags=["suppressions"], responses={**PROBLEMS, 403: {
    "description": "A store-scoped API key: the suppression list belongs to the workspace"}})
CHUNK = 1 << 16
MAX_ITEMS = 1000
SPOOL_BYTES = 1 << 20


def workspace_caller(who: PrincipalDep) -> Principal:
    """The caller, if its key is scoped to the whole workspace (else 403)."""
    if who.store_id is not None:
        raise Forbidden("this belongs to the workspace, not to one store: use a workspace API key")
    return who


WorkspaceCallerDep = Annotated[Principal, Depends(workspace_caller)]


class SuppressionOut(BaseModel):
    id: int
    channel: str
    address: str = Field(description="normalised (email lower-cased, phone E.164), or `hmac:…` for an erased "
                                     "contact's address")
    reason: str
    source: str
    message_id: str | None
    detail: str | None
    created_at: datetime


class SuppressionIn(RequestBody):
    channel: str = Field(default="email", max_length=16, description="email, sms or whatsapp")
    address: str = Field(min_length=1, max_length=320, examples=["ana.souza@example.com"])
    reason: str = Field(default="manual", max_length=24,
                        description="unsubscribed, hard_bounce, complaint, invalid or manual")
    detail: str | None = Field(default=None, max_length=suppressions.MAX_DETAIL)


class AddedOut(BaseModel):
    added: int
    unchanged: int = Field(description="already listed (the first reason stays), or an erased contact's address")


class RowErrorOut(BaseModel):
    line: int
    reason: str


class ImportOut(AddedOut):
    failed: int
    errors: list[RowErrorOut] = Field(description=f"the first {suppressions.MAX_ERRORS} failed rows")


@router.get("", response_model=Page[SuppressionOut], summary="List the suppression list (oldest first)",
            description="JSON pages by default; `?format=csv` streams the whole list (filters apply) as CSV "
                        "with the columns channel,address,reason,source,created_at,detail, which "
                        "`POST /suppressions/import` reads back unchanged.",
            responses={200: {"content": {"text/csv": {}}}})
def list_suppressions(
    who: WorkspaceCallerDep, c: ContainerDep, limit: LimitDep, cursor: CursorDep = None,
    channel: Annotated[str | None, Query(max_length=16, description="email, sms or whatsapp")] = None,
    reason: Annotated[str | None, Query(max_length=24)] = None,
    address: Annotated[str | None, Query(max_length=320, description="this address's entry, if listed "
                                                                      "(also found when erased)")] = None,
    format: Annotated[Literal["json", "csv"], Query(description="json (pages) or csv (everything)")] = "json",
) -> Any:
    if reason is not None and reason not in suppressions.REASONS:
        raise InvalidInput.on("reason", f"must be one of {', '.join(suppressions.REASONS)}")
    if format == "csv":
        return StreamingResponse(_csv(c, who.workspace_id, channel, reason), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": 'attachment; filename="suppressions.csv"'})
    with c.engine.begin() as conn:
        page = suppressions.list_page(conn, who.workspace_id, limit=limit, cursor=cursor, channel=channel,
                                      reason=reason, address=address, tombstone_key=c.tombstone_key)
    return page_of(SuppressionOut, page)


def _csv(c: Container, workspace_id: str, channel: str | None, reason: str | None) -> Iterator[str]:
    # The engine, not one connection: each page is read in its own short transaction.
    return suppressions.csv_lines(suppressions.export_rows(c.engine, workspace_id, channel, reason=reason))


@router.post("", status_code=201, response_model=AddedOut, summary="Add addresses to the suppression list",
             description=f"A JSON list of at most {MAX_ITEMS} entries. All are checked first: one invalid "
                         "entry refuses the request (422, naming it). Idempotent: a listed address keeps its "
                         "first reason (201 either way; the counts say what changed). Accepts an "
                         "`Idempotency-Key` header.")
def add_suppressions(
    body: Annotated[list[SuppressionIn], Body(min_length=1, max_length=MAX_ITEMS)],
    who: WorkspaceCallerDep, c: ContainerDep, idem: IdempotencyDep,
) -> Response:
    entries = _entries(body)
    with c.engine.begin() as conn:
        added, unchanged = suppressions.add_many(conn, who.workspace_id, entries, source="api",
                                                 now=c.clock.now(), tombstone_key=c.tombstone_key)
        return idem.respond(conn, 201, AddedOut(added=added, unchanged=unchanged))


def _entries(body: list[SuppressionIn]) -> list[suppressions.Entry]:
    entries: list[suppressions.Entry] = []
    problems: list[FieldProblem] = []
    for i, item in enumerate(body):
        try:
            entries.append(suppressions.clean_entry(item.channel, item.address, item.reason, item.detail))
        except InvalidValue as exc:
            problems.append(FieldProblem(f"{i}", str(exc)))
    if problems:
        raise InvalidInput("; ".join(f"entry {p.field}: {p.reason}" for p in problems[:20]), fields=problems)
    return entries


IMPORT_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}}}},
    "text/csv": {"schema": {"type": "string"}},
}}}


@router.post("/import", status_code=201, response_model=ImportOut, openapi_extra=IMPORT_BODY,
             summary="Import a CSV into the suppression list",
             description="A UTF-8 CSV (multipart `file` part, or the raw CSV as a text/csv body) with a header: "
                         "`address` (required), `channel` (email, sms or whatsapp; default email), `reason` "
                         "(default the `reason` parameter) and `detail`. Emails are syntax-checked and "
                         "lower-cased, phones must be E.164 (+country code). Bad rows are reported by line "
                         "and skipped; the good rows are added (in one transaction). Importing the same file "
                         "again changes nothing. An `Idempotency-Key` is honoured, but its fingerprint needs "
                         "the whole body in memory: leave it out for large files (re-importing is harmless).")
async def import_suppressions(
    request: Request, who: WorkspaceCallerDep, c: ContainerDep, idem: IdempotencyDep,
    reason: Annotated[str, Query(max_length=24, description="the reason of rows without one")] = "manual",
) -> Response:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=5) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InvalidInput.on("file", "send the CSV as a multipart `file` part (or as a text/csv body)")
            return await run_in_threadpool(_import, c, who, idem, upload.file, reason)
    with SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        async for chunk in request.stream():
            spool.write(chunk)
        spool.seek(0)
        return await run_in_threadpool(_import, c, who, idem, spool, reason)


def _import(c: Container, who: Principal, idem: Idempotency, raw: IO[bytes], reason: str) -> Response:
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    try:
        with c.engine.begin() as conn:
            report = suppressions.import_csv(conn, who.workspace_id, text, default_reason=reason, source="import",
                                             now=c.clock.now(), tombstone_key=c.tombstone_key)
            return idem.respond(conn, 201, ImportOut(
                added=report.added, unchanged=report.unchanged, failed=report.failed,
                errors=[RowErrorOut(line=e.line, reason=e.reason) for e in report.errors]))
    finally:
        text.detach()  # the caller closes the upload


@router.delete("/{channel}/{address:path}", status_code=204, summary="Remove an address from the suppression list",
               description="404 if it is not listed; 409 for an erased contact's address, which stays suppressed.")
def remove_suppression(channel: str, address: str, who: WorkspaceCallerDep, c: ContainerDep) -> Response:
    with c.engine.begin() as conn:
        suppressions.unsuppress(conn, who.workspace_id, channel, address, tombstone_key=c.tombstone_key)
    return Response(status_code=204)
