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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel

from herald.api.schemas import PROBLEMS, Problem
from herald.bootstrap import Container
from herald.domain.errors import FieldProblem, HeraldError
from herald.services import segment

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


class Unavailable(HeraldError):
    status = 503
    title = "Service unavailable"
    slug = "unavailable"
    headers = {"Retry-After": "1"}


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
    app.include_router(router)
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
    received_at = request.app.state.container.clock.now()
    header = request.headers.get("authorization")
    store = await _store_from_header(request, header) if header and header[:6].lower() == "basic " else None
    raw = await _body(request, MAX_BATCH_BYTES if kind is None else MAX_SINGLE_BYTES)
    try:
        data = segment.load_body(raw)
    except segment.BodyProblem as exc:
        raise Malformed(str(exc)) from None
    if store is None:
        store = await _store_from_body(request, data)
    writer: segment.EventWriter = request.app.state.segment_writer
    if kind is not None:
        try:
            row = segment.parse_single(data, kind, store, received_at)
        except segment.MessageProblem as exc:
            raise Malformed(str(exc), fields=[FieldProblem(exc.field, exc.reason)]) from None
        await _write(writer, [row], received_at)
        return Response(_OK, media_type="application/json")
    try:
        parsed = segment.parse_batch(data, store, received_at)
    except segment.BodyProblem as exc:
        raise Malformed(str(exc)) from None
    await _write(writer, parsed.rows, received_at)
    if not parsed.rejected:
        return Response(_OK, media_type="application/json")
    rejected = [{"index": i, "reason": str(p)} for i, p in parsed.rejected]
    return Response(orjson.dumps({"success": True, "rejected": rejected}), media_type="application/json")


async def _write(writer: segment.EventWriter, rows: list[segment.Row], received_at: datetime) -> None:
    try:
        await writer.write(rows, received_at)
    except segment.WriterUnavailable as exc:
        raise Unavailable(str(exc)) from None


async def _body(request: Request, limit: int) -> bytes:
    raw = await request.body()
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
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


# ---- auth ---------------------------------------------------------------------------------
async def _store_from_header(request: Request, header: str) -> segment.StoreRef:
    cache: segment.WriteKeyCache = request.app.state.segment_keys
    known, store = cache.get(header)
    if not known:
        try:
            user = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("the Authorization header is not valid HTTP Basic (base64 of 'writeKey:')") from None
        store = await _lookup(request, user)
        cache.put(header, store)
    if store is None:
        raise Unauthorized("unknown write key; send the store's write key as the Basic auth user name")
    return store


async def _store_from_body(request: Request, data: dict[str, Any]) -> segment.StoreRef:
    key = data.get("writeKey")
    if not isinstance(key, str) or not key:
        raise Unauthorized("send the store's write key as the HTTP Basic user name (or a `writeKey` body field)")
    cache: segment.WriteKeyCache = request.app.state.segment_keys
    known, store = cache.get("k:" + key)
    if not known:
        store = await _lookup(request, key)
        cache.put("k:" + key, store)
    if store is None:
        raise Unauthorized("unknown write key")
    return store


async def _lookup(request: Request, key: str) -> segment.StoreRef | None:
    if not key or len(key) > 200:
        return None
    container: Container = request.app.state.container

    def find() -> segment.StoreRef | None:
        with container.engine.connect() as conn:
            return segment.find_store_by_write_key(conn, key)

    return await asyncio.to_thread(find)


# ---- benchmark reference --------------------------------------------------------------------
bench_router = APIRouter(include_in_schema=False)


@bench_router.post("/bench/bare")
async def bench_bare(request: Request) -> Response:
    """Mounted only with HERALD_BENCH_BARE=1: reads the body and answers, touching nothing —
    the reference bench/ingest.py compares /v1/track with."""
    await request.body()
    return Response(_OK, media_type="application/json")
