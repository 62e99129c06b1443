"""Segment-spec ingestion: `/v1/batch`, `/v1/identify`, `/v1/track`, `/v1/page`, `/v1/screen`,
`/v1/group`, `/v1/alias`, so analytics clients (segment-analytics-python, rudder-sdk-python,
analytics.js server-side, ...) can send events to Herald unchanged by pointing their host here.

Auth as Segment's HTTP Tracking API: HTTP Basic with the store's write key as the user name
(password empty, ignored), or a `writeKey` field in the JSON body. Bodies may be gzip-encoded
(rudder-sdk-python always gzips). Write keys are looked up by SHA-256 and remembered for
WRITE_KEY_TTL seconds per process: a rotated key stops working within that time.

Answers (Segment's clients resend a whole batch on any 4xx/5xx, so a batch with some invalid
messages is still a 200 — the valid ones are committed — and the refused ones are listed):
- 200 {"success": true} once every row is committed (G1); `rejected: [{index, reason}]` when a
  batch message was refused; a replayed messageId is accepted and stores nothing new;
- 400 problem (single call: `errors` names the field), 401 bad/missing key, 413 too large
  (also for a gzip body that inflates past the limit), 415 unknown Content-Encoding,
- 503 when the database did not commit: nothing was stored, the client retries.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import zlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import orjson
import structlog
from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel

from herald.api import problems
from herald.api.schemas import PROBLEMS, Problem
from herald.bootstrap import Container
from herald.domain.errors import FieldProblem, HeraldError, Unavailable
from herald.services import segment

log = structlog.get_logger(__name__)

WRITE_KEY_TTL = 5.0
MAX_SINGLE_BYTES = segment.MAX_MESSAGE_BYTES
MAX_BATCH_BYTES = segment.MAX_BATCH_BYTES
BENCH_BARE_ENV = "HERALD_BENCH_BARE"

_OK = b'{"success":true}'


class Unauthorized(HeraldError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"
    headers = {"WWW-Authenticate": 'Basic realm="herald"'}


class Malformed(HeraldError):
    status = 400
    title = "Bad request"
    slug = "malformed-event"


class TooLarge(HeraldError):
    status = 413
    title = "Payload too large"
    slug = "too-large"


class UnsupportedEncoding(HeraldError):
    status = 415
    title = "Unsupported media type"
    slug = "unsupported-encoding"


class Rejected(BaseModel):
    index: int
    reason: str


class Accepted(BaseModel):
    success: bool
    rejected: list[Rejected] | None = None


_MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A Segment-spec message: userId or anonymousId (alias: previousId + userId), "
                   "messageId, timestamp, sentAt, context, integrations, traits/properties; "
                   "track needs event, group needs groupId.",
    "additionalProperties": True,
    "properties": {"writeKey": {"type": "string", "description": "alternative to HTTP Basic auth"}},
}
_BATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["batch"],
    "properties": {"batch": {"type": "array", "items": {"type": "object"}, "maxItems": segment.MAX_BATCH_MESSAGES},
                   "sentAt": {"type": "string"}, "context": {"type": "object"},
                   "writeKey": {"type": "string"}},
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    **PROBLEMS,
    415: {"model": Problem, "description": "Unknown Content-Encoding", "content": {"application/problem+json": {}}},
    503: {"model": Problem, "description": "Not stored (database unavailable): retry",
          "content": {"application/problem+json": {}}},
}

router = APIRouter(prefix="/v1", tags=["segment-spec ingestion"], responses=_RESPONSES)


def install(app: FastAPI, container: Container) -> segment.EventWriter:
    """Mount the routes at the root and run the group-commit writer with the app's lifespan
    (started before the app's own startup, drained after its shutdown)."""
    writer = segment.EventWriter(container.engine, now=container.clock.now, after_commit=container.notifier.notify)
    app.state.segment_writer = writer
    app.state.segment_keys = segment.WriteKeyCache(ttl=WRITE_KEY_TTL)
    app.state.segment_ingestion = Ingestion(container, writer, app.state.segment_keys)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        await writer.start()
        try:
            async with inner(a) as state:
                yield state
        finally:
            await writer.stop()

    app.router.lifespan_context = lifespan
    app.include_router(router)  # documented in OpenAPI; requests are answered by the front door
    app.add_middleware(FrontDoor, ingestion=app.state.segment_ingestion, max_raw_bytes=MAX_BATCH_BYTES)
    if os.environ.get(BENCH_BARE_ENV) == "1":
        app.include_router(bench_router)
    return writer


# ---- routes -------------------------------------------------------------------------------
def _single(kind: str) -> Any:
    async def endpoint(request: Request) -> Response:
        return await _ingest(request, kind)
    endpoint.__name__ = f"segment_{kind}"
    return endpoint


for _kind in ("identify", "track", "page", "screen", "group", "alias"):
    router.add_api_route(
        f"/{_kind}", _single(_kind), methods=["POST"], response_model=Accepted,
        summary=f"Segment-spec {_kind} call",
        openapi_extra={"requestBody": {"required": True,
                                       "content": {"application/json": {"schema": _MESSAGE_SCHEMA}}}})


@router.post("/batch", response_model=Accepted, summary="Segment-spec batch of calls",
             openapi_extra={"requestBody": {"required": True,
                                            "content": {"application/json": {"schema": _BATCH_SCHEMA}}}})
async def segment_batch(request: Request) -> Response:
    return await _ingest(request, None)


async def _ingest(request: Request, kind: str | None) -> Response:
    """The FastAPI route (documentation, and the path when the front door is not installed)."""
    body = await Ingestion.of(request.app).call(kind, request.headers, await request.body())
    return Response(body, media_type="application/json")


class Ingestion:
    """One Segment-spec call: authenticate, decode, parse, commit through the group writer.
    Returns the 200 body or raises a HeraldError (rendered as a problem by the caller)."""

    def __init__(self, container: Container, writer: segment.EventWriter, keys: segment.WriteKeyCache) -> None:
        self.container, self.writer, self.keys = container, writer, keys

    @staticmethod
    def of(app: Any) -> Ingestion:
        ingestion: Ingestion = app.state.segment_ingestion
        return ingestion

    async def call(self, kind: str | None, headers: Mapping[str, str], raw: bytes) -> bytes:
        received_at = self.container.clock.now()
        header = headers.get("authorization")
        store = await self._store_from_header(header) if header and header[:6].lower() == "basic " else None
        data_bytes = _decode(raw, headers.get("content-encoding", "identity"),
                             MAX_BATCH_BYTES if kind is None else MAX_SINGLE_BYTES)
        try:
            data = segment.load_body(data_bytes)
        except segment.BodyProblem as exc:
            raise Malformed(str(exc)) from None
        if store is None:
            store = await self._store_from_body(data)
        if kind is not None:
            try:
                row = segment.parse_single(data, kind, store, received_at)
            except segment.MessageProblem as exc:
                raise Malformed(str(exc), fields=[FieldProblem(exc.field, exc.reason)]) from None
            await self._write([row], received_at)
            return _OK
        try:
            parsed = segment.parse_batch(data, store, received_at)
        except segment.BodyProblem as exc:
            raise Malformed(str(exc)) from None
        await self._write(parsed.rows, received_at)
        if not parsed.rejected:
            return _OK
        return orjson.dumps({"success": True, "rejected": [{"index": i, "reason": str(p)} for i, p in parsed.rejected]})

    async def _write(self, rows: list[segment.Row], received_at: datetime) -> None:
        try:
            await self.writer.write(rows, received_at)
        except segment.WriterUnavailable as exc:
            raise Unavailable(str(exc)) from None

    async def _store_from_header(self, header: str) -> segment.StoreRef:
        known, store = self.keys.get(header)
        if not known:
            try:
                user = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")[0]
            except (binascii.Error, UnicodeDecodeError):
                raise Unauthorized("the Authorization header is not valid HTTP Basic (base64 of 'writeKey:')") from None
            store = await self._lookup(user)
            self.keys.put(header, store)
        if store is None:
            raise Unauthorized("unknown write key; send the store's write key as the Basic auth user name")
        return store

    async def _store_from_body(self, data: dict[str, Any]) -> segment.StoreRef:
        key = data.get("writeKey")
        if not isinstance(key, str) or not key:
            raise Unauthorized("send the store's write key as the HTTP Basic user name (or a `writeKey` body field)")
        known, store = self.keys.get("k:" + key)
        if not known:
            store = await self._lookup(key)
            self.keys.put("k:" + key, store)
        if store is None:
            raise Unauthorized("unknown write key")
        return store

    async def _lookup(self, key: str) -> segment.StoreRef | None:
        if not key or len(key) > 200:
            return None

        def find() -> segment.StoreRef | None:
            with self.container.engine.connect() as conn:
                return segment.find_store_by_write_key(conn, key)

        return await asyncio.to_thread(find)


def _decode(raw: bytes, encoding: str, limit: int) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "gzip":
        return _gunzip(raw, limit)
    if encoding not in ("identity", ""):
        raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not supported; send gzip or nothing")
    if len(raw) > limit:
        raise TooLarge(f"the body is larger than {limit} bytes; send smaller batches")
    return raw


def _gunzip(raw: bytes, limit: int) -> bytes:
    """Inflate at most limit+1 bytes: a gzip bomb costs us no more than the limit."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise Malformed(f"the body is not valid gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise TooLarge(f"the body inflates past {limit} bytes; send smaller batches")
    if not inflater.eof:
        raise Malformed("the gzip body is truncated")
    return out


# ---- the front door -----------------------------------------------------------------------
PATHS = {f"/v1/{k}": k for k in ("identify", "track", "page", "screen", "group", "alias")} | {"/v1/batch": None}
_JSON_HEADERS = [(b"content-type", b"application/json")]
_OK_LENGTH = (b"content-length", str(len(_OK)).encode())
# The request headers Ingestion reads (ASGI header names are lower-case bytes; lower() anyway).
_WANTED = {b"authorization": "authorization", b"content-encoding": "content-encoding"}


class FrontDoor:
    """ASGI wrapper that answers `POST /v1/<call>` itself, before FastAPI's routing, dependency
    injection and middleware stack (which cost several times the ingestion itself per request).
    Same code (Ingestion), same answers and problems as the documented FastAPI routes; every
    other request goes to the app unchanged."""

    def __init__(self, app: Any, ingestion: Ingestion, max_raw_bytes: int) -> None:
        self.app, self.ingestion, self.max_raw_bytes = app, ingestion, max_raw_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in PATHS:
            await self.app(scope, receive, send)
            return
        kind = PATHS[scope["path"]]
        headers = {_WANTED[k.lower()]: v.decode("latin-1") for k, v in scope["headers"] if k.lower() in _WANTED}
        try:
            raw = await self._body(receive)
            body = await self.ingestion.call(kind, headers, raw)
        except HeraldError as exc:
            await problems.respond(problems.herald_problem(exc, scope["path"]), headers=exc.headers or None)(
                scope, receive, send)
            return
        except Exception:  # the same answer FastAPI's handler gives, and the same log line
            log.exception("unexpected error in segment ingestion", path=scope["path"])
            await problems.respond(problems.problem(500, "an unexpected error; it has been logged"))(
                scope, receive, send)
            return
        length = _OK_LENGTH if body is _OK else (b"content-length", str(len(body)).encode())
        await send({"type": "http.response.start", "status": 200, "headers": [*_JSON_HEADERS, length]})
        await send({"type": "http.response.body", "body": body})

    async def _body(self, receive: Any) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Malformed("the client went away before the body was complete")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_raw_bytes:
                raise TooLarge(f"the body is larger than {self.max_raw_bytes} bytes; send smaller batches")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


# ---- benchmark reference --------------------------------------------------------------------
bench_router = APIRouter(include_in_schema=False)


@bench_router.post("/bench/bare")
async def bench_bare(request: Request) -> Response:
    """Mounted only with HERALD_BENCH_BARE=1: reads the body and answers, touching nothing —
    the reference bench/ingest.py compares /v1/track with."""
    await request.body()
    return Response(_OK, media_type="application/json")
