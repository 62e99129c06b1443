"""CSV imports over the API: upload a file (multipart `file` field, or the raw CSV as the body
with `Content-Type: text/csv`), get 201 and the import; the `intake.import` job runs it through
the work engine (services/imports.py, the same code as `herald import`). Poll
GET /imports/{id}; GET /imports/{id}/errors is the per-row error report as CSV.

The upload is streamed to a file under the data directory and deleted when the import completes.
An Idempotency-Key is honoured like on every create (a replay answers the same import), but the
key's request fingerprint needs the whole body in memory: leave it out for large files
(uploading the same file again makes a new import that changes nothing anyway)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.engine import make_url
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from herald.api.deps import ContainerDep, CursorDep, Idempotency, IdempotencyDep, LimitDep, PrincipalDep
from herald.api.schemas import PROBLEMS, ImportOut, Page, page_of
from herald.bootstrap import Container
from herald.db import jobs as jobs_db
from herald.domain.auth import Principal
from herald.domain.errors import InvalidInput
from herald.domain.ids import new_id
from herald.services import imports

router = APIRouter(prefix="/imports", tags=["imports"], responses=PROBLEMS)
CHUNK = 1 << 16
MAX_FORM_FIELDS = 20

_FIELDS_DOC = {
    "kind": {"type": "string", "enum": ["contacts", "orders"]},
    "store_id": {"type": "string", "description": "the store the rows belong to (default: the key's store)"},
    "mapping": {"type": "string", "description": "JSON object {column: field} overriding the detected mapping, "
                                                 "e.g. {\"E-mail\": \"email\", \"Notes\": \"attributes.notes\"}"},
    "default_country": {"type": "string", "description": "ISO 3166-1 alpha-2 country of national phone numbers"},
    "encoding": {"type": "string", "description": "auto (default: BOM, else UTF-8, else cp1252) or a codec name"},
}
UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file", "kind"], "properties": {
        "file": {"type": "string", "format": "binary"}, **_FIELDS_DOC}}},
    "text/csv": {"schema": {"type": "string"}},
}}}


def data_dir(c: Container) -> Path:
    """Where uploads wait for their import: HERALD_DATA_DIR if the settings have it, else the
    SQLite database's directory, else the directory of the secret key file (var/)."""
    configured = getattr(c.settings, "data_dir", None)
    if configured:
        return Path(configured)
    url = make_url(c.settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).resolve().parent
    return Path(c.settings.secret_key_file).resolve().parent


@router.post("", status_code=201, response_model=ImportOut, openapi_extra=UPLOAD_BODY,
             summary="Upload a CSV of contacts or orders; it is imported in the background (poll the import)")
async def create_import(
    request: Request, who: PrincipalDep, c: ContainerDep, idem: IdempotencyDep,
    kind: Annotated[str | None, Query(description="contacts or orders (text/csv bodies)")] = None,
    store_id: Annotated[str | None, Query(max_length=64, description="text/csv bodies; default: the key's store")]
    = None,
    mapping: Annotated[str | None, Query(max_length=10_000, description="JSON object {column: field}")] = None,
    default_country: Annotated[str | None, Query(max_length=8)] = None,
    encoding: Annotated[str | None, Query(max_length=32)] = None,
    filename: Annotated[str | None, Query(max_length=500, description="a name to show for a text/csv body")] = None,
) -> Response:
    params: dict[str, str | None] = {"kind": kind, "store_id": store_id, "mapping": mapping,
                                     "default_country": default_country, "encoding": encoding}
    import_id = new_id("imp")
    folder = data_dir(c) / "imports"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{import_id}.csv"
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            name = await _save_form(request, path, params)
        else:
            await _save_body(request, path)
            name = filename or "upload.csv"
        response = await run_in_threadpool(_create, c, who, idem, import_id, path, name, params)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    c.notifier.notify()
    return response


async def _save_body(request: Request, path: Path) -> None:
    with path.open("wb") as fh:
        async for chunk in request.stream():
            fh.write(chunk)


async def _save_form(request: Request, path: Path, params: dict[str, str | None]) -> str:
    """Multipart: the `file` part goes to `path` (Starlette spools it to disk past 1 MB);
    the other parts fill in the parameters not given in the query."""
    async with request.form(max_files=1, max_fields=MAX_FORM_FIELDS) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInput.on("file", "send the CSV as a multipart `file` part (or as a text/csv body)")
        for key in params:
            value = form.get(key)
            if isinstance(value, str) and params[key] is None:
                if "\x00" in value or len(value) > 10_000:
                    raise InvalidInput.on(key, "must be at most 10,000 characters, with no NUL (\\u0000) characters")
                params[key] = value
        with path.open("wb") as fh:
            while chunk := await upload.read(CHUNK):
                fh.write(chunk)
        return upload.filename or "upload.csv"


def _create(c: Container, who: Principal, idem: Idempotency, import_id: str, path: Path, name: str,
            params: dict[str, str | None]) -> Response:
    kind = params["kind"]
    if kind not in ("contacts", "orders"):
        raise InvalidInput.on("kind", "must be contacts or orders")
    store_id = params["store_id"] or who.store_id
    if not store_id:
        raise InvalidInput.on("store_id", "name the store the rows belong to (a workspace key must)")
    facts = imports.inspect_file(path, params["encoding"] or "auto")
    now = c.clock.now()
    with c.engine.begin() as conn:
        imports.create(conn, who, kind=kind, store_id=store_id, path=path, source_name=name, facts=facts,
                       mapping=_mapping(params["mapping"]), default_country=params["default_country"], now=now,
                       import_id=import_id, owned_file=True)
        jobs_db.enqueue(conn, imports.JOB_KIND, {"import_id": import_id}, now=now, workspace_id=who.workspace_id,
                        max_attempts=imports.JOB_ATTEMPTS, unique_key=f"import:{import_id}")
        row = imports.get_import(conn, who, import_id)
        return idem.respond(conn, 201, ImportOut.model_validate(row), {"Location": f"/api/v1/imports/{import_id}"})


def _mapping(raw: str | None) -> dict[str, str] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidInput.on("mapping", "must be a JSON object {column: field}") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidInput.on("mapping", "must be a JSON object of strings {column: field}")
    return value


@router.get("", response_model=Page[ImportOut], summary="List imports, oldest first")
def list_imports(who: PrincipalDep, c: ContainerDep, limit: LimitDep, cursor: CursorDep = None) -> Page[ImportOut]:
    with c.engine.begin() as conn:
        page = imports.list_imports(conn, who, limit=limit, cursor=cursor)
    return page_of(ImportOut, page)


@router.get("/{import_id}", response_model=ImportOut, summary="An import: state, progress and counters")
def get_import(import_id: str, who: PrincipalDep, c: ContainerDep) -> ImportOut:
    with c.engine.begin() as conn:
        return ImportOut.model_validate(imports.get_import(conn, who, import_id))


@router.get("/{import_id}/errors", response_class=StreamingResponse,
            responses={200: {"description": "CSV: line, column, value, reason (one row per problem, in line order)",
                             "content": {"text/csv": {"schema": {"type": "string"}}}}},
            summary="The import's per-row error report as CSV")
def get_errors(import_id: str, who: PrincipalDep, c: ContainerDep) -> StreamingResponse:
    with c.engine.begin() as conn:
        imports.get_import(conn, who, import_id)
    return StreamingResponse(imports.error_csv(c.engine, import_id), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{import_id}-errors.csv"'})
